//! Who task processes run as (`local-agent node --run-as`).
//!
//! - `dynamic`: each attempt gets a uid of its own, with the gid of the
//!   same number, from a range (systemd's `DynamicUser=`; its documented
//!   range, 61184-65519, is the default), taken when the task starts and
//!   given back when its supervisor has exited. No two live tasks on a node
//!   share one, so tasks cannot signal, trace or read each other.
//! - a user name or a numeric uid: every task runs as that user. Tasks
//!   then share one uid and are not isolated from each other.
//! - `self`: as the node agent's own user.
//!
//! Root is refused unless the operator asks for it (`--allow-root-tasks`).
//! The choice is resolved once, at startup ([`RunAs::resolve`]). The pool
//! of dynamic uids ([`UidPool`]) is bookkeeping; as several node agents
//! may share a machine (tests, hollow and real side by side), a uid is
//! also claimed machine-wide ([`UidClaims`]) before it is used.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

/// A uid and its primary gid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity {
    pub uid: u32,
    pub gid: u32,
}

impl Identity {
    /// This process's (effective) uid and gid.
    pub fn current() -> Self {
        Identity {
            uid: nix::unistd::geteuid().as_raw(),
            gid: nix::unistd::getegid().as_raw(),
        }
    }
}

/// An inclusive range of uids, `FIRST-LAST`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UidRange {
    pub first: u32,
    pub last: u32,
}

/// systemd's range for dynamic users (systemd.exec(5), `DynamicUser=`):
/// distributions keep it free of static users.
pub const DEFAULT_UID_RANGE: UidRange = UidRange {
    first: 61184,
    last: 65519,
};

impl FromStr for UidRange {
    type Err = RunAsError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |why: &str| RunAsError::BadRange(format!("{s:?}: {why}"));
        let (first, last) = s.split_once('-').ok_or_else(|| bad("not FIRST-LAST"))?;
        let first: u32 = first
            .trim()
            .parse()
            .map_err(|_| bad("FIRST is not a uid"))?;
        let last: u32 = last.trim().parse().map_err(|_| bad("LAST is not a uid"))?;
        if first == 0 {
            return Err(bad("uid 0 is root"));
        }
        if first > last {
            return Err(bad("FIRST is above LAST"));
        }
        Ok(UidRange { first, last })
    }
}

impl fmt::Display for UidRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

/// Who tasks run as, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunAs {
    /// A uid of its own per task attempt, from the range.
    Dynamic(UidRange),
    /// One user for every task (named as given).
    User { name: String, identity: Identity },
    /// The node agent's own user: no switch.
    Myself(Identity),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RunAsError {
    #[error("--uid-range {0}")]
    BadRange(String),
    #[error("--run-as {0:?}: no such user")]
    NoSuchUser(String),
    #[error(
        "--run-as {0}: tasks would run as root (uid 0), with every right on this machine; \
         pass --allow-root-tasks if that is really wanted"
    )]
    Root(String),
    #[error("--run-as {0}: only a node agent running as root can run tasks as another user (this one runs as uid {1})")]
    NotRoot(String, u32),
}

impl RunAs {
    /// Resolves `--run-as` (`None`: the default, `dynamic` as root, `self`
    /// otherwise) for a node agent running as `agent`. `lookup` finds a
    /// user by name (`/etc/passwd` and NSS in production).
    pub fn resolve(
        spec: Option<&str>,
        range: UidRange,
        allow_root: bool,
        agent: Identity,
        lookup: impl Fn(&str) -> Option<Identity>,
    ) -> Result<RunAs, RunAsError> {
        let spec = spec.unwrap_or(if agent.uid == 0 { "dynamic" } else { "self" });
        let run_as = match spec {
            "dynamic" => RunAs::Dynamic(range),
            "self" => RunAs::Myself(agent),
            name => {
                let identity = match name.parse::<u32>() {
                    // A uid with no passwd entry is fine: its gid is the
                    // same number, as for dynamic users.
                    Ok(uid) => lookup(name)
                        .filter(|i| i.uid == uid)
                        .unwrap_or(Identity { uid, gid: uid }),
                    Err(_) => lookup(name).ok_or_else(|| RunAsError::NoSuchUser(name.into()))?,
                };
                RunAs::User {
                    name: name.to_string(),
                    identity,
                }
            }
        };
        let root = match &run_as {
            RunAs::Dynamic(_) => false,
            RunAs::User { identity, .. } | RunAs::Myself(identity) => identity.uid == 0,
        };
        if root && !allow_root {
            return Err(RunAsError::Root(spec.to_string()));
        }
        let switches = match &run_as {
            RunAs::Dynamic(_) => true,
            RunAs::User { identity, .. } => *identity != agent,
            RunAs::Myself(_) => false,
        };
        if switches && agent.uid != 0 {
            return Err(RunAsError::NotRoot(spec.to_string(), agent.uid));
        }
        Ok(run_as)
    }

    /// What the startup line says.
    pub fn describe(&self) -> String {
        match self {
            RunAs::Dynamic(range) => {
                format!("tasks run as dynamic users: a uid of its own per task, from {range}")
            }
            RunAs::User { name, identity } => format!(
                "tasks run as user {name} (uid {}, gid {}): they share it and are not isolated from each other",
                identity.uid, identity.gid
            ),
            RunAs::Myself(i) if i.uid == 0 => {
                "tasks run as root, the node agent's own user: they are not isolated from each other or from the machine".to_string()
            }
            RunAs::Myself(i) => format!(
                "tasks run as the node agent's own user (uid {}): they are not isolated from each other",
                i.uid
            ),
        }
    }
}

/// The dynamic uids in use on a node. A uid is taken when a task starts
/// and given back once its supervisor has exited (it has killed what was
/// left of the task by then), so no two live tasks share one.
#[derive(Debug)]
pub struct UidPool {
    range: UidRange,
    used: BTreeSet<u32>,
    /// Where the next search starts: uids go round the range, so a uid
    /// just given back is the last to be taken again.
    next: u32,
}

impl UidPool {
    pub fn new(range: UidRange) -> Self {
        UidPool {
            range,
            used: BTreeSet::new(),
            next: range.first,
        }
    }

    /// A free uid that `claim` accepts (it is not in use elsewhere on the
    /// machine), now in use; `None` when no uid of the range is free.
    pub fn take(&mut self, mut claim: impl FnMut(u32) -> bool) -> Option<u32> {
        let size = u64::from(self.range.last - self.range.first) + 1;
        let mut uid = self.next;
        for _ in 0..size {
            let following = if uid == self.range.last {
                self.range.first
            } else {
                uid + 1
            };
            if !self.used.contains(&uid) && claim(uid) {
                self.used.insert(uid);
                self.next = following;
                return Some(uid);
            }
            uid = following;
        }
        None
    }

    /// Marks `uid` in use (a task found running after a restart); false if
    /// it is outside the range or already in use.
    pub fn reserve(&mut self, uid: u32) -> bool {
        (self.range.first..=self.range.last).contains(&uid) && self.used.insert(uid)
    }

    pub fn give_back(&mut self, uid: u32) {
        self.used.remove(&uid);
    }

    pub fn in_use(&self) -> usize {
        self.used.len()
    }
}

/// Machine-wide claims on dynamic uids: a file per uid in a directory
/// only root may write, made exclusively, holding the pid of whoever holds
/// the uid (the node agent, then the task's supervisor). A claim whose
/// holder is dead (a node agent or supervisor killed) is stale and taken
/// over.
#[derive(Debug, Clone)]
pub struct UidClaims {
    dir: std::path::PathBuf,
}

impl UidClaims {
    /// `/run/local-agent/uids` (else under the temp dir), root's and 0700.
    pub fn open() -> std::io::Result<Self> {
        let base = if std::path::Path::new("/run").is_dir() {
            std::path::PathBuf::from("/run")
        } else {
            std::env::temp_dir()
        };
        let dir = base.join("local-agent-uids");
        super::dirs::ensure_dir(
            &dir,
            super::dirs::PRIVATE_DIR_MODE,
            Some(Identity::current()),
        )?;
        Ok(UidClaims { dir })
    }

    fn path(&self, uid: u32) -> std::path::PathBuf {
        self.dir.join(uid.to_string())
    }

    /// Claims `uid` for process `holder`; false if a live process holds it.
    pub fn claim(&self, uid: u32, holder: u32) -> bool {
        let create = || {
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(self.path(uid))
                .and_then(|mut f| std::io::Write::write_all(&mut f, holder.to_string().as_bytes()))
        };
        if create().is_ok() {
            return true;
        }
        if self.holder(uid).is_some_and(super::dirs::alive) {
            return false;
        }
        // Stale: its holder is gone. Removing it then creating it again
        // exclusively: of two node agents racing for it, one wins.
        let _ = std::fs::remove_file(self.path(uid));
        create().is_ok()
    }

    /// Hands the claim on `uid` to `holder` (the supervisor once started).
    pub fn hand_to(&self, uid: u32, holder: u32) -> std::io::Result<()> {
        super::dirs::write_atomic(&self.path(uid), holder.to_string().as_bytes(), 0o600)
    }

    /// The pid holding `uid`, if it is claimed.
    pub fn holder(&self, uid: u32) -> Option<u32> {
        std::fs::read_to_string(self.path(uid))
            .ok()
            .and_then(|p| p.trim().parse().ok())
    }

    /// Ends `holder`'s claim on `uid` (not another's, taken over meanwhile).
    pub fn release(&self, uid: u32, holder: u32) {
        if self.holder(uid) == Some(holder) {
            let _ = std::fs::remove_file(self.path(uid));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROOT: Identity = Identity { uid: 0, gid: 0 };
    const ALICE: Identity = Identity {
        uid: 1000,
        gid: 100,
    };

    fn lookup(name: &str) -> Option<Identity> {
        match name {
            "root" | "0" => Some(ROOT),
            "alice" | "1000" => Some(ALICE),
            _ => None,
        }
    }

    fn resolve(spec: Option<&str>, allow_root: bool, agent: Identity) -> Result<RunAs, RunAsError> {
        RunAs::resolve(spec, DEFAULT_UID_RANGE, allow_root, agent, lookup)
    }

    #[test]
    fn the_default_is_dynamic_as_root_and_self_otherwise() {
        assert_eq!(
            resolve(None, false, ROOT),
            Ok(RunAs::Dynamic(DEFAULT_UID_RANGE))
        );
        assert_eq!(resolve(None, false, ALICE), Ok(RunAs::Myself(ALICE)));
    }

    #[test]
    fn root_tasks_need_the_explicit_flag() {
        for spec in ["root", "0", "self"] {
            let err = resolve(Some(spec), false, ROOT).unwrap_err();
            assert_eq!(err, RunAsError::Root(spec.into()));
            assert!(err.to_string().contains("--allow-root-tasks"), "{err}");
            assert!(resolve(Some(spec), true, ROOT).is_ok(), "{spec}");
        }
    }

    #[test]
    fn users_by_name_or_uid() {
        let alice = RunAs::User {
            name: "alice".into(),
            identity: ALICE,
        };
        assert_eq!(resolve(Some("alice"), false, ROOT), Ok(alice));
        // A uid with no passwd entry: its gid is the same number.
        assert!(matches!(
            resolve(Some("4242"), false, ROOT),
            Ok(RunAs::User {
                identity: Identity {
                    uid: 4242,
                    gid: 4242
                },
                ..
            })
        ));
        assert_eq!(
            resolve(Some("bob"), false, ROOT),
            Err(RunAsError::NoSuchUser("bob".into()))
        );
    }

    #[test]
    fn only_root_can_switch_users() {
        assert_eq!(
            resolve(Some("dynamic"), false, ALICE),
            Err(RunAsError::NotRoot("dynamic".into(), 1000))
        );
        assert!(resolve(Some("4242"), false, ALICE).is_err());
        // Naming itself is no switch.
        assert!(resolve(Some("alice"), false, ALICE).is_ok());
        assert_eq!(
            resolve(Some("self"), false, ALICE),
            Ok(RunAs::Myself(ALICE))
        );
    }

    #[test]
    fn uid_ranges_parse_and_refuse_root_and_inverted_ones() {
        assert_eq!("61184-65519".parse(), Ok(DEFAULT_UID_RANGE));
        assert_eq!(
            "5-5".parse::<UidRange>(),
            Ok(UidRange { first: 5, last: 5 })
        );
        for bad in ["0-10", "10-5", "10", "a-b", "-5", "5-"] {
            assert!(bad.parse::<UidRange>().is_err(), "{bad}");
        }
    }

    fn free(_: u32) -> bool {
        true
    }

    #[test]
    fn the_pool_never_hands_out_a_uid_twice_until_it_is_given_back() {
        let mut pool = UidPool::new(UidRange {
            first: 100,
            last: 102,
        });
        assert_eq!(
            (pool.take(free), pool.take(free), pool.take(free)),
            (Some(100), Some(101), Some(102))
        );
        // Full: every uid is in use.
        assert_eq!(pool.take(free), None);
        pool.give_back(101);
        assert_eq!(pool.take(free), Some(101));
        assert_eq!(pool.take(free), None);
        assert_eq!(pool.in_use(), 3);
    }

    #[test]
    fn a_uid_given_back_is_the_last_to_be_taken_again() {
        // 100 is given back at once; 101 and 102 are free and come first.
        let mut pool = UidPool::new(UidRange {
            first: 100,
            last: 102,
        });
        assert_eq!(pool.take(free), Some(100));
        pool.give_back(100);
        assert_eq!(
            (pool.take(free), pool.take(free), pool.take(free)),
            (Some(101), Some(102), Some(100))
        );
    }

    #[test]
    fn uids_found_after_a_restart_are_reserved() {
        let mut pool = UidPool::new(UidRange {
            first: 100,
            last: 101,
        });
        assert!(pool.reserve(100));
        assert!(!pool.reserve(100), "already in use");
        assert!(!pool.reserve(7), "outside the range");
        assert_eq!(pool.take(free), Some(101));
        assert_eq!(pool.take(free), None);
    }

    #[test]
    fn uids_claimed_elsewhere_on_the_machine_are_skipped() {
        let mut pool = UidPool::new(UidRange {
            first: 100,
            last: 103,
        });
        // Another node agent holds 100 and 102.
        let elsewhere = |uid| uid != 100 && uid != 102;
        assert_eq!(pool.take(elsewhere), Some(101));
        assert_eq!(pool.take(elsewhere), Some(103));
        assert_eq!(pool.take(elsewhere), None);
        assert_eq!(pool.in_use(), 2);
    }

    #[test]
    fn a_claim_is_exclusive_while_its_holder_lives_and_stale_after() {
        let claims = UidClaims {
            dir: tempfile::tempdir().unwrap().keep(),
        };
        let me = std::process::id();
        assert!(claims.claim(7, me));
        assert!(!claims.claim(7, me), "held by a live process");
        // Its holder is dead: stale, taken over.
        claims.hand_to(7, super::super::dirs::tests::DEAD).unwrap();
        assert!(claims.claim(7, me));
        claims.release(7, 1);
        assert!(!claims.claim(7, me), "not released: 1 is not its holder");
        claims.release(7, me);
        assert!(claims.claim(7, me));
        let _ = std::fs::remove_dir_all(&claims.dir);
    }
}

//! The policy in force, and changing it without a restart.
//!
//! A replica starts with its `--policy` file (or the defaults). The policy
//! then changes by SIGHUP (the file read again) or by `ApplyPolicy`; each
//! new policy is validated first, and a bad one is refused with the reason
//! while the running one stays. The leader stores each change under
//! `P/policy`, so that a new leader takes over the policy in force rather
//! than its own file's (see [`LivePolicy::takeover`]).
//!
//! Most of the policy is read at each decision (cluster ranking, restarts,
//! quotas' bands, lifetimes), so a change takes effect at the next
//! scheduling pass. A few values are read once when a replica takes over
//! (the lease TTL, the pass size, the compaction interval): they are named
//! in [`LivePolicy::deferred`] until the next term.

use std::fmt;
use std::path::{Path, PathBuf};

use sched_core::error::SpecError;
use sched_core::policy::Policy;
use serde::{Deserialize, Serialize};

use crate::records::now_unix_ms;

/// Where a policy came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The built-in defaults (no `--policy`).
    Default,
    /// A `--policy` file, read at start or on SIGHUP.
    File(PathBuf),
    /// `ApplyPolicy` (`schedctl policy apply`) by a user.
    Applied { user: String },
    /// Read back from the store by a new leader; says where it came from.
    Stored(String),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Default => f.write_str("default"),
            Source::File(p) => write!(f, "file {}", p.display()),
            Source::Applied { user } => write!(f, "applied by {user}"),
            Source::Stored(s) => f.write_str(s),
        }
    }
}

/// What `P/policy` holds: the policy in force and its origin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyRecord {
    pub yaml: String,
    pub source: String,
    pub loaded_unix_ms: i64,
}

/// The policy in force on this replica, and its history.
#[derive(Debug, Clone)]
pub struct LivePolicy {
    policy: Policy,
    source: Source,
    loaded_unix_ms: i64,
    /// Changed on this replica after it started (a SIGHUP): at takeover it
    /// wins over an older stored policy.
    changed: bool,
    reloads: u64,
    last_refused: Option<(i64, String)>,
    /// The policy the current term started with (for [`Self::deferred`]).
    term: Option<Policy>,
}

/// A policy file that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("invalid {path}: {source}")]
    Invalid { path: String, source: SpecError },
}

/// Reads and validates a policy file.
pub fn read_file(path: &Path) -> Result<Policy, ReloadError> {
    let text = std::fs::read_to_string(path).map_err(|source| ReloadError::Read {
        path: path.display().to_string(),
        source,
    })?;
    Policy::from_yaml(&text).map_err(|source| ReloadError::Invalid {
        path: path.display().to_string(),
        source,
    })
}

impl LivePolicy {
    /// The policy a replica starts with.
    pub fn new(policy: Policy, file: Option<PathBuf>) -> Self {
        LivePolicy {
            policy,
            source: file.map_or(Source::Default, Source::File),
            loaded_unix_ms: now_unix_ms(),
            changed: false,
            reloads: 0,
            last_refused: None,
            term: None,
        }
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    pub fn source(&self) -> &Source {
        &self.source
    }

    pub fn loaded_unix_ms(&self) -> i64 {
        self.loaded_unix_ms
    }

    /// Policies put in force since the process started.
    pub fn reloads(&self) -> u64 {
        self.reloads
    }

    /// The last refused change: when, and why.
    pub fn last_refused(&self) -> Option<&(i64, String)> {
        self.last_refused.as_ref()
    }

    /// Puts a validated policy in force.
    pub fn set(&mut self, policy: Policy, source: Source) {
        debug_assert!(policy.validate().is_ok(), "only validated policies go live");
        self.policy = policy;
        self.source = source;
        self.loaded_unix_ms = now_unix_ms();
        self.changed = true;
        self.reloads += 1;
    }

    /// Records a refused change (the running policy stays).
    pub fn refuse(&mut self, why: String) {
        self.last_refused = Some((now_unix_ms(), why));
    }

    /// The record to store for the policy in force.
    pub fn record(&self) -> PolicyRecord {
        PolicyRecord {
            yaml: self.policy.to_yaml(),
            source: self.source.to_string(),
            loaded_unix_ms: self.loaded_unix_ms,
        }
    }

    /// At takeover: the stored policy (if any) unless this replica changed
    /// its own since (SIGHUP) — then its own, which the new leader stores.
    /// Returns whether this replica's policy is to be written to the store.
    /// A stored policy this version cannot read is ignored (and logged).
    pub fn takeover(&mut self, stored: Option<&[u8]>) -> bool {
        let record = stored.and_then(|v| match serde_json::from_slice::<PolicyRecord>(v) {
            Ok(r) => Some(r),
            Err(e) => {
                tracing::error!(cause = %e, "the stored policy is not a policy record; ignored");
                None
            }
        });
        let keep_own = match &record {
            None => self.changed,
            Some(r) => self.changed && self.loaded_unix_ms > r.loaded_unix_ms,
        };
        if let (false, Some(r)) = (keep_own, record) {
            match Policy::from_yaml(&r.yaml) {
                Ok(p) if p == self.policy => {}
                Ok(p) => {
                    self.policy = p;
                    self.source = Source::Stored(r.source);
                    self.loaded_unix_ms = r.loaded_unix_ms;
                    self.reloads += 1;
                }
                Err(e) => {
                    tracing::error!(cause = %e, "the stored policy is not valid; keeping this replica's");
                }
            }
        }
        self.changed = false;
        self.term = Some(self.policy.clone());
        keep_own
    }

    /// Fields whose new values wait for the next term, as `field: in use
    /// -> new`.
    pub fn deferred(&self) -> Vec<String> {
        let Some(term) = &self.term else {
            return Vec::new();
        };
        let mut out = Vec::new();
        let mut check = |field: &str, used: String, new: String| {
            if used != new {
                out.push(format!(
                    "{field}: {used} in use until the next term, then {new}"
                ));
            }
        };
        check(
            "ha.leader_lease_seconds",
            term.ha.leader_lease_seconds.to_string(),
            self.policy.ha.leader_lease_seconds.to_string(),
        );
        check(
            "local.batch_size",
            term.local.batch_size.to_string(),
            self.policy.local.batch_size.to_string(),
        );
        check(
            "lifecycle.compaction_interval",
            format!("{:?}", term.lifecycle.compaction_interval.as_duration()),
            format!(
                "{:?}",
                self.policy.lifecycle.compaction_interval.as_duration()
            ),
        );
        out
    }

    /// What changed from `old` to the policy in force, briefly (for the
    /// event and the log).
    pub fn summary(old: &Policy, new: &Policy) -> String {
        if old == new {
            return "no change".to_string();
        }
        let mut parts = Vec::new();
        if old.global != new.global {
            let weights: Vec<String> = new
                .global
                .scorers
                .iter()
                .map(|s| format!("{}={}", s.name.as_str(), s.weight))
                .collect();
            parts.push(format!("global (weights {})", weights.join(",")));
        }
        for (name, changed) in [
            ("local", old.local != new.local),
            ("ha", old.ha != new.ha),
            ("lifecycle", old.lifecycle != new.lifecycle),
            ("priority", old.priority != new.priority),
        ] {
            if changed {
                parts.push(name.to_string());
            }
        }
        format!("changed: {}", parts.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn weighted(locality: i64) -> Policy {
        Policy::from_yaml(&format!(
            "global: {{scorers: [{{name: locality, weight: {locality}}}, {{name: headroom, weight: 1}}]}}"
        ))
        .unwrap()
    }

    #[test]
    fn a_stored_policy_wins_at_takeover_over_the_start_file() {
        let mut live = LivePolicy::new(weighted(4), Some("p.yaml".into()));
        let mut stored = LivePolicy::new(weighted(1), None);
        stored.set(weighted(1), Source::Applied { user: "ann".into() });
        let v = serde_json::to_vec(&stored.record()).unwrap();
        assert!(!live.takeover(Some(&v)));
        assert_eq!(live.policy(), &weighted(1));
        assert_eq!(live.source().to_string(), "applied by ann");
        assert_eq!(live.reloads(), 1);
    }

    #[test]
    fn a_newer_sighup_on_this_replica_wins_and_is_stored() {
        let stored = LivePolicy::new(weighted(1), None).record();
        let mut live = LivePolicy::new(weighted(4), None);
        std::thread::sleep(std::time::Duration::from_millis(2));
        live.set(weighted(7), Source::File("p.yaml".into()));
        assert!(live.takeover(Some(&serde_json::to_vec(&stored).unwrap())));
        assert_eq!(live.policy(), &weighted(7));
    }

    #[test]
    fn nothing_stored_keeps_the_file() {
        let mut live = LivePolicy::new(weighted(4), None);
        assert!(!live.takeover(None));
        assert_eq!(live.policy(), &weighted(4));
        assert!(live.deferred().is_empty());
        let mut p = weighted(4);
        p.local.batch_size = 7;
        live.set(p, Source::Default);
        assert_eq!(live.deferred().len(), 1, "{:?}", live.deferred());
        assert!(live.deferred()[0].starts_with("local.batch_size"));
    }

    #[test]
    fn the_summary_names_the_weights() {
        let s = LivePolicy::summary(&weighted(4), &weighted(1));
        assert!(s.contains("locality=1"), "{s}");
    }
}

//! `local-agent supervise`: the small parent of every task process.
//!
//! The node agent starts each task through it, so that:
//! - the task's exit code is written to a file even if the node agent is
//!   gone when the task exits (the agent reads it when it comes back);
//! - the task dies when the node agent has been gone for longer than its
//!   lease: the node agent touches a lease file twice a second, and if the
//!   file is older than the lease the supervisor kills the task. The local
//!   agent declares a silent machine lost only after a longer timeout, so
//!   a task is dead before it is placed again elsewhere: never two copies.
//! - SIGTERM (a stop) reaches the task's whole process group, with SIGKILL
//!   after a grace period;
//! - the task runs as the user the node agent chose (`--uid`, `--gid`;
//!   std drops the supplementary groups when root switches uid), under its
//!   limits (see [`crate::limits`]): it spawns the task from inside the
//!   task's cgroup, or with `RLIMIT_DATA` lowered. When the task ends it
//!   kills what is left of it (the cgroup's processes; with `--sole-user`,
//!   every process of the uid), takes the task's directory back for root,
//!   and says in the exit file when the kernel killed it for memory.
//!
//! The timing (lease checks, the grace period) is [`watch`], apart from the
//! process and the files, so that it can be tested on a paused clock.

use std::future::Future;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use crate::limits::{oom_reason, DataLimit, Mechanism, TaskCgroup};
use crate::node::dirs;

/// How often the lease file is checked, and SIGKILL repeated past the grace
/// period: the node agent renews the lease every 500 ms, so a dead node
/// agent's tasks die at most this long after their lease runs out.
const CHECK_EVERY: Duration = Duration::from_millis(250);

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The node agent's lease file.
    #[arg(long, value_name = "FILE")]
    lease: PathBuf,
    /// Kill the task when the lease file is older than this.
    #[arg(long, value_name = "MS")]
    lease_ms: u64,
    /// Where to write the exit code.
    #[arg(long, value_name = "FILE")]
    exit_file: PathBuf,
    /// Time between SIGTERM and SIGKILL on a stop.
    #[arg(long, default_value_t = 5000, value_name = "MS")]
    grace_ms: u64,
    /// Run the task as this uid.
    #[arg(long, value_name = "UID")]
    uid: Option<u32>,
    /// ... and this gid (default: the uid's number).
    #[arg(long, value_name = "GID", requires = "uid")]
    gid: Option<u32>,
    /// No other process runs as --uid: when the task ends, every process
    /// left with it is killed, and the working directory is taken back.
    #[arg(long, requires = "uid")]
    sole_user: bool,
    /// How to enforce the task's requests.
    #[arg(long, value_enum, value_name = "MECHANISM")]
    limits: Option<Mechanism>,
    /// With a cgroup mechanism: the node agent's cgroup, under which the
    /// task gets its own.
    #[arg(long, value_name = "DIR")]
    cgroup_parent: Option<PathBuf>,
    /// The task's memory request; 0: none.
    #[arg(long, default_value_t = 0, value_name = "BYTES")]
    memory_bytes: u64,
    /// The task's cpu request (cgroup v2 only); 0: none.
    #[arg(long, default_value_t = 0, value_name = "MILLIS")]
    cpu_millis: u64,
    /// The task's command.
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

/// What the supervisor sends the task's process group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Signal {
    Term,
    Kill,
}

fn signal_group(pid: u32, sig: Signal) {
    let sig = match sig {
        Signal::Term => sched_proto::process::Signal::SIGTERM,
        Signal::Kill => sched_proto::process::Signal::SIGKILL,
    };
    // The group may be gone already: nothing to stop then.
    let _ = sched_proto::process::signal_pid(pid, sig, true);
}

fn lease_age(lease: &PathBuf) -> Duration {
    std::fs::metadata(lease)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| SystemTime::now().duration_since(t).ok())
        .unwrap_or(Duration::MAX)
}

/// Waits for the task to exit (`exited`), signalling it on the way:
/// SIGKILL whenever its lease is found older than `lease`; on each stop
/// request (`stops`, which yields `None` once no more can come), SIGTERM,
/// and SIGKILL once `grace` has passed since the first, repeated until the
/// task is gone.
async fn watch(
    exited: impl Future<Output = std::io::Result<ExitStatus>>,
    mut stops: impl FnMut(&mut Context<'_>) -> Poll<Option<()>>,
    lease_age: impl Fn() -> Duration,
    lease: Duration,
    grace: Duration,
    mut send: impl FnMut(Signal),
) -> std::io::Result<ExitStatus> {
    let mut exited = std::pin::pin!(exited);
    let mut check = tokio::time::interval(CHECK_EVERY);
    let mut kill_at: Option<Instant> = None;
    let mut stops_open = true;
    loop {
        tokio::select! {
            s = &mut exited => return s,
            stop = std::future::poll_fn(&mut stops), if stops_open => match stop {
                Some(()) => {
                    send(Signal::Term);
                    kill_at.get_or_insert(Instant::now() + grace);
                }
                None => stops_open = false,
            },
            _ = tokio::time::sleep_until(kill_at.unwrap_or_else(Instant::now)), if kill_at.is_some() => {
                send(Signal::Kill);
                kill_at = Some(Instant::now() + CHECK_EVERY);
            }
            _ = check.tick() => {
                if lease_age() > lease {
                    // The node agent is gone: the machine will be
                    // declared lost and the task placed elsewhere.
                    send(Signal::Kill);
                }
            }
        }
    }
}

/// Why the supervisor itself failed (the task's own failures are exit
/// codes in the exit file).
#[derive(Debug, thiserror::Error)]
pub enum SuperviseError {
    #[error("the task has no command")]
    NoCommand,
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        source: std::io::Error,
    },
}

fn io(what: &'static str) -> impl FnOnce(std::io::Error) -> SuperviseError {
    move |source| SuperviseError::Io { what, source }
}

/// The exit code of a command that could not be started, as a shell
/// reports it (POSIX, "Command Search and Execution"): 127 when it was not
/// found, 126 when it was found but could not be executed.
pub fn start_failure_code(e: &std::io::Error) -> i32 {
    match e.kind() {
        std::io::ErrorKind::NotFound => 127,
        _ => 126,
    }
}

/// The task's cgroup, when the node's mechanism is one.
fn task_cgroup(args: &Args) -> std::io::Result<Option<TaskCgroup>> {
    match (args.limits, &args.cgroup_parent) {
        (Some(m @ (Mechanism::CgroupV2 | Mechanism::CgroupV1Memory)), Some(parent)) => {
            TaskCgroup::create(m, parent, args.memory_bytes, args.cpu_millis).map(Some)
        }
        _ => Ok(None),
    }
}

pub fn run(args: Args) -> Result<(), SuperviseError> {
    let program = args
        .command
        .first()
        .ok_or(SuperviseError::NoCommand)?
        .clone();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(io("cannot start a runtime"))?;
    rt.block_on(async move {
        // Listen for SIGTERM before the task starts, so that a stop sent as
        // soon as the task runs is passed on, not fatal to the supervisor.
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .map_err(io("cannot listen for SIGTERM"))?;
        let mut command = Command::new(&program);
        command.args(&args.command[1..]).process_group(0);
        if let Some(uid) = args.uid {
            // The working directory is inherited, not entered again: the
            // task needs no right on the directories above its own.
            command.uid(uid).gid(args.gid.unwrap_or(uid));
        }
        let cgroup = match task_cgroup(&args) {
            Ok(c) => c,
            Err(e) => {
                let what = args.limits.map_or("", Mechanism::describe);
                eprintln!("cannot limit the task's resources ({what}): {e}");
                return end(&args, None, 126);
            }
        };
        let spawned = {
            // Inherited by the task, restored for the supervisor at once.
            let _data = match args.limits {
                Some(Mechanism::Rlimits) if args.memory_bytes > 0 => Some(
                    DataLimit::set(args.memory_bytes).map_err(|e| SuperviseError::Io {
                        what: "cannot set RLIMIT_DATA",
                        source: e.into(),
                    })?,
                ),
                _ => None,
            };
            if let Some(c) = &cgroup {
                c.enter().map_err(io("cannot enter the task's cgroup"))?;
            }
            let spawned = tokio::process::Command::from(command)
                .kill_on_drop(false)
                .spawn();
            if let Some(c) = &cgroup {
                c.leave().map_err(io("cannot leave the task's cgroup"))?;
            }
            spawned
        };
        let mut child = match spawned {
            Ok(child) => child,
            Err(e) => {
                // The task failed, as a shell would report it: its stderr
                // says why, its exit file says how.
                eprintln!("cannot start {program:?}: {e}");
                return end(&args, cgroup, start_failure_code(&e));
            }
        };
        let Some(pid) = child.id() else {
            // Reaped already: it exited before we looked.
            let status = child.wait().await.map_err(io("cannot wait for the task"))?;
            return end(&args, cgroup, exit_code(status));
        };
        let status = watch(
            child.wait(),
            |cx| term.poll_recv(cx),
            || lease_age(&args.lease),
            Duration::from_millis(args.lease_ms),
            Duration::from_millis(args.grace_ms),
            |sig| signal_group(pid, sig),
        )
        .await
        .map_err(io("cannot wait for the task"))?;
        end(&args, cgroup, exit_code(status))
    })
}

/// After the task: kills what is left of it, removes its cgroup, takes its
/// directory back, and writes the exit file, with why it ended when the
/// kernel killed it for memory.
fn end(args: &Args, cgroup: Option<TaskCgroup>, code: i32) -> Result<(), SuperviseError> {
    let mut reason = String::new();
    if let Some(c) = cgroup {
        c.kill_all();
        if c.oom_kills() > 0 {
            let mechanism = args.limits.unwrap_or(Mechanism::CgroupV2);
            reason = oom_reason(args.memory_bytes, mechanism);
        }
        let dir = c.dir().to_path_buf();
        if let Err(e) = c.remove() {
            eprintln!("cannot remove the task's cgroup {}: {e}", dir.display());
        }
    }
    if args.sole_user {
        if let Some(uid) = args.uid {
            kill_user(uid);
        }
        dirs::reclaim(Path::new(".")).map_err(io("cannot take the task's directory back"))?;
    }
    write_exit(&args.exit_file, code, &reason)
}

/// Kills every process whose real or effective uid is `uid`, until none is
/// left (a second or so at most). Only for a uid no other task has: a
/// dynamic one. Never root's, nor this process's own.
pub fn kill_user(uid: u32) {
    if uid == 0 || uid == nix::unistd::geteuid().as_raw() {
        return;
    }
    for _ in 0..50 {
        let mut found = false;
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|p| p.parse::<i32>().ok())
            else {
                continue;
            };
            let Ok(status) = std::fs::read_to_string(entry.path().join("status")) else {
                continue;
            };
            // "Uid:\treal\teffective\tsaved\tfilesystem"
            let owned = status
                .lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .is_some_and(|ids| ids.split_whitespace().any(|id| id == uid.to_string()));
            if owned && dirs::alive(pid as u32) {
                found = true;
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        if !found {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The task's exit code; 128 + N for a task killed by signal N.
fn exit_code(status: ExitStatus) -> i32 {
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(255)
}

/// Writes the exit file atomically: a reader never sees half a number.
/// Other tasks cannot read it: it is in the task's directory, which only
/// the task's user (and root) may enter.
fn write_exit(exit_file: &Path, code: i32, reason: &str) -> Result<(), SuperviseError> {
    dirs::write_atomic(exit_file, dirs::exit_text(code, reason).as_bytes(), 0o644)
        .map_err(io("cannot write the exit file"))
}

#[cfg(test)]
mod tests {
    //! `watch` on a paused clock, over a fake task: virtual seconds pass at
    //! once, and each signal's time is exact.

    use std::cell::RefCell;

    use super::*;

    const MS: Duration = Duration::from_millis(1);
    const S: Duration = Duration::from_secs(1);

    struct Case {
        lease: Duration,
        grace: Duration,
        /// How often the node agent touches the lease; `None`: it is gone.
        renew_every: Option<Duration>,
        /// When stops are requested; after the last, no more can come.
        stops: Vec<Duration>,
        /// The task ignores SIGTERM (it still dies of SIGKILL).
        ignores_term: bool,
        /// When the task exits by itself, with code 0.
        ends_after: Duration,
    }

    impl Default for Case {
        fn default() -> Self {
            Case {
                lease: 1000 * MS,
                grace: 5 * S,
                renew_every: Some(500 * MS),
                stops: Vec::new(),
                ignores_term: false,
                ends_after: 3600 * S,
            }
        }
    }

    /// How the task ended, when, and what was sent to it when (times from
    /// the start).
    struct Run {
        status: ExitStatus,
        ended: Duration,
        sent: Vec<(Duration, Signal)>,
    }

    async fn run(c: Case) -> Run {
        let start = Instant::now();
        let sent = RefCell::new(Vec::new());
        // The fake task dies of the first signal it does not ignore.
        let (die, mut dies) = tokio::sync::mpsc::unbounded_channel::<i32>();
        let ends_after = c.ends_after;
        let exited = async move {
            tokio::select! {
                Some(signal) = dies.recv() => Ok(ExitStatus::from_raw(signal)),
                _ = tokio::time::sleep(ends_after) => Ok(ExitStatus::from_raw(0)),
            }
        };
        let mut next = 0;
        let mut stop_timer = Box::pin(tokio::time::sleep_until(
            start + c.stops.first().copied().unwrap_or_default(),
        ));
        let stops = |cx: &mut Context<'_>| {
            if next == c.stops.len() {
                return Poll::Ready(None);
            }
            std::task::ready!(stop_timer.as_mut().poll(cx));
            next += 1;
            if let Some(&t) = c.stops.get(next) {
                stop_timer.as_mut().reset(start + t);
            }
            Poll::Ready(Some(()))
        };
        let lease_age = || {
            let age = start.elapsed();
            match c.renew_every {
                Some(every) => Duration::from_nanos((age.as_nanos() % every.as_nanos()) as u64),
                None => age,
            }
        };
        let send = |signal: Signal| {
            sent.borrow_mut().push((start.elapsed(), signal));
            match signal {
                Signal::Kill => die.send(9).ok(),
                Signal::Term if !c.ignores_term => die.send(15).ok(),
                Signal::Term => None,
            };
        };
        let status = watch(exited, stops, lease_age, c.lease, c.grace, send)
            .await
            .unwrap();
        Run {
            status,
            ended: start.elapsed(),
            sent: sent.into_inner(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_renewed_lease_lets_the_task_run_to_its_end() {
        let r = run(Case {
            ends_after: 600 * S,
            ..Case::default()
        })
        .await;
        assert_eq!(r.sent, []);
        assert!(r.status.success());
        assert_eq!(r.ended, 600 * S);
    }

    /// The lease is checked every 250 ms: at 1000 ms it is not yet older
    /// than 1000 ms, at 1250 ms it is.
    #[tokio::test(start_paused = true)]
    async fn a_stale_lease_kills_the_task_at_the_next_check() {
        let r = run(Case {
            renew_every: None,
            ..Case::default()
        })
        .await;
        assert_eq!(r.sent, [(1250 * MS, Signal::Kill)]);
        assert_eq!(r.status.signal(), Some(9));
        assert_eq!(r.ended, 1250 * MS);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stop_is_passed_on_at_once() {
        let r = run(Case {
            stops: vec![2 * S],
            ..Case::default()
        })
        .await;
        assert_eq!(r.sent, [(2 * S, Signal::Term)]);
        assert_eq!(r.status.signal(), Some(15));
    }

    /// Stopped at 2 s with a 5 s grace period: SIGKILL at 7 s, and a second
    /// stop at 4 s does not put it off.
    #[tokio::test(start_paused = true)]
    async fn a_task_that_ignores_a_stop_is_killed_when_the_grace_period_ends() {
        let r = run(Case {
            stops: vec![2 * S, 4 * S],
            ignores_term: true,
            ..Case::default()
        })
        .await;
        assert_eq!(
            r.sent,
            [
                (2 * S, Signal::Term),
                (4 * S, Signal::Term),
                (7 * S, Signal::Kill)
            ]
        );
        assert_eq!(r.status.signal(), Some(9));
        assert_eq!(r.ended, 7 * S);
    }
}

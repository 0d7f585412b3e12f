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
//!   after a grace period.
//!
//! The timing (lease checks, the grace period) is [`watch`], apart from the
//! process and the files, so that it can be tested on a paused clock.

use std::future::Future;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Command, ExitStatus};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use tokio::time::Instant;

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

impl Signal {
    fn name(self) -> &'static str {
        match self {
            Signal::Term => "TERM",
            Signal::Kill => "KILL",
        }
    }
}

fn signal_group(pid: u32, sig: Signal) {
    let _ = Command::new("kill")
        .args([&format!("-{}", sig.name()), "--", &format!("-{pid}")])
        .stderr(std::process::Stdio::null())
        .status();
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

pub fn run(args: Args) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        // Listen for SIGTERM before the task starts, so that a stop sent as
        // soon as the task runs is passed on, not fatal to the supervisor.
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let mut child = tokio::process::Command::from({
            let mut c = Command::new(&args.command[0]);
            c.args(&args.command[1..]).process_group(0);
            c
        })
        .kill_on_drop(false)
        .spawn()
        .with_context(|| format!("cannot start {:?}", args.command[0]))?;
        let pid = child.id().context("the task has a pid while running")?;
        let status = watch(
            child.wait(),
            |cx| term.poll_recv(cx),
            || lease_age(&args.lease),
            Duration::from_millis(args.lease_ms),
            Duration::from_millis(args.grace_ms),
            |sig| signal_group(pid, sig),
        )
        .await?;
        let code = status
            .code()
            .or_else(|| status.signal().map(|s| 128 + s))
            .unwrap_or(255);
        // Written atomically: a reader never sees half a number.
        let tmp = args.exit_file.with_extension("tmp");
        std::fs::write(&tmp, code.to_string())?;
        std::fs::rename(&tmp, &args.exit_file)?;
        Ok(())
    })
}

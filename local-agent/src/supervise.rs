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

use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, SystemTime};

use anyhow::Context;

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

fn signal_group(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .args([&format!("-{sig}"), "--", &format!("-{pid}")])
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

pub fn run(args: Args) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let mut child = tokio::process::Command::from({
            let mut c = Command::new(&args.command[0]);
            c.args(&args.command[1..]).process_group(0);
            c
        })
        .kill_on_drop(false)
        .spawn()
        .with_context(|| format!("cannot start {:?}", args.command[0]))?;
        let pid = child.id().context("the task has a pid while running")?;
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        let lease = Duration::from_millis(args.lease_ms);
        let mut kill_at: Option<tokio::time::Instant> = None;
        let status = loop {
            tokio::select! {
                s = child.wait() => break s?,
                _ = term.recv() => {
                    signal_group(pid, "TERM");
                    kill_at.get_or_insert(tokio::time::Instant::now() + Duration::from_millis(args.grace_ms));
                }
                _ = tick.tick() => {
                    if lease_age(&args.lease) > lease {
                        // The node agent is gone: the machine will be
                        // declared lost and the task placed elsewhere.
                        signal_group(pid, "KILL");
                    }
                    if kill_at.is_some_and(|t| tokio::time::Instant::now() >= t) {
                        signal_group(pid, "KILL");
                    }
                }
            }
        };
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

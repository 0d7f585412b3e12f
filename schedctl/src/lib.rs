//! The `schedctl` command-line client.
//!
//! # Layout
//!
//! - [`Cli`]: the clap command tree.
//! - `simulate`: `schedctl simulate`, the core's simulator over files, with
//!   a table, JSON, a placements CSV and per-job explanations.
//! - `policy`: `schedctl policy check`, `apply` and `show`.
//! - `jobs`: the commands served by the global scheduler (submit, run, get,
//!   describe, cancel, watch, logs), over `client`'s connection with retries.
//! - `dev`: `schedctl dev`, the whole stack on loopback.
//!
//! Exit codes: 0 success, 1 error, 2 usage (clap's own).

mod access;
mod client;
mod dev;
mod jobs;
mod policy;
mod simulate;

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "schedctl",
    version,
    about = "Control and simulate the cluster scheduler"
)]
pub struct Cli {
    #[command(flatten)]
    access: access::AccessArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the scheduler's global and local decisions over a topology and a
    /// workload, with no network, and report where every task would go.
    Simulate(simulate::Args),
    /// Scheduling policies: `check FILE` (offline), `apply FILE` and `show`
    /// (the scheduler's policy in force).
    #[command(subcommand)]
    Policy(policy::Command),
    /// Submit the jobs of a job file.
    Submit(jobs::SubmitArgs),
    /// Submit one job from the command line: `schedctl run NAME --cpu 1 --memory 1Gi -- CMD ARGS...`.
    Run(Box<jobs::RunArgs>),
    /// List jobs or clusters, or show one job.
    #[command(subcommand)]
    Get(jobs::GetCommand),
    /// Show a job in detail, with why its pending tasks are pending.
    #[command(subcommand)]
    Describe(jobs::DescribeCommand),
    /// Cancel a job: pending tasks at once, running ones stopped.
    Cancel { name: String },
    /// Delete a finished job (or, with --force, any) or a cluster gone for
    /// good.
    #[command(subcommand)]
    Delete(jobs::DeleteCommand),
    /// Quotas per tenant and band (admins): `quota set`, `quota remove`.
    #[command(subcommand)]
    Quota(jobs::QuotaCommand),
    /// Follow job events as they happen (all jobs, or one).
    Watch { job: Option<String> },
    /// Start the whole stack on loopback (global scheduler, a local agent
    /// per cluster, node agents) for trying it out.
    Dev(dev::Args),
    /// Print a task's output: `JOB/INDEX` (or every task of `JOB`).
    Logs {
        #[arg(value_name = "JOB[/INDEX]")]
        target: String,
        /// Keep printing until the task exits.
        #[arg(short = 'f', long)]
        follow: bool,
    },
    /// A small CA for mutual TLS: `certs init DIR`, `certs issue`.
    #[command(subcommand)]
    Certs(access::CertsCommand),
    /// User tokens: `token new --user U --tenant T --role R`.
    #[command(subcommand)]
    Token(access::TokenCommand),
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    // Offline commands first: a broken config file does not stop them.
    let command = match cli.command {
        Command::Simulate(args) => return simulate::run(args),
        Command::Policy(cmd) if cmd.offline() => return policy::run(cmd),
        Command::Dev(args) => return dev::run(args),
        Command::Certs(cmd) => return access::certs(cmd),
        Command::Token(cmd) => return access::token(cmd),
        remote => remote,
    };
    let server = &access::target(&cli.access)?;
    match command {
        Command::Simulate(_) | Command::Dev(_) | Command::Certs(_) | Command::Token(_) => {
            unreachable!("offline commands are handled above")
        }
        Command::Policy(cmd) => remote(policy::remote(server, cmd)),
        Command::Submit(args) => remote(jobs::submit(server, args)),
        Command::Run(args) => remote(jobs::run(server, *args)),
        Command::Get(cmd) => remote(jobs::get(server, cmd)),
        Command::Describe(cmd) => remote(jobs::describe(server, cmd)),
        Command::Cancel { name } => remote(jobs::cancel(server, name)),
        Command::Delete(cmd) => remote(jobs::delete(server, cmd)),
        Command::Quota(cmd) => remote(jobs::quota(server, cmd)),
        Command::Watch { job } => remote(jobs::watch(server, job)),
        Command::Logs { target, follow } => remote(jobs::logs(server, target, follow)),
    }
}

/// Runs a command that talks to the scheduler on a small runtime.
fn remote(f: impl std::future::Future<Output = anyhow::Result<()>>) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")?
        .block_on(f)
}

/// Reads a file, naming it in the error.
fn read(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
}

/// Loads the policy from `path`, or the defaults when none is given.
fn load_policy(path: Option<&PathBuf>) -> anyhow::Result<sched_core::policy::Policy> {
    match path {
        None => Ok(Default::default()),
        Some(p) => sched_core::policy::Policy::from_yaml(&read(p)?)
            .with_context(|| format!("invalid policy {}", p.display())),
    }
}

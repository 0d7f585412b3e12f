//! The `schedctl` command-line client.
//!
//! # Layout
//!
//! - [`Cli`]: the clap command tree.
//! - `simulate`: `schedctl simulate`, the core's simulator over files, with
//!   a table, JSON, a placements CSV and per-job explanations.
//! - `policy`: `schedctl policy check`.
//!
//! Exit codes: 0 success, 1 error, 2 usage (clap's own).

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
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the scheduler's global and local decisions over a topology and a
    /// workload, with no network, and report where every task would go.
    Simulate(simulate::Args),
    /// Validate and show scheduling policy files.
    #[command(subcommand)]
    Policy(policy::Command),
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Simulate(args) => simulate::run(args),
        Command::Policy(cmd) => policy::run(cmd),
    }
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

//! The `schedctl` command-line client.
//!
//! # Layout
//!
//! - [`Cli`]: the clap command tree.
//! - `simulate`: `schedctl simulate`, the core's simulator over files, with
//!   a table, JSON, a placements CSV and per-job explanations; `replay`:
//!   its replay mode (arrivals and departures, GPU traces, several
//!   policies), drawn by `plot`.
//! - `policy`: `schedctl policy check`, `apply` and `show`.
//! - `access`: the connection flags and contexts, `certs`, `token`.
//! - `jobs`: the commands served by the global scheduler (submit, run, get,
//!   describe, cancel, watch, logs), over `client`'s connection with retries.
//! - `dev`: `schedctl dev`, the whole stack on loopback.
//! - `output`: `-o table|wide|json|yaml`; `human`: sizes as people read
//!   them; `out`: stdout writes that end quietly on a closed pipe.
//!
//! Exit codes: 0 success (also when the reader of stdout went away early:
//! `schedctl get jobs | head -1`), 1 error, 2 usage (clap's own, and our
//! checks of flag values: [`Usage`]).
//!
//! The flags that say where the scheduler is and who we are (`--server`,
//! `--tls-*`, `--token`, `--config`, `--context`) belong to the commands
//! that talk to it; kubectl's habit of writing them first (`schedctl
//! --server URL get jobs`) is kept by [`Cli::parse_args`], which moves them
//! after the command's name. An offline command given one is a usage error.

mod access;
mod client;
mod dev;
mod human;
mod jobs;
mod out;
mod output;
mod plot;
mod policy;
mod replay;
mod simulate;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{CommandFactory, Parser, Subcommand};

use access::AccessArgs;

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

/// A usage error found after parsing (a flag's value that clap cannot
/// check): exit code 2, like clap's own.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Usage(pub String);

/// A [`Usage`] error.
pub fn usage(message: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(Usage(message.into()))
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
    /// Submit the jobs of a job file (`-f -`: from standard input).
    Submit {
        #[command(flatten)]
        access: AccessArgs,
        #[command(flatten)]
        args: jobs::SubmitArgs,
    },
    /// Submit one job from the command line: `schedctl run NAME --cpu 1 --memory 1Gi -- CMD ARGS...`.
    Run {
        #[command(flatten)]
        access: AccessArgs,
        #[command(flatten)]
        args: Box<jobs::RunArgs>,
    },
    /// List jobs, clusters, machines or quotas, or show one job or cluster.
    Get {
        #[command(flatten)]
        access: AccessArgs,
        #[command(subcommand)]
        cmd: jobs::GetCommand,
    },
    /// Show a job in detail, with why its pending tasks are pending.
    Describe {
        #[command(flatten)]
        access: AccessArgs,
        #[command(subcommand)]
        cmd: jobs::DescribeCommand,
    },
    /// Cancel a job: pending tasks at once, running ones stopped.
    Cancel {
        #[command(flatten)]
        access: AccessArgs,
        /// The job's name.
        name: String,
    },
    /// Delete a finished job (or, with --force, any) or a cluster gone for
    /// good.
    Delete {
        #[command(flatten)]
        access: AccessArgs,
        #[command(subcommand)]
        cmd: jobs::DeleteCommand,
    },
    /// Quotas per tenant and band (admins): `quota set`, `quota remove`.
    Quota {
        #[command(flatten)]
        access: AccessArgs,
        #[command(subcommand)]
        cmd: jobs::QuotaCommand,
    },
    /// Follow job events as they happen (all jobs, or one).
    Watch {
        #[command(flatten)]
        access: AccessArgs,
        /// Only this job's events.
        job: Option<String>,
        #[command(flatten)]
        output: output::OutputArgs,
    },
    /// Start the whole stack on loopback (global scheduler, a local agent
    /// per cluster, node agents) for trying it out.
    Dev(dev::Args),
    /// Print a task's output: `JOB/INDEX` (or every task of `JOB`).
    Logs {
        #[command(flatten)]
        access: AccessArgs,
        #[command(flatten)]
        args: jobs::LogsArgs,
    },
    /// A small CA for mutual TLS: `certs init DIR`, `certs issue`.
    #[command(subcommand)]
    Certs(access::CertsCommand),
    /// User tokens: `token new --user U --tenant T --role R`.
    #[command(subcommand)]
    Token(access::TokenCommand),
    /// Print a shell completion script: `source <(schedctl completion bash)`.
    Completion {
        /// The shell: bash, zsh, fish, elvish or powershell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

impl Cli {
    /// Parses the process's arguments, exiting with clap's message (and
    /// code 2) on a usage error.
    pub fn parse_args() -> Cli {
        Cli::parse_from(leading_access_flags_moved(std::env::args_os().collect()))
    }

    /// As [`Cli::parse_args`] over `args` (the program's name first).
    pub fn try_parse_args(args: Vec<OsString>) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(leading_access_flags_moved(args))
    }
}

/// The connection flags, which take a value.
const ACCESS_FLAGS: [&str; 7] = [
    "--server",
    "--tls-ca",
    "--tls-cert",
    "--tls-key",
    "--token",
    "--config",
    "--context",
];

/// `schedctl --server URL get jobs` as `schedctl get --server URL jobs`:
/// connection flags before the command's name go right after it, where
/// the command defines them. Anything else is left for clap to judge.
fn leading_access_flags_moved(args: Vec<OsString>) -> Vec<OsString> {
    let mut moved = Vec::new();
    let mut i = 1;
    while i < args.len() {
        let Some(a) = args[i].to_str() else { break };
        let name = a.split_once('=').map_or(a, |(n, _)| n);
        if !ACCESS_FLAGS.contains(&name) {
            break;
        }
        moved.push(args[i].clone());
        if !a.contains('=') && i + 1 < args.len() {
            moved.push(args[i + 1].clone());
            i += 1;
        }
        i += 1;
    }
    // Only when a command name follows: otherwise clap's error is the
    // right one as it stands.
    if moved.is_empty() || i >= args.len() {
        return args;
    }
    // `policy apply|show` define them one level down.
    let mut name_end = i + 1;
    if args[i] == "policy" && name_end < args.len() {
        name_end += 1;
    }
    let mut out = vec![args[0].clone()];
    out.extend(args[i..name_end].iter().cloned());
    out.extend(moved);
    out.extend(args[name_end..].iter().cloned());
    out
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Simulate(args) => simulate::run(args),
        Command::Policy(cmd) => match cmd.access().cloned() {
            None => policy::run(cmd),
            Some(access) => remote(&access, |s| async move { policy::remote(&s, cmd).await }),
        },
        Command::Dev(args) => dev::run(args),
        Command::Certs(cmd) => access::certs(cmd),
        Command::Token(cmd) => access::token(cmd),
        Command::Completion { shell } => completion(shell),
        Command::Submit { access, args } => {
            remote(&access, |s| async move { jobs::submit(&s, args).await })
        }
        Command::Run { access, args } => {
            remote(&access, |s| async move { jobs::run(&s, *args).await })
        }
        Command::Get { access, cmd } => {
            remote(&access, |s| async move { jobs::get(&s, cmd).await })
        }
        Command::Describe { access, cmd } => {
            remote(&access, |s| async move { jobs::describe(&s, cmd).await })
        }
        Command::Cancel { access, name } => {
            remote(&access, |s| async move { jobs::cancel(&s, name).await })
        }
        Command::Delete { access, cmd } => {
            remote(&access, |s| async move { jobs::delete(&s, cmd).await })
        }
        Command::Quota { access, cmd } => {
            remote(&access, |s| async move { jobs::quota(&s, cmd).await })
        }
        Command::Watch {
            access,
            job,
            output,
        } => remote(&access, |s| async move {
            jobs::watch(&s, job, output.format()).await
        }),
        Command::Logs { access, args } => {
            remote(&access, |s| async move { jobs::logs(&s, args).await })
        }
    }
}

/// The exit code for `result`, with the error printed: a gRPC error as
/// `CODE: message` (the code first, as gRPC spells it), others as
/// `error: ...`; usage errors exit 2, a closed stdout 0 and silently.
pub fn exit(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if out::is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) if e.downcast_ref::<Usage>().is_some() => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
        Err(e) if e.downcast_ref::<client::RpcError>().is_some() => {
            eprintln!("{e:#}");
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// `schedctl completion SHELL`.
fn completion(shell: clap_complete::Shell) -> anyhow::Result<()> {
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "schedctl", &mut script);
    out::print(&String::from_utf8(script).context("a completion script in UTF-8")?)?;
    Ok(())
}

/// Runs a command that talks to the scheduler on a small runtime.
fn remote<F, Fut>(access: &AccessArgs, f: F) -> anyhow::Result<()>
where
    F: FnOnce(client::Target) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let target = access::target(access)?;
    let server = target.server.clone();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")?
        .block_on(f(target))
        .map_err(|e| client::RpcError::at(e, &server))
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Every command and every flag says what it is for; none points to a
    /// file that is not there.
    #[test]
    fn help_is_complete() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            let path = format!("{path} {}", cmd.get_name());
            if cmd.get_about().is_none() && path != "schedctl" {
                missing.push(format!("{path}: no description"));
            }
            for arg in cmd.get_arguments() {
                let id = arg.get_id().as_str();
                if id == "help" || id == "version" || arg.is_hide_set() {
                    continue;
                }
                let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
                if help.trim().is_empty() {
                    missing.push(format!("{path} {id}: no help"));
                }
                if help.contains("DESIGN.md") {
                    missing.push(format!("{path} {id}: points to DESIGN.md"));
                }
            }
            for sub in cmd.get_subcommands() {
                if sub.get_name() != "help" {
                    walk(sub, &path, missing);
                }
            }
        }
        let mut missing = Vec::new();
        let mut cmd = Cli::command();
        cmd.build();
        walk(&cmd, "", &mut missing);
        assert!(missing.is_empty(), "{missing:#?}");
    }

    #[test]
    fn leading_connection_flags_go_after_the_command() {
        let args = |v: &[&str]| v.iter().map(OsString::from).collect::<Vec<_>>();
        assert_eq!(
            leading_access_flags_moved(args(&["s", "--server", "u", "--token=t", "get", "jobs"])),
            args(&["s", "get", "--server", "u", "--token=t", "jobs"])
        );
        assert_eq!(
            leading_access_flags_moved(args(&["s", "get", "jobs", "--server", "u"])),
            args(&["s", "get", "jobs", "--server", "u"])
        );
        assert!(Cli::try_parse_args(args(&["s", "--server", "u", "get", "jobs"])).is_ok());
        assert!(Cli::try_parse_args(args(&["s", "--server", "u", "token", "new"])).is_err());
    }
}

//! `schedctl policy`: `check FILE` (offline), `apply FILE` and `show` (the
//! scheduler's live policy).

use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;
use sched_proto::pb;

use crate::access::AccessArgs;
use crate::client::{connect, retry, status_error, Target};

/// Reads do not wait as long as the job commands for a scheduler that does
/// not answer.
const RETRY_FOR: std::time::Duration = std::time::Duration::from_secs(30);

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate a policy file and print the effective policy (defaults filled in).
    Check {
        /// The policy file (YAML).
        file: PathBuf,
    },
    /// Put a policy file in force on the running scheduler (admins): it is
    /// validated there first, and a bad one changes nothing.
    Apply {
        /// The policy file (YAML).
        file: PathBuf,
        #[command(flatten)]
        access: AccessArgs,
    },
    /// Print the scheduler's policy in force, where it came from and when
    /// it was loaded.
    Show {
        #[command(flatten)]
        access: AccessArgs,
    },
}

impl Command {
    /// How to reach the scheduler; `None` for `check`, which needs none.
    pub fn access(&self) -> Option<&AccessArgs> {
        match self {
            Command::Check { .. } => None,
            Command::Apply { access, .. } | Command::Show { access } => Some(access),
        }
    }
}

pub fn run(cmd: Command) -> anyhow::Result<()> {
    match cmd {
        Command::Check { file } => {
            let policy = super::load_policy(Some(&file))?;
            eprintln!("{}: valid", file.display());
            print!("{}", policy.to_yaml());
            Ok(())
        }
        Command::Apply { .. } | Command::Show { .. } => {
            unreachable!("remote policy commands go through `remote`")
        }
    }
}

/// `apply` and `show`, against the scheduler at `server`.
pub async fn remote(server: &Target, cmd: Command) -> anyhow::Result<()> {
    let c = connect(server)?;
    match cmd {
        Command::Check { .. } => unreachable!("`check` is offline"),
        Command::Apply { file, .. } => {
            let yaml = super::read(&file)?;
            let r = retry(RETRY_FOR, || {
                let mut c = c.clone();
                let yaml = yaml.clone();
                async move { c.apply_policy(pb::ApplyPolicyRequest { yaml }).await }
            })
            .await
            .map_err(status_error)
            .with_context(|| format!("policy {} refused", file.display()))?;
            let status = r.into_inner().policy.unwrap_or_default();
            println!("policy applied ({})", status.source);
            for d in &status.deferred {
                println!("note: {d}");
            }
            Ok(())
        }
        Command::Show { .. } => {
            let s = retry(RETRY_FOR, || {
                let mut c = c.clone();
                async move { c.get_policy(pb::GetPolicyRequest {}).await }
            })
            .await
            .map_err(status_error)?
            .into_inner();
            println!("# source: {}", s.source);
            println!("# loaded: {}", time(s.load_time.as_ref()));
            println!("# reloads: {}", s.reloads);
            if !s.last_refused.is_empty() {
                println!(
                    "# last refused: {}: {}",
                    time(s.last_refusal_time.as_ref()),
                    s.last_refused
                );
            }
            for d in &s.deferred {
                println!("# deferred: {d}");
            }
            print!("{}", s.yaml);
            Ok(())
        }
    }
}

/// An API time as RFC 3339 in UTC (`2024-02-29T12:34:56.789Z`, protobuf's
/// JSON form); `-` when unset.
fn time(t: Option<&sched_proto::wkt::Timestamp>) -> String {
    t.map_or_else(|| "-".to_string(), ToString::to_string)
}

#[cfg(test)]
mod tests {
    #[test]
    fn times_are_rfc3339_in_utc() {
        let t = sched_proto::wkt::timestamp(1_709_210_096_000);
        assert_eq!(super::time(Some(&t)), "2024-02-29T12:34:56Z");
        assert_eq!(super::time(None), "-");
    }
}

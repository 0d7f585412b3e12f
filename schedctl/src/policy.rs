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
            println!("# loaded: {}", time(s.loaded_unix_ms));
            println!("# reloads: {}", s.reloads);
            if !s.last_refused.is_empty() {
                println!(
                    "# last refused: {}: {}",
                    time(s.last_refused_unix_ms),
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

/// A Unix time in ms as UTC `YYYY-MM-DD HH:MM:SS` (civil date from the
/// day count, Howard Hinnant's `civil_from_days`).
fn time(unix_ms: i64) -> String {
    let secs = unix_ms.div_euclid(1000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn times_are_utc_dates() {
        assert_eq!(super::time(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(super::time(1_709_210_096_000), "2024-02-29 12:34:56 UTC");
    }
}

//! `schedctl policy check FILE`.

use std::path::PathBuf;

use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate a policy file and print the effective policy (defaults filled in).
    Check {
        /// The policy file (YAML).
        file: PathBuf,
    },
}

pub fn run(cmd: Command) -> anyhow::Result<()> {
    match cmd {
        Command::Check { file } => {
            let policy = super::load_policy(Some(&file))?;
            eprintln!("{}: valid", file.display());
            print!("{}", policy.to_yaml());
            Ok(())
        }
    }
}

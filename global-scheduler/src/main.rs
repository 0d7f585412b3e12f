//! `global-scheduler`: accepts jobs, ranks clusters and hands tasks to
//! local agents. The service is not built yet: today the scheduling core
//! runs in `schedctl simulate`; this binary only validates its inputs.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

#[derive(Debug, Parser)]
#[command(name = "global-scheduler", version, about)]
struct Args {
    /// Policy file to validate.
    #[arg(long, value_name = "FILE")]
    policy: Option<PathBuf>,
    /// Topology file to validate.
    #[arg(long, value_name = "FILE")]
    topology: Option<PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match global_scheduler::check_inputs(args.policy.as_deref(), args.topology.as_deref()) {
        Ok(()) => {
            eprintln!(
                "global-scheduler: inputs valid; the gRPC service is not available in this version"
            );
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

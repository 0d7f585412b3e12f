//! `local-agent`: the per-cluster agent (`serve`) and the per-machine node
//! agent (`node`). Neither service is built yet: today the packing core runs
//! in `schedctl simulate`.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "local-agent", version, about)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The cluster agent (not available in this version).
    Serve,
    /// The node agent (not available in this version).
    Node,
}

fn main() -> ExitCode {
    let args = Args::parse();
    eprintln!(
        "local-agent {:?}: not available in this version; see `schedctl simulate`",
        args.command
    );
    ExitCode::from(1)
}

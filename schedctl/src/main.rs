//! `schedctl`: the command-line client. See `schedctl --help`.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = schedctl::Cli::parse();
    match schedctl::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

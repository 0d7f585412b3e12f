//! `schedctl`: the command-line client. See `schedctl --help`.

use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = schedctl::Cli::parse_args();
    schedctl::exit(schedctl::run(cli))
}

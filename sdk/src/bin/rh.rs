//! `rh`: dispatch, watch and cancel remote Python calls from a terminal.

use clap::Parser;

fn main() -> std::process::ExitCode {
    runhouse_gateway::cli::Cli::parse().run()
}

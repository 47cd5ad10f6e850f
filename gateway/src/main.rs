//! `rh-gateway`: serve the API, apply migrations, mint tokens, or run the local stack.

use clap::Parser;

fn main() -> std::process::ExitCode {
    gateway::cli::Cli::parse().run()
}

//! `rh-node`: the node daemon (`run`) and its Python worker (`worker`).

use clap::Parser;

fn main() -> std::process::ExitCode {
    node::cli::Cli::parse().run()
}

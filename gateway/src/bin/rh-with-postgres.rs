//! `rh-with-postgres -- CMD [ARGS…]`: runs a command against a throwaway
//! PostgreSQL server started from the machine's binaries, with `DATABASE_URL`
//! and `RH_TEST_DATABASE_URL` pointing at it, then stops and deletes the server.
//! The test and CI scripts use it so every test binary shares one server.

use std::process::{Command, ExitCode};

use gateway::embedded_pg::{EmbeddedPostgres, Options};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).skip_while(|a| a == "--").collect();
    let Some((program, rest)) = args.split_first() else {
        eprintln!("usage: rh-with-postgres -- COMMAND [ARGS...]");
        return ExitCode::from(2);
    };
    let dir = std::env::temp_dir().join(format!("rh-with-postgres-{}", std::process::id()));
    let pg = match EmbeddedPostgres::start(&dir, Options { durable: false }) {
        Ok(pg) => pg,
        Err(err) => {
            eprintln!("error: {err}");
            return ExitCode::FAILURE;
        }
    };
    let url = pg.url("postgres");
    let status = Command::new(program).args(rest).env("DATABASE_URL", &url).env("RH_TEST_DATABASE_URL", &url).status();
    if let Err(err) = pg.stop() {
        eprintln!("warning: {err}");
    }
    let _ = std::fs::remove_dir_all(&dir);
    match status {
        Ok(status) if status.success() => ExitCode::SUCCESS,
        Ok(status) => ExitCode::from(status.code().unwrap_or(1).clamp(1, 255) as u8),
        Err(err) => {
            eprintln!("error: cannot run {program}: {err}");
            ExitCode::FAILURE
        }
    }
}

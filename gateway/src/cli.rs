//! The `rh-gateway` command line.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use secrecy::SecretString;

use crate::auth::{parse_ttl, Keys, Scope};
use crate::config::Settings;
use crate::db::DataStore;
use crate::startup::{shutdown_signal, Application};

/// Runhouse Gateway: records dispatches of Python functions and serves their API.
#[derive(Debug, Parser)]
#[command(name = "rh-gateway", version)]
pub struct Cli {
    /// A TOML settings file; `RH_GATEWAY_*` variables override it.
    #[arg(long, global = true, env = "RH_GATEWAY_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the API (applies pending migrations first).
    Serve,
    /// Apply pending database migrations and exit.
    Migrate,
    /// Run the whole local stack: a private Postgres under ./.rh/ and the gateway.
    Dev {
        /// Where the gateway listens.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// Where the local stack keeps its data, secret and admin token.
        #[arg(long, default_value = ".rh")]
        dir: PathBuf,
    },
    /// Mint or revoke bearer tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Print the OpenAPI document.
    Openapi,
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Print a new token on stdout (its jti and expiry go to stderr).
    Create {
        /// The project the token can see.
        #[arg(long)]
        project: String,
        /// Comma-separated scopes: dispatch:read, dispatch:write, node, admin.
        #[arg(long, value_delimiter = ',', required = true)]
        scopes: Vec<String>,
        /// Who the token is for (the `sub` claim).
        #[arg(long, default_value = "cli")]
        sub: String,
        /// Lifetime, e.g. 90s, 15m, 12h, 30d.
        #[arg(long, default_value = "24h")]
        ttl: String,
    },
    /// Revoke a token by its jti; it is refused from then on.
    Revoke {
        /// The token's `jti` claim.
        jti: String,
        /// Why, for the record.
        #[arg(long)]
        reason: Option<String>,
    },
}

impl Cli {
    /// Runs the command and reports any error on stderr.
    pub fn run(self) -> ExitCode {
        let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
        match runtime.block_on(self.execute()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("error: {err:#}");
                ExitCode::FAILURE
            }
        }
    }

    async fn execute(self) -> anyhow::Result<()> {
        let mut settings = Settings::load(self.config.as_deref()).context("invalid settings")?;
        match self.command {
            Command::Dev { listen, dir } => {
                settings.listen = listen;
                crate::dev::run(settings, &dir).await
            }
            Command::Openapi => {
                println!("{}", crate::api::openapi().to_pretty_json()?);
                Ok(())
            }
            command => {
                apply_dev_fallback(&mut settings, Path::new(".rh"));
                crate::telemetry::init(&settings.log);
                match command {
                    Command::Serve => {
                        let app = Application::build(&settings).await?;
                        tracing::info!(address = %app.local_addr(), "serving");
                        app.run_until(shutdown_signal()).await
                    }
                    Command::Migrate => {
                        DataStore::connect_lazy(&settings.database)?.migrate().await?;
                        eprintln!("migrations applied");
                        Ok(())
                    }
                    Command::Token(TokenCommand::Create { project, scopes, sub, ttl }) => {
                        let scopes = scopes
                            .iter()
                            .map(|s| s.trim().parse::<Scope>())
                            .collect::<Result<Vec<_>, _>>()
                            .map_err(anyhow::Error::msg)?;
                        let ttl = parse_ttl(&ttl).map_err(anyhow::Error::msg)?;
                        let keys = Keys::from_settings(&settings.auth)?;
                        let (token, claims) = keys.mint(&sub, &project, &scopes, ttl)?;
                        println!("{token}");
                        eprintln!(
                            "jti {} expires {}",
                            claims.jti,
                            chrono::DateTime::from_timestamp(claims.exp, 0).unwrap_or_default()
                        );
                        Ok(())
                    }
                    Command::Token(TokenCommand::Revoke { jti, reason }) => {
                        let db = DataStore::connect_lazy(&settings.database)?;
                        db.token_revoke(&jti, reason.as_deref()).await?;
                        eprintln!("revoked {jti}");
                        Ok(())
                    }
                    Command::Dev { .. } | Command::Openapi => unreachable!("handled above"),
                }
            }
        }
    }
}

/// Lets `token create`/`token revoke`/`migrate` work against a running
/// `rh-gateway dev` stack in this folder without extra settings: unset
/// secrets and database URLs are taken from `.rh/`.
fn apply_dev_fallback(settings: &mut Settings, dir: &Path) {
    let read = |name: &str| std::fs::read_to_string(dir.join(name)).ok().map(|s| s.trim().to_owned());
    if settings.auth.hs256_secret.is_none() {
        if let Some(secret) = read(crate::dev::SECRET_FILE) {
            settings.auth.hs256_secret = Some(SecretString::from(secret));
        }
    }
    let url_is_set =
        std::env::var_os("DATABASE_URL").is_some() || std::env::var_os("RH_GATEWAY_DATABASE__URL").is_some();
    if !url_is_set {
        if let Some(url) = read(crate::dev::DATABASE_URL_FILE) {
            settings.database.url = SecretString::from(url);
        }
    }
}

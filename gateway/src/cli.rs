//! The `rh-gateway` command line.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use secrecy::SecretString;

use crate::auth::{parse_ttl, Keys, NodeBinding, Scope};
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
        /// Where the gateway listens (default: `listen` from the settings,
        /// i.e. `RH_GATEWAY_LISTEN` or 127.0.0.1:8080).
        #[arg(long)]
        listen: Option<SocketAddr>,
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
        /// For `--scopes node`: the one node the credential is, as CLUSTER/NAME.
        #[arg(long)]
        node: Option<String>,
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
        let url_is_set = Settings::sources(self.config.as_deref()).contains("database.url");
        match self.command {
            Command::Dev { listen, dir } => {
                if let Some(listen) = listen {
                    settings.listen = listen;
                }
                crate::dev::run(settings, url_is_set, &dir).await
            }
            Command::Openapi => {
                println!("{}", crate::api::openapi().to_pretty_json()?);
                Ok(())
            }
            command => {
                apply_dev_fallback(&mut settings, url_is_set, Path::new(".rh"));
                crate::telemetry::init(&settings.log);
                match command {
                    Command::Serve => {
                        let app = Application::build(&settings).await?;
                        tracing::info!(address = %app.local_addr(), "serving");
                        app.run_until(shutdown_signal()).await;
                        Ok(())
                    }
                    Command::Migrate => {
                        DataStore::connect_lazy(&settings.database)?.migrate().await?;
                        eprintln!("migrations applied");
                        Ok(())
                    }
                    Command::Token(TokenCommand::Create { project, scopes, sub, ttl, node }) => {
                        if !crate::auth::is_name(&project) {
                            anyhow::bail!("--project must be {}", crate::auth::NAME_RULE);
                        }
                        if sub.trim().is_empty() || sub.len() > 256 {
                            anyhow::bail!("--sub must be 1 to 256 characters");
                        }
                        let scopes = scopes
                            .iter()
                            .map(|s| s.trim().parse::<Scope>())
                            .collect::<Result<Vec<_>, _>>()
                            .map_err(anyhow::Error::msg)?;
                        let ttl = parse_ttl(&ttl).map_err(anyhow::Error::msg)?;
                        let keys = Keys::from_settings(&settings.auth)?;
                        let (token, claims) = match (scopes.contains(&Scope::Node), node) {
                            (true, Some(node)) if scopes.len() == 1 => {
                                let binding = node.parse::<NodeBinding>().map_err(anyhow::Error::msg)?;
                                keys.mint_node(&project, &binding, ttl, &uuid::Uuid::new_v4().to_string())?
                            }
                            (true, Some(_)) => anyhow::bail!("a node credential carries only the `node` scope"),
                            (true, None) => anyhow::bail!(
                                "a node credential is issued to one node: add --node CLUSTER/NAME \
                                 (or give the host a join token from POST /v1/clusters/{{name}}/join-tokens)"
                            ),
                            (false, Some(_)) => anyhow::bail!("--node needs --scopes node"),
                            (false, None) => keys.mint(&sub, &project, &scopes, ttl)?,
                        };
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
/// `rh-gateway dev` stack in this folder without extra settings: a secret and
/// a database URL that no file or variable set are taken from `.rh/`.
fn apply_dev_fallback(settings: &mut Settings, url_is_set: bool, dir: &Path) {
    let read = |name: &str| std::fs::read_to_string(dir.join(name)).ok().map(|s| s.trim().to_owned());
    if settings.auth.hs256_secret.is_none() {
        if let Some(secret) = read(crate::dev::SECRET_FILE) {
            settings.auth.hs256_secret = Some(SecretString::from(secret));
        }
    }
    if !url_is_set {
        if let Some(url) = read(crate::dev::DATABASE_URL_FILE) {
            settings.database.url = SecretString::from(url);
        }
    }
}

#[cfg(test)]
mod tests {
    use secrecy::ExposeSecret;

    use super::*;

    #[test]
    fn the_dev_fallback_fills_in_only_what_nobody_configured() {
        let dir = std::env::temp_dir().join(format!("rh-cli-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(crate::dev::DATABASE_URL_FILE), "postgres://dev/db\n").unwrap();
        std::fs::write(dir.join(crate::dev::SECRET_FILE), "s".repeat(64)).unwrap();
        let mut configured = Settings::default();
        configured.database.url = SecretString::from("postgres://file/db");
        apply_dev_fallback(&mut configured, true, &dir);
        assert_eq!(configured.database.url.expose_secret(), "postgres://file/db");
        assert!(configured.auth.hs256_secret.is_some());
        let mut unset = Settings::default();
        apply_dev_fallback(&mut unset, false, &dir);
        assert_eq!(unset.database.url.expose_secret(), "postgres://dev/db");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn dev_takes_its_listen_address_from_the_settings_unless_given() {
        let cli = Cli::try_parse_from(["rh-gateway", "dev"]).unwrap();
        assert!(matches!(cli.command, Command::Dev { listen: None, .. }));
        let cli = Cli::try_parse_from(["rh-gateway", "dev", "--listen", "127.0.0.1:9"]).unwrap();
        assert!(matches!(cli.command, Command::Dev { listen: Some(_), .. }));
    }
}

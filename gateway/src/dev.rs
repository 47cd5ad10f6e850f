//! `rh-gateway dev`: the whole local stack from one command.
//!
//! Starts a private Postgres under `./.rh/pg` (unless `DATABASE_URL` is set),
//! keeps a signing secret in `./.rh/jwt-secret`, serves the gateway on
//! loopback and writes an admin token for the `default` project to
//! `./.rh/admin-token`. Ctrl-C stops the gateway, then Postgres; the data stays.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use secrecy::{ExposeSecret, SecretString};
use sqlx::Connection;

use crate::auth::{Keys, Scope};
use crate::config::Settings;
use crate::embedded_pg::{write_private, EmbeddedPostgres, Options};
use crate::startup::{shutdown_signal, Application};

/// The file holding the local stack's HS256 secret.
pub const SECRET_FILE: &str = "jwt-secret";
/// The file holding the local stack's database URL.
pub const DATABASE_URL_FILE: &str = "database-url";
/// The file holding an admin token for the `default` project.
pub const ADMIN_TOKEN_FILE: &str = "admin-token";

const DATABASE: &str = "runhouse";

/// Runs the local stack until SIGTERM or Ctrl-C.
pub async fn run(mut settings: Settings, url_is_set: bool, dir: &Path) -> anyhow::Result<()> {
    crate::telemetry::init(&settings.log);
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;

    // A database URL from the settings file or the environment wins; else a private Postgres.
    let postgres = match url_is_set {
        true => None,
        false => {
            let pg = EmbeddedPostgres::start(&dir.join("pg"), Options { durable: true })?;
            let guard = StopOnDrop(pg);
            create_database_if_missing(&guard.0.url("postgres"), DATABASE).await?;
            settings.database.url = SecretString::from(guard.0.url(DATABASE));
            Some(guard)
        }
    };
    write_private(&dir.join(DATABASE_URL_FILE), settings.database.url.expose_secret().as_bytes())?;

    if settings.auth.hs256_secret.is_none() {
        settings.auth.hs256_secret = Some(SecretString::from(read_or_create_secret(&dir.join(SECRET_FILE))?));
    }
    let keys = Keys::from_settings(&settings.auth)?;
    let (token, claims) = keys.mint("dev-admin", "default", &[Scope::Admin], Duration::from_secs(30 * 86_400))?;
    let token_path = dir.join(ADMIN_TOKEN_FILE);
    write_private(&token_path, format!("{token}\n").as_bytes())?;

    // Every provider's bootstrap reaches this gateway on loopback.
    if settings.listen.port() == 0 {
        anyhow::bail!("`dev` needs a fixed port (the local nodes are told where to find the gateway)");
    }
    for (name, count) in [("cpu", 1), ("train", 1)] {
        settings.profiles.entry(name.to_owned()).or_insert_with(|| wire::ClusterSpec {
            provider: "local".into(),
            count,
            autostop_idle_minutes: Some(30.0),
            ..wire::ClusterSpec::default()
        });
    }
    let app = Application::build(&settings).await?;
    let address = app.local_addr();
    let has_node_binary = crate::compute::local::node_binary_path(&settings).is_some();
    if has_node_binary {
        app.app()
            .cluster_ensure(
                &crate::db::ClusterKey::new("default", "local"),
                &wire::ClusterSpec { provider: "local".into(), count: 1, ..Default::default() },
                "dev",
            )
            .await?;
    }
    let (login, _) = app.app().ui_link_create(&crate::auth::Caller::from(claims)).await?;
    println!("Runhouse Gateway is up.");
    println!("  Dashboard:    http://{address}{login}");
    println!("                (a one-time sign-in link for 5 minutes; `rh ui` prints another)");
    println!("  API:          http://{address}/v1");
    println!("  Docs:         http://{address}/docs");
    println!("  Admin token:  {} (project `default`)", token_path.display());
    println!("  {token}");
    if postgres.is_some() {
        println!("  Postgres:     {} (data in {})", settings.database.url.expose_secret(), dir.join("pg").display());
    }
    if has_node_binary {
        println!("  Clusters:     `local` (1 node, local-1), and on demand from profiles `cpu` and `train` (1 local node each, stopped after 30 idle minutes)");
    } else {
        println!("  Clusters:     none (rh-node is not built next to rh-gateway: `cargo build -p node`)");
    }
    println!("Press Ctrl-C to stop.");
    // Local nodes die with this process (they are started with a parent-death signal).
    app.run_until(shutdown_signal()).await;
    drop(postgres);
    Ok(())
}

/// Stops the embedded server however `run` ends.
struct StopOnDrop(EmbeddedPostgres);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        match self.0.stop() {
            Ok(()) => eprintln!("Postgres stopped; data kept."),
            Err(err) => eprintln!("could not stop Postgres: {err}"),
        }
    }
}

async fn create_database_if_missing(admin_url: &str, name: &str) -> anyhow::Result<()> {
    let mut conn = sqlx::PgConnection::connect(admin_url).await.context("cannot connect to the embedded Postgres")?;
    let exists =
        sqlx::query_scalar!("select exists(select 1 from pg_database where datname = $1) as \"exists!\"", name)
            .fetch_one(&mut conn)
            .await?;
    if !exists {
        // Identifiers cannot be bound as parameters; `name` is our constant.
        sqlx::raw_sql(&format!("create database {name}")).execute(&mut conn).await?;
    }
    Ok(())
}

fn read_or_create_secret(path: &Path) -> anyhow::Result<String> {
    if let Ok(secret) = std::fs::read_to_string(path) {
        return Ok(secret.trim().to_owned());
    }
    let bytes: [u8; 32] = rand::random();
    let secret = hex::encode(bytes);
    write_private(path, secret.as_bytes()).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(secret)
}

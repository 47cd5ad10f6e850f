//! Builds the application from settings, runs it, and shuts it down cleanly.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::api::{self, AppState};
use crate::app::App;
use crate::auth::{Keys, Revocations};
use crate::config::Settings;
use crate::db::DataStore;
use crate::metrics::Metrics;
use crate::notify::Notifier;

/// A gateway that has bound its port and is ready to run.
pub struct Application {
    listener: TcpListener,
    router: axum::Router,
    listener_task: JoinHandle<()>,
    shutdown: CancellationToken,
}

impl Application {
    /// Connects to the database, applies migrations, binds the listen address
    /// (port 0 picks a free port) and starts the notification listener.
    pub async fn build(settings: &Settings) -> anyhow::Result<Application> {
        let keys = Keys::from_settings(&settings.auth).context("invalid auth settings")?;
        let db = DataStore::connect_lazy(&settings.database).context("invalid database.url")?;
        db.migrate().await.context("cannot apply database migrations")?;
        let revocations = Revocations::default();
        revocations.replace(db.token_revoked_all().await.context("cannot load revoked tokens")?);
        let notifier = Notifier::default();
        let shutdown = CancellationToken::new();
        let listener_task =
            tokio::spawn(crate::listener::run(db.clone(), notifier.clone(), revocations.clone(), shutdown.clone()));
        let app = App { db, notifier, shutdown: shutdown.clone(), max_wait_s: settings.http.max_wait_s };
        let state = AppState { app, keys, revocations, metrics: Arc::new(Metrics::default()) };
        let router = api::router(state, settings.http.body_limit_bytes);
        let listener = TcpListener::bind(settings.listen)
            .await
            .with_context(|| format!("cannot listen on {}", settings.listen))?;
        Ok(Application { listener, router, listener_task, shutdown })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("a bound listener has an address")
    }

    /// Serves until `stop` resolves, then drains in-flight requests (long-polls
    /// return at once with the dispatch's current state) and stops background tasks.
    pub async fn run_until(self, stop: impl std::future::Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
        let shutdown = self.shutdown.clone();
        let serve = axum::serve(self.listener, self.router).with_graceful_shutdown(async move {
            stop.await;
            tracing::info!("shutting down");
            shutdown.cancel();
        });
        let result = serve.await.context("the HTTP server failed");
        self.shutdown.cancel();
        let _ = self.listener_task.await;
        result
    }
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = terminate => {}
    }
}

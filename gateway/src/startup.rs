//! Builds the application from settings, runs it, and shuts it down cleanly.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::serve::ListenerExt;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::api::{self, AppState, Shared};
use crate::app::group;
use crate::app::App;
use crate::auth::{Keys, Revocations};
use crate::background::{self, Statuses};
use crate::compute::Providers;
use crate::config::Settings;
use crate::db::DataStore;
use crate::metrics::Metrics;
use crate::node_client::NodeClient;
use crate::notify::{Notifier, Publisher};

/// A gateway that has bound its port and is ready to run.
pub struct Application {
    app: App,
    listener: TcpListener,
    router: axum::Router,
    tasks: Vec<JoinHandle<()>>,
    shutdown: CancellationToken,
    /// Releases the router kept for node links when the application is
    /// dropped, whether or not it ran.
    _link_router: ReleaseLinkRouter,
}

/// On drop, releases the router the state keeps for node links.
struct ReleaseLinkRouter(AppState);

impl Drop for ReleaseLinkRouter {
    fn drop(&mut self) {
        self.0.link_router.release();
    }
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
        let shutdown = CancellationToken::new();
        let (publisher, hints) = Publisher::new();
        let installation = db.installation_id().await.context("cannot read the installation id")?;
        let providers =
            Providers::from_settings(settings, installation).await.context("cannot set up compute providers")?;
        let artifacts = crate::artifact_store::ArtifactStore::open(&settings.artifacts, installation)
            .context("cannot open the artifact store")?;
        tracing::info!(store = %artifacts.url, "artifact store");
        let creates = group::Groups::start(group::Creates(db.clone()));
        let transitions = group::Groups::start(group::Transitions(db.clone()));
        let heartbeats = group::heartbeats(db.clone());
        let app = App {
            artifacts,
            provisioner: Arc::new(Notify::new()),
            orphan_sweep: Arc::new(Notify::new()),
            scheduler: Arc::new(Notify::new()),
            providers,
            publisher,
            db,
            notifier: Notifier::default(),
            log_notifier: Notifier::default(),
            nodes: NodeClient::default(),
            creates,
            transitions,
            heartbeats,
            placement: Arc::new(Notify::new()),
            bundles_seen: Arc::default(),
            node_ids: Arc::default(),
            queued_clusters: Arc::default(),
            cache_locks: Default::default(),
            shutdown: shutdown.clone(),
            settings: Arc::new(settings.clone()),
        };
        let statuses = Statuses::default();
        let tasks = vec![
            tokio::spawn(crate::listener::run(app.clone(), revocations.clone(), shutdown.clone())),
            tokio::spawn(crate::listener::peers_run(app.clone(), shutdown.clone())),
            tokio::spawn(crate::notify::run_publisher(app.db.clone(), hints, shutdown.clone())),
            spawn_step(
                "placement",
                Duration::from_secs(1),
                app.placement.clone(),
                &app,
                &shutdown,
                &statuses,
                |app| async move { app.placement_step().await },
            ),
            spawn_step(
                "slot_vacuum",
                Duration::from_secs(5),
                Arc::new(Notify::new()),
                &app,
                &shutdown,
                &statuses,
                |app| async move { app.slot_vacuum_step().await },
            ),
            spawn_step(
                "link_liveness",
                Duration::from_secs(settings.nodes.heartbeat_interval_s.max(1).into()),
                Arc::new(Notify::new()),
                &app,
                &shutdown,
                &statuses,
                |app| async move { app.link_liveness_step().await },
            ),
            spawn_step(
                "node_reaper",
                Duration::from_secs(2),
                Arc::new(Notify::new()),
                &app,
                &shutdown,
                &statuses,
                |app| async move { app.node_reaper_step().await },
            ),
            spawn_step(
                "provisioner",
                Duration::from_secs(settings.compute.reconcile_interval_s.max(1).into()),
                app.provisioner.clone(),
                &app,
                &shutdown,
                &statuses,
                |app| async move { app.provision_step().await },
            ),
            spawn_step(
                "orphan_sweep",
                Duration::from_secs(settings.compute.orphan_sweep_interval_s.max(1).into()),
                app.orphan_sweep.clone(),
                &app,
                &shutdown,
                &statuses,
                |app| async move { app.orphan_sweep_step().await },
            ),
            // Four times a second, and at each due instant (the step sets a timer).
            spawn_step(
                "schedule_firer",
                crate::app::schedule::FIRER_PERIOD,
                app.scheduler.clone(),
                &app,
                &shutdown,
                &statuses,
                |app| async move { app.schedule_fire_step().await },
            ),
            spawn_step(
                "objects",
                Duration::from_secs(1),
                Arc::new(Notify::new()),
                &app,
                &shutdown,
                &statuses,
                |app| async move { app.object_step().await },
            ),
            spawn_step(
                "cache_repair",
                Duration::from_secs(2),
                Arc::new(Notify::new()),
                &app,
                &shutdown,
                &statuses,
                |app| async move { app.cache_repair_step().await },
            ),
            spawn_step(
                "cancel_repair",
                Duration::from_secs(2),
                Arc::new(Notify::new()),
                &app,
                &shutdown,
                &statuses,
                |app| async move { app.cancel_repair_step().await },
            ),
        ];
        let state = AppState::new(Shared {
            app: app.clone(),
            keys,
            revocations,
            metrics: Arc::new(Metrics::default()),
            statuses,
            link_router: Default::default(),
        });
        let router = api::router(state.clone());
        state.link_router.keep(router.clone());
        let listener = TcpListener::bind(settings.listen)
            .await
            .with_context(|| format!("cannot listen on {}", settings.listen))?;
        Ok(Application { app, listener, router, tasks, shutdown, _link_router: ReleaseLinkRouter(state) })
    }

    /// The application's use cases (for `dev`, which sets up its clusters).
    pub fn app(&self) -> &App {
        &self.app
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("a bound listener has an address")
    }

    /// Serves until `stop` resolves, then drains in-flight requests (long-polls
    /// return at once with the dispatch's current state) and stops background tasks.
    pub async fn run_until(self, stop: impl Future<Output = ()> + Send + 'static) {
        let shutdown = self.shutdown.clone();
        let max_streams = self.app.settings.http.max_streams_per_connection;
        let serve = serve(self.listener, self.router, max_streams, async move {
            stop.await;
            tracing::info!("shutting down");
            shutdown.cancel();
        });
        serve.await;
        self.shutdown.cancel();
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

/// Serves HTTP/1.1 and HTTP/2 (cleartext, by prior knowledge) on `listener`
/// until `stop` resolves, then lets every open request finish.
///
/// HTTP/2 is for long-lived requests: hyper gives each HTTP/1 connection an
/// 8 KiB read and an 8 KiB header buffer for as long as it is open, ~15 KiB a
/// parked long-poll, while a stream of an HTTP/2 connection costs ~1.2 KiB
/// (measured on a bare server with 10,000 parked), so the SDK sends its waits
/// over one HTTP/2 connection. Short requests stay on HTTP/1, where a round
/// trip on loopback measured ~60 µs less. One connection may hold
/// `max_streams` requests at once; more wait in the client.
pub async fn serve(
    listener: TcpListener,
    router: axum::Router,
    max_streams: std::num::NonZeroU32,
    stop: impl Future<Output = ()>,
) {
    use axum::serve::Listener;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use hyper_util::server::conn::auto;
    use tower::ServiceExt;

    // Small request/response pairs must not wait on Nagle's algorithm.
    let mut listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http2().max_concurrent_streams(max_streams.get());
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut stop = std::pin::pin!(stop);
    loop {
        // `accept` waits out errors such as running out of file descriptors.
        let (io, _) = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut stop => break,
        };
        // Cloning the router shares it (an `Arc`); nothing is rebuilt per connection.
        let service = router
            .clone()
            .map_request(|request: axum::http::Request<hyper::body::Incoming>| request.map(axum::body::Body::new));
        let connection = builder
            .serve_connection_with_upgrades(TokioIo::new(io), hyper_util::service::TowerToHyperService::new(service));
        let connection = graceful.watch(connection.into_owned());
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::trace!(error = %err, "a connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// Runs `step(app)` as a background task every `period` and when `activator` fires.
fn spawn_step<F, Fut>(
    name: &'static str,
    period: Duration,
    activator: Arc<Notify>,
    app: &App,
    shutdown: &CancellationToken,
    statuses: &Statuses,
    step: F,
) -> JoinHandle<()>
where
    F: Fn(App) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = crate::Result<serde_json::Value>> + Send,
{
    let app = app.clone();
    background::spawn(name, period, activator, shutdown.clone(), statuses.clone(), move || step(app.clone()))
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

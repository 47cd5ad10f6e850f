//! The gateway's one `LISTEN` connection: dispatch state changes and token
//! revocations, from this replica or any other, and calls and cancels other
//! replicas relay to this one for the nodes whose links it holds.
//!
//! Notifications are wake-up hints, never the source of truth: after a
//! reconnect (when some may have been lost) every waiter is woken to re-read
//! its dispatch, and the revocation list is reloaded from its table.
//!
//! The listening connection also tells replicas about each other: it names
//! itself after its replica (`application_name`) and announces itself on
//! `gateway_hello` when it connects, so running replicas start sending hints
//! at once; [`peers_run`] counts the other listeners every few seconds, so a
//! replica that left stops costing anything. A lone gateway sends no hints.

use std::time::Duration;

use sqlx::postgres::PgListener;
use tokio_util::sync::CancellationToken;

use crate::app::App;
use crate::auth::Revocations;
use crate::notify::Channel;

const TOKEN_CHANNEL: &str = "token_revoked";
const HELLO_CHANNEL: &str = "gateway_hello";
/// How often the other listeners are counted.
const PEER_CHECK: Duration = Duration::from_secs(5);

/// Counts the other replicas' listeners every few seconds, until `shutdown`.
/// Until the first count answers, hints are sent as if peers listened.
pub async fn peers_run(app: App, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(PEER_CHECK);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        match app.db.listener_peers(app.publisher.replica()).await {
            Ok(peers) => app.publisher.set_peers(peers > 0),
            Err(err) => tracing::warn!(error = %err, "cannot count the other gateway replicas"),
        }
    }
}

/// Runs until `shutdown`, reconnecting with a short backoff when Postgres goes away.
pub async fn run(app: App, revocations: Revocations, shutdown: CancellationToken) {
    loop {
        let session = listen(&app, &revocations);
        tokio::select! {
            _ = shutdown.cancelled() => return,
            result = session => {
                if let Err(err) = result {
                    tracing::warn!(error = %err, "notification listener lost its connection; reconnecting");
                }
            }
        }
        // Anything may have changed while we were not listening.
        app.notifier.notify_all();
        app.log_notifier.notify_all();
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}

async fn listen(app: &App, revocations: &Revocations) -> Result<(), sqlx::Error> {
    let mut listener = PgListener::connect_with(app.db.pool()).await?;
    listener.ignore_pool_close_event(true);
    app.db.listener_name(&mut listener, app.publisher.replica()).await?;
    listener.listen_all(Channel::ALL.iter().map(|c| c.name()).chain([TOKEN_CHANNEL, HELLO_CHANNEL])).await?;
    app.db.listener_hello(HELLO_CHANNEL, app.publisher.replica()).await?;
    // Listening first, then loading, so no revocation can fall between the two.
    match app.db.token_revoked_all().await {
        Ok(all) => revocations.replace(all),
        Err(err) => tracing::warn!(error = ?err, "cannot load the token revocation list"),
    }
    app.notifier.notify_all();
    app.log_notifier.notify_all();
    loop {
        // `try_recv` returns Ok(None) when the connection dropped.
        let Some(notification) = listener.try_recv().await? else {
            return Ok(());
        };
        let payload = notification.payload();
        match notification.channel() {
            TOKEN_CHANNEL => revocations.insert(payload.to_owned()),
            HELLO_CHANNEL if payload != app.publisher.replica().to_string() => app.publisher.set_peers(true),
            name => match Channel::named(name) {
                // Hints this replica sent are skipped: it woke its own waiters already.
                Some(Channel::DispatchState) => {
                    if let Some(id) = app.publisher.foreign_hint(payload) {
                        app.notifier.notify(id, None);
                    }
                }
                Some(Channel::DispatchLog) => {
                    if let Some(id) = app.publisher.foreign_hint(payload) {
                        app.log_notifier.notify(id, None);
                    }
                }
                // Relays name the replica holding the node's link: only it acts.
                Some(Channel::RelayCall) => {
                    if let Some(id) = app.publisher.relay_for_me(payload) {
                        let app = app.clone();
                        tokio::spawn(async move { app.relay_call(id).await });
                    }
                }
                Some(Channel::RelayCancel) => {
                    if let Some(id) = app.publisher.relay_for_me(payload) {
                        let app = app.clone();
                        tokio::spawn(async move { app.relay_cancel(id).await });
                    }
                }
                None => {}
            },
        }
    }
}

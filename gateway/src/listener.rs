//! The gateway's one `LISTEN` connection: dispatch state changes and token
//! revocations, from this replica or any other.
//!
//! Notifications are wake-up hints, never the source of truth: after a
//! reconnect (when some may have been lost) every waiter is woken to re-read
//! its dispatch, and the revocation list is reloaded from its table.

use std::time::Duration;

use sqlx::postgres::PgListener;
use tokio_util::sync::CancellationToken;

use crate::app::App;
use crate::auth::Revocations;

const DISPATCH_CHANNEL: &str = "dispatch_state";
const LOG_CHANNEL: &str = "dispatch_log";
const TOKEN_CHANNEL: &str = "token_revoked";

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
    listener.listen_all([DISPATCH_CHANNEL, LOG_CHANNEL, TOKEN_CHANNEL]).await?;
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
        match notification.channel() {
            // Hints this replica sent are skipped: it woke its own waiters already.
            DISPATCH_CHANNEL => {
                if let Some(id) = app.publisher.foreign_hint(notification.payload()) {
                    app.notifier.notify(id, None);
                }
            }
            LOG_CHANNEL => {
                if let Some(id) = app.publisher.foreign_hint(notification.payload()) {
                    app.log_notifier.notify(id, None);
                }
            }
            TOKEN_CHANNEL => revocations.insert(notification.payload().to_owned()),
            _ => {}
        }
    }
}

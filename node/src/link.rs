//! The node's end of its link to the gateway (the protocol is the `link`
//! crate's): opened once the node is registered, on the replica in use, and
//! opened again whenever it drops. Calls and cancels arrive over it and run
//! through the node API's own router, signature check included; heartbeats,
//! reports and output leave over it (see [`crate::gateway`]).
//!
//! Each time the link opens, `opened` is notified so the node heartbeats at
//! once: the gateway then reconciles what it believes runs here with what
//! does, by the heartbeat's rules, before anything else happens on the link.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use link::{Handler, Peer, Timing};
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::{self, http::StatusCode};

use crate::gateway::GatewayClient;

/// Longest pause between attempts to open the link.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(5);
/// How long the link may stay silent before the node closes it, given the
/// gateway's heartbeat interval (it pings the link that often): five missed
/// pings, and never under 10 s. A replica whose machine vanished leaves the
/// connection open but silent; this is how the node notices and fails over,
/// rather than when a request over it times out.
pub fn idle_limit(heartbeat_every: Duration) -> Duration {
    (heartbeat_every * 5).max(Duration::from_secs(10))
}

/// Keeps the link open for as long as the node runs; it is closed after
/// `idle` with nothing from the gateway (see [`idle_limit`]).
pub async fn run(
    gateway: GatewayClient,
    node_id: Arc<RwLock<Option<wire::NodeId>>>,
    router: axum::Router,
    opened: Arc<Notify>,
    idle: Duration,
) {
    let mut delay = Duration::from_millis(100);
    loop {
        let id = *node_id.read().expect("lock poisoned");
        let base = gateway.base().to_owned();
        match id.map(|id| link::client::connect(&base, id, gateway.token())) {
            None => {}
            Some(connecting) => match connecting.await {
                Ok(socket) => {
                    delay = Duration::from_millis(100);
                    let (peer, outgoing) = Peer::new();
                    gateway.set_link(peer.clone());
                    tracing::info!(gateway = %base, "link open");
                    opened.notify_one();
                    let handler = Handler { router: router.clone(), token: None };
                    link::client::run(socket, peer.clone(), outgoing, handler, Timing { idle, ping_every: None }).await;
                    gateway.clear_link(&peer);
                    tracing::warn!(gateway = %base, "link dropped; opening it again");
                }
                // The gateway answered but will not open a link: it does not
                // know this node (yet), or predates links. HTTP still works.
                Err(tungstenite::Error::Http(response)) if response.status().is_client_error() => {
                    tracing::debug!(gateway = %base, status = %response.status(), "the gateway refused the link");
                    delay = MAX_RETRY_DELAY;
                }
                Err(tungstenite::Error::Http(response)) if response.status() != StatusCode::SERVICE_UNAVAILABLE => {
                    tracing::debug!(gateway = %base, status = %response.status(), "cannot open the link");
                    gateway.fail_over(&base);
                }
                Err(err) => {
                    tracing::debug!(gateway = %base, error = %err, "cannot open the link");
                    gateway.fail_over(&base);
                }
            },
        }
        tokio::time::sleep(delay + Duration::from_millis(rand::random::<u64>() % 50)).await;
        delay = (delay * 2).min(MAX_RETRY_DELAY);
    }
}

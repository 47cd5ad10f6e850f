//! The node links this replica holds: each node keeps one WebSocket open to
//! the replica it talks to (`GET /v1/nodes/{id}/link`; the protocol is the
//! `link` crate's). The node's requests over it run through this replica's
//! own router, presenting the token the node opened the link with, so every
//! check an HTTP request gets still applies, a revoked token included.
//!
//! Each replica records in the node's row that it holds the link
//! (`node.link_replica`, migration 0020). A replica that places a call, or a
//! cancel, on a node linked to another replica sends it to that replica,
//! which sends it over the link (`App::relay_call`); only a node no replica
//! holds a link to (one running without its link, or between links) is
//! reached over HTTP; see [`crate::node_client::NodeClient`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket};
use futures::{SinkExt, StreamExt};
use link::{Handler, Inbound, Outbound, Peer, Timing};
use uuid::Uuid;

use crate::api::AppState;

/// The open links, by node id, and what they carried.
#[derive(Default)]
pub struct Links {
    open: Mutex<HashMap<Uuid, Arc<Peer>>>,
    /// Requests sent to nodes over a link.
    pub sent: AtomicU64,
    /// Requests nodes sent over a link.
    pub received: AtomicU64,
}

impl Links {
    /// The open link to `node_id`, if this replica holds one.
    pub fn get(&self, node_id: Uuid) -> Option<Arc<Peer>> {
        self.open.lock().expect("links lock poisoned").get(&node_id).filter(|p| !p.is_closed()).cloned()
    }

    /// Each open link's node and how long since it last heard from the node
    /// (a pong to the replica's ping, or any request): the node's liveness,
    /// written for all of them at once by the liveness step
    /// (`App::link_liveness_step`).
    pub fn silences(&self) -> Vec<(Uuid, Duration)> {
        let open = self.open.lock().expect("links lock poisoned");
        open.iter().filter(|(_, peer)| !peer.is_closed()).map(|(id, peer)| (*id, peer.silent_for())).collect()
    }

    /// How many links are open.
    pub fn count(&self) -> usize {
        self.open.lock().expect("links lock poisoned").len()
    }

    /// Keeps `peer` as `node_id`'s link; a link it replaces is closed (the
    /// node reconnected before this replica noticed the old one drop).
    fn insert(&self, node_id: Uuid, peer: Arc<Peer>) {
        if let Some(old) = self.open.lock().expect("links lock poisoned").insert(node_id, peer) {
            old.close();
        }
    }

    /// Forgets `peer`, unless a newer link to the node replaced it already;
    /// true if it did.
    fn remove(&self, node_id: Uuid, peer: &Arc<Peer>) -> bool {
        let mut open = self.open.lock().expect("links lock poisoned");
        let current = open.get(&node_id).is_some_and(|p| Arc::ptr_eq(p, peer));
        if current {
            open.remove(&node_id);
        }
        current
    }
}

/// Serves node `node_id`'s link until it drops. `token` is the credential the
/// node opened it with (checked already, and again with each request).
pub async fn serve(state: AppState, node_id: Uuid, token: String, socket: WebSocket) {
    let links = state.app.nodes.links.clone();
    let (peer, outgoing) = Peer::new();
    links.insert(node_id, peer.clone());
    tracing::info!(%node_id, "node link open");
    // Other replicas send this node's calls and cancels through this one.
    let replica = state.app.publisher.replica();
    if let Err(err) = state.app.db.node_link_held(node_id, replica).await {
        tracing::warn!(%node_id, error = %err, "cannot record which replica holds a node's link");
    }
    // Pinged every heartbeat interval: the pongs show the node alive (see
    // [`Links::silences`]), and silence for as long as makes a node lost means
    // the link is dead.
    let nodes = &state.app.settings.nodes;
    let timing = Timing {
        idle: Duration::from_secs(nodes.lost_after_s.max(1).into()),
        ping_every: Some(Duration::from_secs(nodes.heartbeat_interval_s.max(1).into())),
    };
    let router = state.link_router();
    let (sink, stream) = socket.split();
    let counted = links.clone();
    let incoming = stream
        .scan((), |(), message| {
            futures::future::ready(match message {
                Ok(Message::Close(_)) | Err(_) => None,
                Ok(message) => Some(message),
            })
        })
        .filter_map(move |message| {
            futures::future::ready(match message {
                Message::Text(text) => {
                    counted.received.fetch_add(1, Ordering::Relaxed);
                    Some(Inbound::Frame(text.as_str().to_owned()))
                }
                Message::Ping(_) | Message::Pong(_) => Some(Inbound::Alive),
                _ => None,
            })
        });
    let sink = sink.with(|out: Outbound| {
        futures::future::ready(Ok::<_, axum::Error>(match out {
            Outbound::Frame(text) => Message::Text(text.into()),
            Outbound::Ping => Message::Ping(Default::default()),
        }))
    });
    link::drive(
        peer.clone(),
        outgoing,
        Box::pin(incoming),
        Box::pin(sink),
        Handler { router, token: Some(token) },
        timing,
    )
    .await;
    if links.remove(node_id, &peer) {
        if let Err(err) = state.app.db.node_link_released(node_id, replica).await {
            tracing::warn!(%node_id, error = %err, "cannot record that a node's link closed");
        }
    }
    tracing::info!(%node_id, "node link closed");
}

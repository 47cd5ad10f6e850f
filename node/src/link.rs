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

use futures::{SinkExt, StreamExt};
use link::{Handler, Peer};
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{header, HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};

use crate::gateway::GatewayClient;

/// Longest pause between attempts to open the link.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(5);
/// The gateway sends only when it has work; a dead link shows as a failed
/// heartbeat (which closes it), not as silence.
const IDLE: Duration = Duration::from_secs(24 * 3600);

/// Keeps the link open for as long as the node runs.
pub async fn run(
    gateway: GatewayClient,
    node_id: Arc<RwLock<Option<wire::NodeId>>>,
    router: axum::Router,
    opened: Arc<Notify>,
) {
    let mut delay = Duration::from_millis(100);
    loop {
        let id = *node_id.read().expect("lock poisoned");
        let base = gateway.base().to_owned();
        match id.map(|id| connect(&base, id, gateway.token())) {
            None => {}
            Some(connecting) => match connecting.await {
                Ok(socket) => {
                    delay = Duration::from_millis(100);
                    let (peer, outgoing) = Peer::new();
                    gateway.set_link(peer.clone());
                    tracing::info!(gateway = %base, "link open");
                    opened.notify_one();
                    let (sink, stream) = socket.split();
                    let incoming = stream
                        .scan((), |(), message| {
                            futures::future::ready(match message {
                                Ok(Message::Close(_)) | Err(_) => None,
                                Ok(message) => Some(message),
                            })
                        })
                        .filter_map(|message| {
                            futures::future::ready(match message {
                                Message::Text(text) => Some(text.as_str().to_owned()),
                                _ => None,
                            })
                        });
                    let sink = sink.with(|text: String| {
                        futures::future::ready(Ok::<_, tungstenite::Error>(Message::Text(text.into())))
                    });
                    let handler = Handler { router: router.clone(), token: None };
                    link::drive(peer.clone(), outgoing, Box::pin(incoming), Box::pin(sink), handler, IDLE).await;
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

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens the link to `base` (`http://…`; `https://` becomes `wss://`).
async fn connect(base: &str, id: wire::NodeId, token: &str) -> Result<Socket, tungstenite::Error> {
    let ws_base = match base.split_once("://") {
        Some(("https", rest)) => format!("wss://{rest}"),
        Some((_, rest)) => format!("ws://{rest}"),
        None => format!("ws://{base}"),
    };
    let mut request = format!("{ws_base}/v1/nodes/{id}/link").into_client_request()?;
    let bearer = HeaderValue::from_str(&format!("Bearer {token}"))
        .map_err(|e| tungstenite::Error::HttpFormat(tungstenite::http::Error::from(e)))?;
    request.headers_mut().insert(header::AUTHORIZATION, bearer);
    let config = WebSocketConfig::default()
        .max_message_size(Some(link::MAX_MESSAGE_BYTES))
        .max_frame_size(Some(link::MAX_MESSAGE_BYTES));
    let connecting = tokio_tungstenite::connect_async_with_config(request, Some(config), true);
    let (socket, _) = tokio::time::timeout(Duration::from_secs(10), connecting)
        .await
        .map_err(|_| tungstenite::Error::Io(std::io::ErrorKind::TimedOut.into()))??;
    Ok(socket)
}

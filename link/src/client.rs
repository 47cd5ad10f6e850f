//! The opening end of a link, over WebSocket: how a node daemon (or anything
//! speaking for one, like the benchmark's simulated nodes) connects to its
//! gateway and runs the connection.

use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{header, HeaderValue};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};

use crate::{drive, Handler, Inbound, Outbound, Peer, Timing, MAX_MESSAGE_BYTES, READ_BUFFER_BYTES};

/// An open link's connection.
pub type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// How long opening the connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Opens the link of node `node_id` to the gateway at `base` (`http://…`;
/// `https://` becomes `wss://`), presenting the node's credential.
pub async fn connect(base: &str, node_id: impl std::fmt::Display, token: &str) -> Result<Socket, tungstenite::Error> {
    let ws_base = match base.split_once("://") {
        Some(("https", rest)) => format!("wss://{rest}"),
        Some((_, rest)) => format!("ws://{rest}"),
        None => format!("ws://{base}"),
    };
    let mut request = format!("{ws_base}/v1/nodes/{node_id}/link").into_client_request()?;
    let bearer = HeaderValue::from_str(&format!("Bearer {token}"))
        .map_err(|e| tungstenite::Error::HttpFormat(tungstenite::http::Error::from(e)))?;
    request.headers_mut().insert(header::AUTHORIZATION, bearer);
    let config = WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER_BYTES)
        .max_message_size(Some(MAX_MESSAGE_BYTES))
        .max_frame_size(Some(MAX_MESSAGE_BYTES));
    let connecting = tokio_tungstenite::connect_async_with_config(request, Some(config), true);
    let (socket, _) = tokio::time::timeout(CONNECT_TIMEOUT, connecting)
        .await
        .map_err(|_| tungstenite::Error::Io(std::io::ErrorKind::TimedOut.into()))??;
    Ok(socket)
}

/// Runs an open connection as `peer`'s link until it drops (see [`drive`]):
/// text messages are frames, pings and pongs show the other end alive (the
/// WebSocket answers pings by itself), a close or an error ends it.
pub async fn run(socket: Socket, peer: Arc<Peer>, outgoing: mpsc::Receiver<String>, handler: Handler, timing: Timing) {
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
                Message::Text(text) => Some(Inbound::Frame(text.as_str().to_owned())),
                Message::Ping(_) | Message::Pong(_) => Some(Inbound::Alive),
                _ => None,
            })
        });
    let sink = sink.with(|out: Outbound| {
        futures::future::ready(Ok::<_, tungstenite::Error>(match out {
            Outbound::Frame(text) => Message::Text(text.into()),
            Outbound::Ping => Message::Ping(Default::default()),
        }))
    });
    drive(peer, outgoing, Box::pin(incoming), Box::pin(sink), handler, timing).await;
}

//! The node link: one long-lived WebSocket between a node daemon and the
//! gateway replica it talks to.
//!
//! Either end sends requests over it and answers the other's. A request names
//! a method and path of the receiver's own HTTP API and is answered by running
//! it through the receiver's router, so a call over the link is authenticated,
//! validated and answered exactly like the same call over HTTP. What the link
//! removes is per-message cost: a pooled connection checkout, HTTP framing on
//! both ends, and, gateway → node, a connection the node had to accept.
//!
//! Over it the gateway sends placements and cancels (`POST /calls`,
//! `POST /calls/{id}/cancel`), and the node sends heartbeats, reports, output
//! batches and run records (the same `/v1/...` routes it would call).
//!
//! Dropping the link changes no recorded state: a request in flight fails as
//! [`LinkError::Lost`] (its outcome unknown, as with an HTTP request whose
//! connection broke), and the callers' existing rules settle it: the node
//! retries reports until acknowledged, and the heartbeat sent on reconnect
//! reconciles what each side believes is running.
//!
//! Messages are JSON text, one [`Frame`] each. The accepting end (the
//! gateway) also pings on a period; the WebSocket answers pings by itself, so
//! a pong or any other message shows the other end alive ([`Peer::silent_for`]),
//! and a link silent for longer than its idle limit is closed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, HeaderValue, Method, Request};
use axum::Router;
use futures::{Sink, SinkExt, Stream, StreamExt};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

#[cfg(feature = "client")]
pub mod client;

/// The largest message either end sends or takes (a report carries a result
/// and the call's last output; the receiving router applies its own limits).
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024 * 1024;

/// How much a link reads at a time, which is also its read buffer's starting
/// size. tungstenite zeroes up to this much of the buffer before every read
/// and starts each link with a buffer this size; its default, 128 KiB, cost
/// the gateway a memset of 128 KiB per message read (~8 % of its CPU placing
/// on 1,000 nodes) and ~120 KiB per linked node. Link messages are mostly
/// under 1 KiB; a larger one grows the buffer to its size.
pub const READ_BUFFER_BYTES: usize = 8 * 1024;

/// One message on the link.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Frame {
    /// A call of the receiver's API, answered by a `response` with its `seq`.
    Request {
        seq: u64,
        method: String,
        path: String,
        /// The bearer token to present (gateway → node: a JWT the gateway
        /// signs per request; node → gateway: none, the gateway presents the
        /// token the node opened the link with).
        #[serde(default)]
        token: Option<String>,
        #[serde(default)]
        body: Option<Box<RawValue>>,
    },
    /// The answer to request `seq`: its HTTP status and body.
    Response { seq: u64, status: u16, body: String },
}

/// What [`Frame::Request`] serializes from, borrowing its body.
#[derive(Serialize)]
#[serde(rename_all = "snake_case")]
enum RequestOut<'a, T> {
    Request {
        seq: u64,
        method: &'a str,
        path: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        token: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        body: Option<&'a T>,
    },
}

#[derive(Serialize)]
#[serde(rename_all = "snake_case")]
enum ResponseOut<'a> {
    Response { seq: u64, status: u16, body: &'a str },
}

/// An answer from the other end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    pub body: String,
}

impl Answer {
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// Why a request over the link has no answer.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LinkError {
    /// The link was closed before the request was sent: it certainly did not arrive.
    #[error("the link is closed")]
    Closed,
    /// The link dropped after the request was sent: it may or may not have been carried out.
    #[error("the link dropped before an answer came")]
    Lost,
    /// No answer in time; the request may or may not have been carried out.
    #[error("no answer within {0:?}")]
    TimedOut(Duration),
}

/// What arrives on a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inbound {
    /// A text message: one [`Frame`].
    Frame(String),
    /// A control message (a ping or a pong): the other end is alive.
    Alive,
}

/// What a link sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outbound {
    /// A text message: one frame.
    Frame(String),
    /// A ping, which the other end's WebSocket answers with a pong.
    Ping,
}

/// How [`drive`] watches a link.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// Close the link when nothing arrives for this long.
    pub idle: Duration,
    /// Ping the other end this often (the accepting end does, so its links
    /// show their nodes alive without a request), or never.
    pub ping_every: Option<Duration>,
}

/// One end of a link: sends requests and matches their answers.
pub struct Peer {
    out: mpsc::Sender<String>,
    pending: Mutex<HashMap<u64, oneshot::Sender<Answer>>>,
    next_seq: AtomicU64,
    closed: CancellationToken,
    /// When this end was made, on the monotonic clock.
    opened: tokio::time::Instant,
    /// When the other end last sent anything, in ms after `opened`.
    last_seen_ms: AtomicU64,
}

/// Messages queued for sending before a sender waits.
const OUTGOING_QUEUE: usize = 1024;

impl Peer {
    /// A new end, and the queue [`drive`] sends from.
    pub fn new() -> (Arc<Peer>, mpsc::Receiver<String>) {
        let (out, outgoing) = mpsc::channel(OUTGOING_QUEUE);
        let peer = Peer {
            out,
            pending: Mutex::default(),
            next_seq: AtomicU64::new(1),
            closed: CancellationToken::new(),
            opened: tokio::time::Instant::now(),
            last_seen_ms: AtomicU64::new(0),
        };
        (Arc::new(peer), outgoing)
    }

    /// Sends `method path` with `body` and waits up to `timeout` for the answer.
    pub async fn request<T: Serialize>(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&T>,
        timeout: Duration,
    ) -> Result<Answer, LinkError> {
        if self.closed.is_cancelled() {
            return Err(LinkError::Closed);
        }
        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        let text = serde_json::to_string(&RequestOut::Request { seq, method, path, token, body })
            .expect("a request body serializes");
        let (answer, answered) = oneshot::channel();
        self.pending.lock().expect("link lock poisoned").insert(seq, answer);
        if self.out.send(text).await.is_err() {
            self.pending.lock().expect("link lock poisoned").remove(&seq);
            return Err(LinkError::Closed);
        }
        match tokio::time::timeout(timeout, answered).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(_)) => Err(LinkError::Lost),
            Err(_) => {
                self.pending.lock().expect("link lock poisoned").remove(&seq);
                Err(LinkError::TimedOut(timeout))
            }
        }
    }

    /// Closes the link: [`drive`] returns, and requests in flight fail as `Lost`.
    pub fn close(&self) {
        self.closed.cancel();
    }

    /// Whether the link was closed.
    pub fn is_closed(&self) -> bool {
        self.closed.is_cancelled()
    }

    /// How long since the other end last sent anything (a frame, a ping or
    /// a pong), or since the link opened if it has sent nothing yet.
    pub fn silent_for(&self) -> Duration {
        self.opened.elapsed().saturating_sub(Duration::from_millis(self.last_seen_ms.load(Ordering::Relaxed)))
    }

    fn heard(&self) {
        self.last_seen_ms.store(self.opened.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    fn answer(&self, seq: u64, answer: Answer) {
        if let Some(waiter) = self.pending.lock().expect("link lock poisoned").remove(&seq) {
            let _ = waiter.send(answer);
        }
    }
}

/// How [`drive`] runs incoming requests.
#[derive(Clone)]
pub struct Handler {
    /// The API that answers the other end's requests.
    pub router: Router,
    /// The token presented for every incoming request, whatever the frame
    /// says (the gateway: the token the node opened the link with). `None`:
    /// the frame's own token.
    pub token: Option<String>,
}

/// Runs one connection until it drops, the other end goes quiet for
/// `timing.idle`, or [`Peer::close`]: sends what `outgoing` holds (and pings,
/// if `timing` says), answers incoming requests through `handler` (each in
/// its own task), and hands answers to their waiters.
pub async fn drive<I, O>(
    peer: Arc<Peer>,
    mut outgoing: mpsc::Receiver<String>,
    mut incoming: I,
    mut sink: O,
    handler: Handler,
    timing: Timing,
) where
    I: Stream<Item = Inbound> + Unpin,
    O: Sink<Outbound> + Unpin,
{
    let mut pings = timing.ping_every.map(|every| {
        let mut pings = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        pings.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        pings
    });
    loop {
        tokio::select! {
            _ = peer.closed.cancelled() => break,
            text = outgoing.recv() => match text {
                Some(text) => if sink.send(Outbound::Frame(text)).await.is_err() { break },
                None => break,
            },
            _ = async { pings.as_mut().expect("guarded").tick().await }, if pings.is_some() => {
                if sink.send(Outbound::Ping).await.is_err() { break }
            }
            message = tokio::time::timeout(timing.idle, incoming.next()) => match message {
                Ok(Some(message)) => {
                    peer.heard();
                    if let Inbound::Frame(text) = message {
                        receive(&peer, &text, &handler);
                    }
                }
                Ok(None) => break,
                Err(_) => {
                    tracing::warn!(idle = ?timing.idle, "the other end of the link sent nothing; closing it");
                    break;
                }
            },
        }
    }
    peer.close();
    // Dropping the waiters fails their requests as `Lost`.
    peer.pending.lock().expect("link lock poisoned").clear();
    let _ = sink.close().await;
}

fn receive(peer: &Arc<Peer>, text: &str, handler: &Handler) {
    match serde_json::from_str::<Frame>(text) {
        Ok(Frame::Response { seq, status, body }) => peer.answer(seq, Answer { status, body }),
        Ok(Frame::Request { seq, method, path, token, body }) => {
            let (peer, handler) = (peer.clone(), handler.clone());
            tokio::spawn(async move {
                let token = handler.token.as_deref().or(token.as_deref());
                let answer = call(handler.router, &method, &path, token, body).await;
                let text =
                    serde_json::to_string(&ResponseOut::Response { seq, status: answer.status, body: &answer.body })
                        .expect("a response serializes");
                let _ = peer.out.send(text).await;
            });
        }
        Err(err) => tracing::warn!(error = %err, "dropping a link message that is not a frame"),
    }
}

/// Runs one request through `router`, as if it had come over HTTP.
async fn call(router: Router, method: &str, path: &str, token: Option<&str>, body: Option<Box<RawValue>>) -> Answer {
    let Ok(method) = Method::from_bytes(method.as_bytes()) else {
        return Answer { status: 400, body: format!("`{method}` is not an HTTP method") };
    };
    let mut request = Request::builder().method(method).uri(path);
    if let Some(token) = token.and_then(|t| HeaderValue::from_str(&format!("Bearer {t}")).ok()) {
        request = request.header(header::AUTHORIZATION, token);
    }
    let request = match body {
        Some(body) => request
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(String::from(Box::<str>::from(body)))),
        None => request.body(Body::empty()),
    };
    let Ok(request) = request else {
        return Answer { status: 400, body: format!("`{path}` is not a request path") };
    };
    let response = match router.oneshot(request).await {
        Ok(response) => response,
        Err(never) => match never {},
    };
    let status = response.status().as_u16();
    match axum::body::to_bytes(response.into_body(), MAX_MESSAGE_BYTES).await {
        Ok(bytes) => Answer { status, body: String::from_utf8_lossy(&bytes).into_owned() },
        Err(_) => Answer { status: 500, body: "the answer could not be read".into() },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::extract::Path;
    use axum::routing::post;
    use futures::channel::mpsc as fmpsc;

    /// Two ends joined by in-memory queues standing in for a socket (the
    /// framing is the WebSocket library's; what is tested here is the
    /// protocol). A ping arrives as the control message it is.
    fn pair_timed(a: Router, b: Router, timing_a: Timing, timing_b: Timing) -> (Arc<Peer>, Arc<Peer>) {
        let (a_to_b, b_in) = fmpsc::unbounded::<Inbound>();
        let (b_to_a, a_in) = fmpsc::unbounded::<Inbound>();
        let (peer_a, out_a) = Peer::new();
        let (peer_b, out_b) = Peer::new();
        let sink = |tx: fmpsc::UnboundedSender<Inbound>| {
            tx.sink_map_err(|_| ()).with(|out: Outbound| {
                futures::future::ready(Ok::<_, ()>(match out {
                    Outbound::Frame(text) => Inbound::Frame(text),
                    Outbound::Ping => Inbound::Alive,
                }))
            })
        };
        let handler_a = Handler { router: a, token: None };
        tokio::spawn(drive(peer_a.clone(), out_a, a_in, Box::pin(sink(a_to_b)), handler_a, timing_a));
        let forced = Some("forced".to_owned());
        let handler_b = Handler { router: b, token: forced };
        tokio::spawn(drive(peer_b.clone(), out_b, b_in, Box::pin(sink(b_to_a)), handler_b, timing_b));
        (peer_a, peer_b)
    }

    fn pair(a: Router, b: Router) -> (Arc<Peer>, Arc<Peer>) {
        let timing = Timing { idle: Duration::from_secs(30), ping_every: None };
        pair_timed(a, b, timing, timing)
    }

    fn echo() -> Router {
        Router::new().route(
            "/echo/{word}",
            post(|Path(word): Path<String>, headers: axum::http::HeaderMap, body: String| async move {
                let auth = headers.get(header::AUTHORIZATION).map(|v| v.to_str().unwrap().to_owned());
                format!("{word} {auth:?} {body}")
            }),
        )
    }

    #[tokio::test]
    async fn each_end_answers_the_others_requests_through_its_router() {
        let (a, b) = pair(echo(), echo());
        let second = Duration::from_secs(5);
        let answer = a.request("POST", "/echo/hi", Some("t1"), Some(&serde_json::json!({"x": 1})), second).await;
        // b presents its own token, whatever a sent.
        assert_eq!(answer, Ok(Answer { status: 200, body: r#"hi Some("Bearer forced") {"x":1}"#.into() }));
        let answer = b.request("POST", "/echo/yo", Some("t2"), None::<&()>, second).await;
        assert_eq!(answer, Ok(Answer { status: 200, body: r#"yo Some("Bearer t2") "#.into() }));
        let missing = a.request("GET", "/nowhere", None, None::<&()>, second).await.unwrap();
        assert_eq!(missing.status, 404);
        let paths: Vec<String> = (0..100).map(|i| format!("/echo/{i}")).collect();
        let many =
            futures::future::join_all(paths.iter().map(|path| a.request("POST", path, None, None::<&()>, second)))
                .await;
        for (i, answer) in many.into_iter().enumerate() {
            assert!(answer.unwrap().body.starts_with(&format!("{i} ")));
        }
    }

    #[tokio::test]
    async fn a_request_in_flight_when_the_link_drops_is_lost_and_a_later_one_is_not_sent() {
        let slow = Router::new().route("/slow", post(std::future::pending::<String>));
        let (a, b) = pair(echo(), slow);
        let in_flight = {
            let a = a.clone();
            tokio::spawn(async move { a.request("POST", "/slow", None, None::<&()>, Duration::from_secs(30)).await })
        };
        // Wait until the request is on its way (an event, not a pause).
        while a.pending.lock().unwrap().is_empty() {
            tokio::task::yield_now().await;
        }
        b.close();
        assert_eq!(in_flight.await.unwrap(), Err(LinkError::Lost));
        a.closed.cancelled().await;
        let later = a.request("POST", "/echo/x", None, None::<&()>, Duration::from_secs(5)).await;
        assert_eq!(later, Err(LinkError::Closed));
    }

    #[tokio::test]
    async fn no_answer_in_time_is_a_timeout() {
        let slow = Router::new().route("/slow", post(std::future::pending::<String>));
        let (a, _b) = pair(echo(), slow);
        let answer = a.request("POST", "/slow", None, None::<&()>, Duration::from_millis(50)).await;
        assert_eq!(answer, Err(LinkError::TimedOut(Duration::from_millis(50))));
        assert!(a.pending.lock().unwrap().is_empty());
    }

    /// On tokio's paused clock: time moves only as the test advances it, so
    /// the link's timers fire in a fixed order however busy the machine is.
    #[tokio::test(start_paused = true)]
    async fn pings_keep_a_quiet_link_open_past_the_idle_limit_and_show_the_other_end_alive() {
        let step = Duration::from_millis(20);
        let pinging = Timing { idle: Duration::from_secs(30), ping_every: Some(step) };
        let watching = Timing { idle: Duration::from_millis(200), ping_every: None };
        let (a, b) = pair_timed(echo(), echo(), pinging, watching);
        // A second with no request either way: five times b's idle limit.
        for _ in 0..50 {
            tokio::time::advance(step).await;
            for _ in 0..4 {
                tokio::task::yield_now().await;
            }
        }
        assert!(!a.is_closed() && !b.is_closed(), "a pinged link closed as idle");
        assert!(b.silent_for() <= 2 * step, "b last heard from a {:?} ago", b.silent_for());
        // A quiet end that does not ping is closed by the other's idle limit.
        let (c, d) = pair_timed(echo(), echo(), watching, watching);
        tokio::time::timeout(Duration::from_secs(10), c.closed.cancelled()).await.expect("an idle link closes");
        d.closed.cancelled().await;
        assert!(c.silent_for() >= watching.idle);
    }
}

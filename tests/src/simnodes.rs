//! Simulated nodes: one process standing in for many node daemons, to
//! measure what the gateway costs as nodes and queues grow without running
//! N daemons and their Python workers (on two cores that would measure the
//! workers instead).
//!
//! Each simulated node speaks the node protocol: it holds a node credential,
//! registers with `POST /v1/nodes`, opens its link (calls arrive over it;
//! heartbeats and reports leave over it), heartbeats with what it is running,
//! and serves the node API over HTTP on one shared loopback listener too, for
//! a replica that does not hold its link. It answers every call at once:
//! `202` to the call, then a `succeeded` report whose result is the call's
//! first argument.
//!
//! Left out on purpose: the gateway's per-call signature is not checked (that
//! cost is the node's, not the gateway's, and the listener is loopback-only),
//! and no output, run records or artifacts are sent.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use futures::StreamExt;
use gateway::auth::{Keys, NodeBinding};
use link::{Handler, LinkError, Peer};
use serde_json::{json, Value};
use uuid::Uuid;

/// What to simulate.
pub struct SimSpec<'a> {
    /// Gateway replicas' base URLs; node `i` talks to `gateways[i % len]`.
    pub gateways: &'a [String],
    pub project: &'a str,
    pub cluster: &'a str,
    pub nodes: usize,
    /// Each node's `max_concurrent`.
    pub slots: u32,
}

/// What the simulated nodes saw.
#[derive(Default)]
pub struct Stats {
    /// Calls that arrived.
    pub calls: AtomicU64,
    /// `succeeded` reports the gateway acknowledged.
    pub reported: AtomicU64,
    /// Reports the gateway refused (4xx), or that were given up on.
    pub report_failures: AtomicU64,
    /// Links open now.
    pub linked: AtomicUsize,
    /// Calls that arrived over HTTP rather than a link.
    pub over_http: AtomicU64,
    /// When each call arrived, while [`SimNodes::track_arrivals`] is on.
    arrivals: Mutex<HashMap<Uuid, Instant>>,
    tracking: AtomicBool,
}

/// Running simulated nodes; dropping this stops them (their links close and
/// the gateway declares them lost after its timeout).
pub struct SimNodes {
    pub stats: Arc<Stats>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

struct SimNode {
    gateway: String,
    token: String,
    id: Uuid,
    http: reqwest::Client,
    link: RwLock<Option<Arc<Peer>>>,
    running: Mutex<HashSet<Uuid>>,
    stats: Arc<Stats>,
}

/// How long the gateway has to answer a simulated node.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Registrations in flight at once.
const REGISTERING: usize = 16;

impl SimNodes {
    /// Registers `spec.nodes` nodes and returns once every one has its link open.
    pub async fn start(keys: &Keys, spec: SimSpec<'_>) -> anyhow::Result<SimNodes> {
        let stats = Arc::new(Stats::default());
        let http = reqwest::Client::builder().pool_max_idle_per_host(64).timeout(REQUEST_TIMEOUT).build()?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let address = format!("http://{}", listener.local_addr()?);
        let registrations = (0..spec.nodes).map(|i| {
            let (http, address, stats) = (http.clone(), address.clone(), stats.clone());
            let gateway = spec.gateways[i % spec.gateways.len()].clone();
            let name = format!("{}-{i}", spec.cluster);
            let binding = NodeBinding { cluster: spec.cluster.into(), name: name.clone() };
            let minted =
                keys.mint_node(spec.project, &binding, Duration::from_secs(24 * 3600), &Uuid::new_v4().to_string());
            let register = json!({
                "name": name, "cluster": spec.cluster, "address": format!("{address}/n/{i}"),
                "api_secret": format!("{}{}", Uuid::new_v4().simple(), Uuid::new_v4().simple()),
                "max_concurrent": spec.slots, "resources": {"cpus": 1, "memory_bytes": 1u64 << 30},
            });
            async move {
                let (token, _) = minted?;
                let registered: Value = http
                    .post(format!("{gateway}/v1/nodes"))
                    .bearer_auth(&token)
                    .json(&register)
                    .send()
                    .await?
                    .error_for_status()
                    .context("register a simulated node")?
                    .json()
                    .await?;
                let id = registered["node_id"].as_str().context("no node_id")?.parse()?;
                let every = registered["heartbeat_interval_s"].as_u64().unwrap_or(2);
                let linked_every = registered["linked_heartbeat_interval_s"].as_u64().unwrap_or(every).max(every);
                let node =
                    SimNode { gateway, token, id, http, link: RwLock::default(), running: Mutex::default(), stats };
                anyhow::Ok((Arc::new(node), (Duration::from_secs(every), Duration::from_secs(linked_every))))
            }
        });
        let nodes: Vec<(Arc<SimNode>, (Duration, Duration))> = futures::stream::iter(registrations)
            .buffered(REGISTERING)
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<anyhow::Result<_>>()?;

        let mut http_api = Router::new();
        for (i, (node, _)) in nodes.iter().enumerate() {
            http_api = http_api.nest(&format!("/n/{i}"), node.api(true));
        }
        let mut tasks = vec![tokio::spawn(async move {
            let _ = axum::serve(listener, http_api).await;
        })];
        for (node, (every, linked_every)) in nodes {
            tasks.push(tokio::spawn(node.clone().keep_linked()));
            tasks.push(tokio::spawn(node.heartbeats(every, linked_every)));
        }
        let sim = SimNodes { stats, tasks };
        let deadline = Instant::now() + Duration::from_secs(120);
        while sim.stats.linked.load(Ordering::Relaxed) < spec.nodes {
            anyhow::ensure!(Instant::now() < deadline, "the simulated nodes' links did not all open");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(sim)
    }

    /// Starts noting when each call arrives (off by default: it costs a lock per call).
    pub fn track_arrivals(&self) {
        self.stats.arrivals.lock().expect("arrivals lock poisoned").clear();
        self.stats.tracking.store(true, Ordering::Relaxed);
    }

    /// How many calls arrived since [`SimNodes::track_arrivals`].
    pub fn arrived(&self) -> usize {
        self.stats.arrivals.lock().expect("arrivals lock poisoned").len()
    }

    /// Stops noting arrivals; returns those noted.
    pub fn take_arrivals(&self) -> HashMap<Uuid, Instant> {
        self.stats.tracking.store(false, Ordering::Relaxed);
        std::mem::take(&mut *self.stats.arrivals.lock().expect("arrivals lock poisoned"))
    }
}

impl Drop for SimNodes {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl SimNode {
    /// The node API a gateway calls, over the link or (`http`) over HTTP.
    fn api(self: &Arc<Self>, http: bool) -> Router {
        Router::new()
            .route("/calls", post(start))
            .route("/calls/{id}/cancel", post(cancel))
            .with_state((self.clone(), http))
    }

    /// Opens the link, and opens it again whenever it drops.
    async fn keep_linked(self: Arc<Self>) {
        loop {
            if let Ok(socket) = link::client::connect(&self.gateway, self.id, &self.token).await {
                let (peer, outgoing) = Peer::new();
                *self.link.write().expect("link lock poisoned") = Some(peer.clone());
                self.stats.linked.fetch_add(1, Ordering::Relaxed);
                let handler = Handler { router: self.api(false), token: None };
                let timing = link::Timing { idle: Duration::from_secs(300), ping_every: None };
                link::client::run(socket, peer, outgoing, handler, timing).await;
                self.stats.linked.fetch_sub(1, Ordering::Relaxed);
                *self.link.write().expect("link lock poisoned") = None;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Heartbeats every `every`, or every `linked_every` while the link is
    /// open (the gateway's pings keep the node alive in between), as a node
    /// daemon does.
    async fn heartbeats(self: Arc<Self>, every: Duration, linked_every: Duration) {
        // Spread the nodes' heartbeats over the interval.
        tokio::time::sleep(linked_every.mul_f64(rand::random::<f64>())).await;
        let path = format!("/v1/nodes/{}/heartbeat", self.id);
        loop {
            let running: Vec<Uuid> = self.running.lock().expect("running lock poisoned").iter().copied().collect();
            if let Err(err) = self.post(&path, &json!({ "running": running })).await {
                tracing::warn!(error = %err, "a simulated heartbeat failed");
            }
            let sent = Instant::now();
            loop {
                tokio::time::sleep(every).await;
                let linked = self.link.read().expect("link lock poisoned").as_ref().is_some_and(|p| !p.is_closed());
                if !linked || sent.elapsed() + every / 2 >= linked_every {
                    break;
                }
            }
        }
    }

    /// Reports `succeeded` until the gateway answers (a 4xx is an answer too).
    async fn report(self: Arc<Self>, id: Uuid, result: Value) {
        let path = format!("/v1/dispatches/{id}/reports");
        let body = json!({ "kind": "succeeded", "result": result });
        let mut delay = Duration::from_millis(50);
        let outcome = loop {
            match self.post(&path, &body).await {
                Ok(status) if status < 500 => break status < 300,
                _ if delay > Duration::from_secs(5) => break false,
                _ => {
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                }
            }
        };
        self.running.lock().expect("running lock poisoned").remove(&id);
        let counter = if outcome { &self.stats.reported } else { &self.stats.report_failures };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// `POST path` on the gateway, over the link while it is open; the status.
    async fn post(&self, path: &str, body: &Value) -> anyhow::Result<u16> {
        let peer = self.link.read().expect("link lock poisoned").clone();
        if let Some(peer) = peer {
            match peer.request("POST", path, None, Some(body), REQUEST_TIMEOUT).await {
                Ok(answer) => return Ok(answer.status),
                Err(LinkError::Closed) => {}
                Err(err) => return Err(err.into()),
            }
        }
        let url = format!("{}{path}", self.gateway);
        Ok(self.http.post(url).bearer_auth(&self.token).json(body).send().await?.status().as_u16())
    }
}

async fn start(State((node, http)): State<(Arc<SimNode>, bool)>, Json(call): Json<wire::StartCall>) -> StatusCode {
    let id = call.dispatch_id.0;
    node.stats.calls.fetch_add(1, Ordering::Relaxed);
    if http {
        node.stats.over_http.fetch_add(1, Ordering::Relaxed);
    }
    if node.stats.tracking.load(Ordering::Relaxed) {
        node.stats.arrivals.lock().expect("arrivals lock poisoned").insert(id, Instant::now());
    }
    // A repeated call (the gateway did not see the first answer) is already running.
    if node.running.lock().expect("running lock poisoned").insert(id) {
        let result = call.args.into_iter().next().unwrap_or(Value::Null);
        tokio::spawn(node.report(id, result));
    }
    StatusCode::ACCEPTED
}

async fn cancel(State((node, _)): State<(Arc<SimNode>, bool)>, Path(id): Path<Uuid>) -> StatusCode {
    // Calls finish at once, so a cancel finds one only while its report is in flight.
    if node.running.lock().expect("running lock poisoned").contains(&id) {
        StatusCode::ACCEPTED
    } else {
        StatusCode::NOT_FOUND
    }
}

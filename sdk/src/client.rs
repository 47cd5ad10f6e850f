//! The HTTP client.

use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use reqwest::{Method, RequestBuilder, StatusCode};
use serde::de::DeserializeOwned;
use wire::{
    Bundle, CancelDispatch, CreateDispatch, Dispatch, DispatchEventList, DispatchId, DispatchPage, ErrorBody, Function,
    ListDispatches, LogEntry, LogPage, NodeList, RegisterFunction,
};

/// A failed call.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The gateway answered with an error body.
    #[error("{} ({status}): {}", body.code, body.message)]
    Api { status: StatusCode, body: ErrorBody },
    /// The gateway could not be reached, even after retries.
    #[error("cannot reach the gateway at {url}: {message}")]
    Unreachable { url: String, message: String },
    /// The gateway's answer could not be read.
    #[error("unexpected answer from the gateway: {0}")]
    Decode(String),
    /// Missing or invalid client settings.
    #[error("{0}")]
    Config(String),
}

impl Error {
    /// The HTTP status, for API errors.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            Error::Api { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// When to retry: connection failures and 502/503/504, never other errors.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Attempts in all, including the first.
    pub attempts: u32,
    /// First backoff; doubled each retry, with jitter.
    pub base_delay: Duration,
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy { attempts: 6, base_delay: Duration::from_millis(100), max_delay: Duration::from_secs(3) }
    }
}

/// A client for one gateway, with one bearer token. Cheap to clone.
#[derive(Clone)]
pub struct Client {
    /// Short requests, over HTTP/1.1 connections kept alive.
    http: reqwest::Client,
    /// Long-lived requests (waits, followed logs).
    long_lived: LongLived,
    base: String,
    token: String,
    retry: RetryPolicy,
}

impl Client {
    /// A client for the gateway at `url` (e.g. `http://127.0.0.1:8080`).
    pub fn new(url: &str, token: &str) -> Result<Client, Error> {
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(Error::Config(format!("the gateway URL must start with http:// or https://, got `{url}`")));
        }
        if token.trim().is_empty() {
            return Err(Error::Config("no token: pass one or set RH_TOKEN".into()));
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .pool_max_idle_per_host(32)
            .http1_only()
            .build()
            .map_err(|e| Error::Config(e.to_string()))?;
        Ok(Client {
            http,
            long_lived: LongLived::new(url)?,
            base: url.trim_end_matches('/').to_owned(),
            token: token.trim().to_owned(),
            retry: RetryPolicy::default(),
        })
    }

    /// A client from `RH_GATEWAY_URL` (default `http://127.0.0.1:8080`) and `RH_TOKEN`.
    pub fn from_env() -> Result<Client, Error> {
        let url = std::env::var("RH_GATEWAY_URL").unwrap_or_else(|_| "http://127.0.0.1:8080".into());
        let token = std::env::var("RH_TOKEN").map_err(|_| Error::Config("set RH_TOKEN to a gateway token".into()))?;
        Client::new(&url, &token)
    }

    /// Replaces the retry policy.
    pub fn with_retry(mut self, retry: RetryPolicy) -> Client {
        self.retry = retry;
        self
    }

    /// The gateway's base URL.
    pub fn url(&self) -> &str {
        &self.base
    }

    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.request_on(&self.http, method, path)
    }

    fn request_on(&self, http: &reqwest::Client, method: Method, path: &str) -> RequestBuilder {
        http.request(method, format!("{}{path}", self.base)).bearer_auth(&self.token)
    }

    /// Sends with retries (connection errors and 502/503/504 only) and decodes JSON.
    async fn send<T: DeserializeOwned>(&self, build: impl Fn() -> RequestBuilder) -> Result<T, Error> {
        decode(self.send_raw(build).await?).await
    }

    async fn send_raw(&self, build: impl Fn() -> RequestBuilder) -> Result<reqwest::Response, Error> {
        self.send_with_retries(false, |_| build()).await
    }

    /// As `send_raw`, for a request that may stay open a long time: `build`
    /// gets the connection pool to build it on.
    async fn send_long_lived(
        &self,
        build: impl Fn(&reqwest::Client) -> RequestBuilder,
    ) -> Result<reqwest::Response, Error> {
        self.send_with_retries(true, build).await
    }

    async fn send_with_retries(
        &self,
        long_lived: bool,
        build: impl Fn(&reqwest::Client) -> RequestBuilder,
    ) -> Result<reqwest::Response, Error> {
        let mut delay = self.retry.base_delay;
        let mut attempt = 1;
        loop {
            let http2 = long_lived && self.long_lived.usable();
            let outcome = build(if http2 { &self.long_lived.http } else { &self.http }).send().await;
            if http2 && self.long_lived.refused(&outcome) {
                // Not an attempt: the same request goes at once over HTTP/1.1.
                continue;
            }
            let retriable = match &outcome {
                Ok(response) => matches!(
                    response.status(),
                    StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE | StatusCode::GATEWAY_TIMEOUT
                ),
                Err(err) => err.is_connect() || err.is_timeout() || err.is_request(),
            };
            if !retriable || attempt >= self.retry.attempts {
                return match outcome {
                    Ok(response) if response.status().is_success() => Ok(response),
                    Ok(response) => Err(api_error(response).await),
                    Err(err) => Err(Error::Unreachable { url: self.base.clone(), message: err.to_string() }),
                };
            }
            let jitter = Duration::from_millis(rand::random::<u64>() % (delay.as_millis() as u64 / 2 + 1));
            tokio::time::sleep(delay + jitter).await;
            delay = (delay * 2).min(self.retry.max_delay);
            attempt += 1;
        }
    }

    /// Creates a dispatch. Without an idempotency key, one is generated, so
    /// retrying after a lost answer never creates two dispatches.
    pub async fn dispatch_create(&self, mut request: CreateDispatch) -> Result<Dispatch, Error> {
        if request.idempotency_key.is_none() {
            request.idempotency_key = Some(format!("rh-{}", uuid::Uuid::new_v4()));
        }
        self.send(|| self.request(Method::POST, "/v1/dispatches").json(&request)).await
    }

    /// Creates a dispatch and returns it once it has ended (or `timeout`
    /// has passed, as it then stands), in as few requests as it can: the
    /// create holds its answer until the call ends, up to 60 s at a time
    /// (`wait_s`), so a short call takes one request and a longer one goes
    /// on with long-polls. Without an idempotency key, one is generated, so
    /// retrying after a lost answer never creates two dispatches.
    pub async fn dispatch_run(
        &self,
        mut request: CreateDispatch,
        timeout: Option<Duration>,
    ) -> Result<Dispatch, Error> {
        if request.idempotency_key.is_none() {
            request.idempotency_key = Some(format!("rh-{}", uuid::Uuid::new_v4()));
        }
        let deadline = timeout.map(|t| Instant::now() + t);
        let left = || deadline.map(|d| d.saturating_duration_since(Instant::now()));
        let wait_s = left().map_or(60, |l| l.as_secs().min(60) as u32);
        let created = self
            .send_long_lived(|http| {
                self.request_on(http, Method::POST, "/v1/dispatches")
                    .query(&[("wait_s", wait_s)])
                    .json(&request)
                    .timeout(Duration::from_secs(u64::from(wait_s) + 30))
            })
            .await;
        let dispatch: Dispatch = decode(created?).await?;
        if dispatch.state.is_terminal() || left().is_some_and(|l| l.is_zero()) {
            return Ok(dispatch);
        }
        self.dispatch_wait(dispatch.id, left()).await
    }

    /// One dispatch.
    pub async fn dispatch_get(&self, id: DispatchId) -> Result<Dispatch, Error> {
        self.send(|| self.request(Method::GET, &format!("/v1/dispatches/{id}"))).await
    }

    /// A page of dispatches.
    pub async fn dispatch_list(&self, query: &ListDispatches) -> Result<DispatchPage, Error> {
        let pairs = list_pairs(query);
        self.send(|| self.request(Method::GET, "/v1/dispatches").query(&pairs)).await
    }

    /// Asks for a cancel (idempotent).
    pub async fn dispatch_cancel(&self, id: DispatchId, reason: Option<String>) -> Result<Dispatch, Error> {
        let body = CancelDispatch { reason };
        self.send(|| self.request(Method::POST, &format!("/v1/dispatches/{id}/cancel")).json(&body)).await
    }

    /// The dispatch's event log.
    pub async fn dispatch_events(&self, id: DispatchId) -> Result<DispatchEventList, Error> {
        self.send(|| self.request(Method::GET, &format!("/v1/dispatches/{id}/events"))).await
    }

    /// One long-poll: returns when the dispatch is terminal or after `timeout_s`.
    pub async fn dispatch_wait_once(&self, id: DispatchId, timeout_s: u32) -> Result<Dispatch, Error> {
        let response = self
            .send_long_lived(|http| {
                self.request_on(http, Method::GET, &format!("/v1/dispatches/{id}/wait"))
                    .query(&[("timeout_s", timeout_s)])
                    .timeout(Duration::from_secs(u64::from(timeout_s) + 30))
            })
            .await?;
        decode(response).await
    }

    /// Long-polls until the dispatch is terminal, or `timeout` passes (then
    /// returns it as it stands).
    pub async fn dispatch_wait(&self, id: DispatchId, timeout: Option<Duration>) -> Result<Dispatch, Error> {
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()).as_secs() as u32);
            let dispatch = self.dispatch_wait_once(id, left.unwrap_or(60).min(60)).await?;
            if dispatch.state.is_terminal() || deadline.is_some_and(|d| Instant::now() >= d) {
                return Ok(dispatch);
            }
        }
    }

    /// Stored output after `offset`.
    pub async fn logs(&self, id: DispatchId, offset: i64) -> Result<LogPage, Error> {
        self.send(|| self.request(Method::GET, &format!("/v1/dispatches/{id}/logs")).query(&[("offset", offset)])).await
    }

    /// Output after `offset`, live, until the dispatch ends. Reconnects from the
    /// last entry seen if the stream drops.
    pub fn logs_follow(
        &self,
        id: DispatchId,
        offset: i64,
    ) -> impl Stream<Item = Result<LogEntry, Error>> + Send + use<> {
        self.logs_follow_to_end(id, offset).filter_map(|event| {
            std::future::ready(match event {
                Ok(Followed::Log(entry)) => Some(Ok(entry)),
                Ok(Followed::End(_)) => None,
                Err(err) => Some(Err(err)),
            })
        })
    }

    /// [`Client::logs_follow`], ending with the terminal dispatch the stream
    /// closed with, so a caller needs no further request for the result.
    pub fn logs_follow_to_end(
        &self,
        id: DispatchId,
        offset: i64,
    ) -> impl Stream<Item = Result<Followed, Error>> + Send + use<> {
        let state = Follow {
            client: self.clone(),
            id,
            offset,
            ended: None,
            done: false,
            pending: Vec::new().into_iter(),
            open: None,
        };
        futures::stream::unfold(state, Follow::next)
    }

    /// Uploads a code bundle (tar.gz) and where it was packed from; stored once per sha256.
    pub async fn bundle_upload(&self, data: Vec<u8>, source: &wire::BundleSource) -> Result<Bundle, Error> {
        self.send(|| {
            self.request(Method::POST, "/v1/bundles")
                .query(source)
                .header("content-type", "application/gzip")
                .body(data.clone())
        })
        .await
    }

    /// The files a dispatch kept.
    pub async fn dispatch_artifacts(&self, id: DispatchId) -> Result<wire::ArtifactList, Error> {
        self.send(|| self.request(Method::GET, &format!("/v1/dispatches/{id}/artifacts"))).await
    }

    /// Streams artifact `path` of a dispatch into `writer`; returns the bytes written.
    pub async fn artifact_download(
        &self,
        id: DispatchId,
        path: &str,
        writer: &mut (impl tokio::io::AsyncWrite + Unpin),
    ) -> Result<u64, Error> {
        let mut url = reqwest::Url::parse(&self.base).map_err(|e| Error::Decode(e.to_string()))?;
        url.path_segments_mut()
            .map_err(|()| Error::Decode(format!("{} cannot be a base URL", self.base)))?
            .pop_if_empty()
            .extend(["v1", "dispatches", &id.to_string(), "artifacts", path]);
        let response = self.send_raw(|| self.http.get(url.clone()).bearer_auth(&self.token)).await?;
        let mut stream = response.bytes_stream();
        let mut written = 0u64;
        while let Some(chunk) = futures::StreamExt::next(&mut stream).await {
            let chunk = chunk.map_err(|e| Error::Decode(format!("the download of `{path}` broke off: {e}")))?;
            tokio::io::AsyncWriteExt::write_all(writer, &chunk)
                .await
                .map_err(|e| Error::Decode(format!("cannot write `{path}`: {e}")))?;
            written += chunk.len() as u64;
        }
        tokio::io::AsyncWriteExt::flush(writer)
            .await
            .map_err(|e| Error::Decode(format!("cannot write `{path}`: {e}")))?;
        Ok(written)
    }

    /// Downloads every artifact of a dispatch (or only `only`) into `dir`,
    /// keeping their folders; returns the files written.
    pub async fn artifacts_download(
        &self,
        id: DispatchId,
        only: Option<&str>,
        dir: &std::path::Path,
    ) -> Result<Vec<std::path::PathBuf>, Error> {
        let list = self.dispatch_artifacts(id).await?;
        let wanted: Vec<&wire::Artifact> = list.items.iter().filter(|a| only.is_none_or(|p| a.path == p)).collect();
        if let (Some(path), true) = (only, wanted.is_empty()) {
            return Err(Error::Api {
                status: StatusCode::NOT_FOUND,
                body: ErrorBody {
                    code: "not_found".into(),
                    message: format!("dispatch {id} kept no artifact `{path}`"),
                    request_id: String::new(),
                    field: None,
                },
            });
        }
        let mut written = Vec::new();
        for artifact in wanted {
            // The gateway refuses unsafe paths; check again before writing under `dir`.
            if let Some(problem) = wire::artifact_path_problem(&artifact.path) {
                return Err(Error::Decode(problem));
            }
            let target = dir.join(&artifact.path);
            if let Some(parent) = target.parent() {
                tokio::fs::create_dir_all(parent)
                    .await
                    .map_err(|e| Error::Decode(format!("cannot create {}: {e}", parent.display())))?;
            }
            let mut file = tokio::fs::File::create(&target)
                .await
                .map_err(|e| Error::Decode(format!("cannot create {}: {e}", target.display())))?;
            self.artifact_download(id, &artifact.path, &mut file).await?;
            written.push(target);
        }
        Ok(written)
    }

    /// True if the gateway already stores this bundle.
    pub async fn bundle_exists(&self, sha256: &str) -> Result<bool, Error> {
        match self.send_raw(|| self.request(Method::HEAD, &format!("/v1/bundles/{sha256}"))).await {
            Ok(_) => Ok(true),
            Err(Error::Api { status: StatusCode::NOT_FOUND, .. }) => Ok(false),
            Err(err) => Err(err),
        }
    }

    /// A dispatch's run record (404 until the call has started on a node).
    pub async fn dispatch_record(&self, id: DispatchId) -> Result<wire::RunRecord, Error> {
        self.send(|| self.request(Method::GET, &format!("/v1/dispatches/{id}/record"))).await
    }

    /// Downloads a bundle's bytes.
    pub async fn bundle_download(&self, sha256: &str) -> Result<Vec<u8>, Error> {
        let response = self.send_raw(|| self.request(Method::GET, &format!("/v1/bundles/{sha256}"))).await?;
        response.bytes().await.map(|b| b.to_vec()).map_err(|e| Error::Decode(e.to_string()))
    }

    /// The project's named functions.
    pub async fn function_list(&self) -> Result<wire::FunctionList, Error> {
        self.send(|| self.request(Method::GET, "/v1/functions")).await
    }

    /// Liveness of the gateway.
    pub async fn health(&self) -> Result<wire::Health, Error> {
        self.send(|| self.http.get(format!("{}/healthz", self.base))).await
    }

    /// Readiness: the gateway and its database answer.
    pub async fn ready(&self) -> Result<wire::Health, Error> {
        self.send(|| self.http.get(format!("{}/readyz", self.base))).await
    }

    /// Registers (or replaces) a named function.
    pub async fn function_register(&self, request: &RegisterFunction) -> Result<Function, Error> {
        self.send(|| self.request(Method::POST, "/v1/functions").json(request)).await
    }

    /// One named function.
    pub async fn function_get(&self, name: &str) -> Result<Function, Error> {
        self.send(|| self.request(Method::GET, &format!("/v1/functions/{name}"))).await
    }

    /// A one-time link that signs a browser in to the dashboard as this
    /// client's token (works once, for 5 minutes). The returned `url` is on
    /// the URL this client talks to.
    pub async fn ui_login_link(&self) -> Result<wire::LoginLink, Error> {
        let mut link: wire::LoginLink = self.send(|| self.request(Method::POST, "/v1/ui/login-links")).await?;
        link.url = format!("{}{}", self.url().trim_end_matches('/'), link.path);
        Ok(link)
    }

    /// Every node (admin tokens).
    pub async fn node_list(&self) -> Result<NodeList, Error> {
        self.send(|| self.request(Method::GET, "/v1/nodes")).await
    }

    /// Creates a schedule.
    pub async fn schedule_create(&self, request: &wire::CreateSchedule) -> Result<wire::Schedule, Error> {
        self.send(|| self.request(Method::POST, "/v1/schedules").json(request)).await
    }

    /// The project's schedules.
    pub async fn schedule_list(&self) -> Result<wire::ScheduleList, Error> {
        self.send(|| self.request(Method::GET, "/v1/schedules")).await
    }

    /// One schedule and its next fire times.
    pub async fn schedule_get(&self, name: &str) -> Result<wire::Schedule, Error> {
        self.send(|| self.request(Method::GET, &format!("/v1/schedules/{name}"))).await
    }

    /// Changes a schedule (pause, resume, edit).
    pub async fn schedule_update(&self, name: &str, change: &wire::UpdateSchedule) -> Result<wire::Schedule, Error> {
        self.send(|| self.request(Method::PATCH, &format!("/v1/schedules/{name}")).json(change)).await
    }

    /// Deletes a schedule (its dispatches stay).
    pub async fn schedule_delete(&self, name: &str) -> Result<(), Error> {
        self.send_raw(|| self.request(Method::DELETE, &format!("/v1/schedules/{name}"))).await?;
        Ok(())
    }

    /// Creates an instance (or attaches to the live one of that name and fields).
    pub async fn instance_create(&self, request: &wire::CreateInstance) -> Result<wire::Instance, Error> {
        self.send(|| self.request(Method::POST, "/v1/instances").json(request)).await
    }

    /// The project's instances (`all`: deleted ones too).
    pub async fn instance_list(&self, all: bool) -> Result<wire::InstanceList, Error> {
        self.send(|| self.request(Method::GET, "/v1/instances").query(&[("all", all)])).await
    }

    /// One instance and its latest events.
    pub async fn instance_get(&self, name: &str) -> Result<wire::Instance, Error> {
        self.send(|| self.request(Method::GET, &format!("/v1/instances/{name}"))).await
    }

    /// Deletes an instance: its calls are cancelled and its worker stopped.
    pub async fn instance_delete(&self, name: &str) -> Result<wire::Instance, Error> {
        self.send(|| self.request(Method::DELETE, &format!("/v1/instances/{name}"))).await
    }

    /// A page of a schedule's dispatches, newest first.
    pub async fn schedule_runs(&self, name: &str, query: &ListDispatches) -> Result<DispatchPage, Error> {
        let pairs = list_pairs(query);
        self.send(|| self.request(Method::GET, &format!("/v1/schedules/{name}/runs")).query(&pairs)).await
    }
}

/// The query string of a dispatch listing.
fn list_pairs(query: &ListDispatches) -> Vec<(&'static str, String)> {
    let mut pairs: Vec<(&'static str, String)> = Vec::new();
    pairs.extend(query.state.iter().map(|s| ("state", s.clone())));
    pairs.extend(query.label.iter().map(|l| ("label", l.clone())));
    if let Some(cluster) = &query.cluster {
        pairs.push(("cluster", cluster.clone()));
    }
    if let Some(after) = query.created_after {
        pairs.push(("created_after", after.to_rfc3339()));
    }
    if let Some(before) = query.created_before {
        pairs.push(("created_before", before.to_rfc3339()));
    }
    if let Some(limit) = query.limit {
        pairs.push(("limit", limit.to_string()));
    }
    if let Some(cursor) = &query.cursor {
        pairs.push(("cursor", cursor.clone()));
    }
    pairs
}

/// What following a dispatch's output yields.
#[derive(Debug, Clone)]
pub enum Followed {
    /// One entry of output.
    Log(LogEntry),
    /// The dispatch ended and all its output was sent: the dispatch as it
    /// ended (`None` from a gateway that does not send it).
    End(Option<Box<Dispatch>>),
}

/// The state of a log follow.
struct Follow {
    client: Client,
    id: DispatchId,
    offset: i64,
    /// The `end` event arrived, with this dispatch.
    ended: Option<Option<Box<Dispatch>>>,
    done: bool,
    pending: std::vec::IntoIter<LogEntry>,
    /// The open event stream and its unparsed text.
    open: Option<(reqwest::Response, String)>,
}

impl Follow {
    async fn next(mut self) -> Option<(Result<Followed, Error>, Follow)> {
        loop {
            if let Some(entry) = self.pending.next() {
                self.offset = entry.seq;
                return Some((Ok(Followed::Log(entry)), self));
            }
            if let Some(end) = self.ended.take() {
                self.done = true;
                return Some((Ok(Followed::End(end)), self));
            }
            if self.done {
                return None;
            }
            let (mut stream, mut buffer) = match self.open.take() {
                Some(open) => open,
                None => {
                    let (client, id, offset) = (&self.client, self.id, self.offset);
                    let opened = client
                        .send_long_lived(|http| {
                            client
                                .request_on(http, Method::GET, &format!("/v1/dispatches/{id}/logs"))
                                .query(&[("offset", offset.to_string()), ("follow", "true".into())])
                        })
                        .await;
                    match opened {
                        Ok(stream) => (stream, String::new()),
                        Err(err) => {
                            self.done = true;
                            return Some((Err(err), self));
                        }
                    }
                }
            };
            match stream.chunk().await {
                Ok(Some(chunk)) => {
                    buffer.push_str(&String::from_utf8_lossy(&chunk));
                    let (entries, ended) = parse_events(&mut buffer);
                    self.pending = entries.into_iter();
                    match ended {
                        Some(end) => self.ended = Some(end),
                        None => self.open = Some((stream, buffer)),
                    }
                }
                // The stream dropped: reconnect from the last entry.
                Ok(None) | Err(_) => self.open = None,
            }
        }
    }
}

/// Reads a successful answer's JSON body.
async fn decode<T: DeserializeOwned>(response: reqwest::Response) -> Result<T, Error> {
    let bytes = response.bytes().await.map_err(|e| Error::Decode(e.to_string()))?;
    serde_json::from_slice(&bytes).map_err(|e| Error::Decode(format!("{e}: {}", String::from_utf8_lossy(&bytes))))
}

/// The connection long-lived requests share: HTTP/2, by prior knowledge for
/// `http://` (there is no TLS handshake to negotiate it), by ALPN otherwise.
///
/// A request parked on the gateway holds its connection. Over HTTP/1.1 that
/// is a connection per request, and the gateway's server keeps ~15 KiB of
/// buffers for each; as streams of one HTTP/2 connection they cost it ~1.2 KiB
/// each, so a process waiting on thousands of dispatches (an orchestrator's
/// triggerer) costs the gateway little. A gateway, or a proxy in front of it,
/// that does not speak HTTP/2 drops the connection at its first request;
/// then the client sends its long-lived requests over HTTP/1.1 for good.
#[derive(Clone)]
struct LongLived {
    http: reqwest::Client,
    /// Whether HTTP/2 has been seen to work (`WORKS`) or refused (`REFUSED`).
    known: std::sync::Arc<std::sync::atomic::AtomicU8>,
}

impl LongLived {
    const UNKNOWN: u8 = 0;
    const WORKS: u8 = 1;
    const REFUSED: u8 = 2;

    fn new(url: &str) -> Result<LongLived, Error> {
        let builder = reqwest::Client::builder().connect_timeout(Duration::from_secs(5));
        let builder = if url.starts_with("http://") { builder.http2_prior_knowledge() } else { builder };
        let http = builder
            // Keeps an idle connection (and its parked requests) checked.
            .http2_keep_alive_interval(Duration::from_secs(30))
            .build()
            .map_err(|e| Error::Config(e.to_string()))?;
        Ok(LongLived { http, known: Default::default() })
    }

    fn usable(&self) -> bool {
        self.known.load(std::sync::atomic::Ordering::Relaxed) != LongLived::REFUSED
    }

    /// Learns from an outcome over HTTP/2; true if it shows the gateway does
    /// not speak it: a request failed, not in connecting or by a timeout,
    /// before any had succeeded.
    fn refused(&self, outcome: &Result<reqwest::Response, reqwest::Error>) -> bool {
        use std::sync::atomic::Ordering::Relaxed;
        match outcome {
            Ok(_) => {
                self.known.store(LongLived::WORKS, Relaxed);
                false
            }
            Err(err) if !err.is_connect() && !err.is_timeout() => {
                let _ = self.known.compare_exchange(LongLived::UNKNOWN, LongLived::REFUSED, Relaxed, Relaxed);
                self.known.load(Relaxed) == LongLived::REFUSED
            }
            Err(_) => false,
        }
    }
}

async fn api_error(response: reqwest::Response) -> Error {
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    let body = serde_json::from_str::<ErrorBody>(&text).unwrap_or(ErrorBody {
        code: status.canonical_reason().unwrap_or("error").to_lowercase().replace(' ', "_"),
        message: if text.is_empty() { status.to_string() } else { text },
        request_id: String::new(),
        field: None,
    });
    Error::Api { status, body }
}

/// Takes complete server-sent events off the front of `buffer`: log entries,
/// and, if the `end` event arrived, the dispatch it carried.
fn parse_events(buffer: &mut String) -> (Vec<LogEntry>, Option<Option<Box<Dispatch>>>) {
    let mut entries = Vec::new();
    let mut ended = None;
    while let Some(at) = buffer.find("\n\n") {
        let event: String = buffer.drain(..at + 2).collect();
        let mut kind = "message";
        let mut data = String::new();
        for line in event.lines() {
            if let Some(value) = line.strip_prefix("event:") {
                kind = if value.trim() == "log" {
                    "log"
                } else if value.trim() == "end" {
                    "end"
                } else {
                    "other"
                };
            } else if let Some(value) = line.strip_prefix("data:") {
                data.push_str(value.strip_prefix(' ').unwrap_or(value));
            }
        }
        match kind {
            "log" => {
                if let Ok(entry) = serde_json::from_str(&data) {
                    entries.push(entry);
                }
            }
            "end" => ended = Some(serde_json::from_str(&data).ok().map(Box::new)),
            _ => {}
        }
    }
    (entries, ended)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_sent_events_split_across_chunks_parse_whole() {
        let mut buffer =
            String::from("event: log\nid: 1\ndata: {\"seq\":1,\"stream\":\"stdout\",\"text\":\"a\\n\"}\n\nevent: lo");
        let (entries, ended) = parse_events(&mut buffer);
        assert_eq!(entries.len(), 1);
        assert!(ended.is_none());
        buffer.push_str("g\ndata: {\"seq\":2,\"stream\":\"stderr\",\"text\":\"b\"}\n\n: keep-alive\n\nevent: end\ndata: complete\n\n");
        let (entries, ended) = parse_events(&mut buffer);
        assert_eq!(entries.iter().map(|e| e.seq).collect::<Vec<_>>(), [2]);
        assert!(matches!(ended, Some(None)), "an `end` without a dispatch still ends the stream");
        assert!(buffer.is_empty());
    }

    #[test]
    fn a_client_needs_an_http_url_and_a_token() {
        assert!(matches!(Client::new("localhost:8080", "t"), Err(Error::Config(_))));
        assert!(matches!(Client::new("http://localhost:8080", " "), Err(Error::Config(_))));
        assert!(Client::new("http://localhost:8080", "t").is_ok());
    }
}

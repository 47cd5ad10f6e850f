//! Node → gateway calls: registration, heartbeats, reports, logs and bundle
//! downloads. Reports and log batches are retried until the gateway
//! acknowledges them, so a gateway restart loses nothing.
//!
//! Once the node's link to its gateway is open (see [`crate::link`]), these
//! requests travel over it; while it is down they go over HTTP, so a dropped
//! link delays nothing that retrying cannot deliver.
//!
//! A node may know several gateway replicas (they share one database, so
//! any of them takes any request). It talks to one at a time and moves to
//! the next when the current one cannot be reached or fails (5xx); a
//! refusal (4xx) is an answer and moves nothing.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use link::{LinkError, Peer};
use reqwest::StatusCode;

/// A client for the gateway's node-facing routes.
#[derive(Clone)]
pub struct GatewayClient {
    http: reqwest::Client,
    /// The replicas' base URLs, in the order given.
    bases: Arc<Vec<String>>,
    /// Index into `bases` of the replica in use.
    current: Arc<AtomicUsize>,
    token: String,
    /// The link to the replica in use, while it is open.
    link: Arc<RwLock<Option<Arc<Peer>>>>,
}

/// How long the gateway has to answer a request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// A failed request.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The gateway answered with a client error: retrying will not help.
    #[error("the gateway refused the request ({status}): {body}")]
    Refused { status: StatusCode, body: String },
    /// The gateway could not be reached or failed; worth retrying.
    #[error("the gateway is unavailable: {0}")]
    Unavailable(String),
}

impl GatewayClient {
    /// A client for `bases`: one gateway URL (e.g. `http://127.0.0.1:8080`)
    /// or several replicas' separated by commas, using a node token.
    pub fn new(bases: &str, token: &str) -> GatewayClient {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(3))
            .timeout(REQUEST_TIMEOUT)
            .build()
            .expect("reqwest client");
        GatewayClient {
            http,
            bases: Arc::new(split_bases(bases)),
            current: Arc::default(),
            token: token.to_owned(),
            link: Arc::default(),
        }
    }

    /// This node's credential.
    pub(crate) fn token(&self) -> &str {
        &self.token
    }

    /// Sends requests over `peer` from now on.
    pub(crate) fn set_link(&self, peer: Arc<Peer>) {
        *self.link.write().expect("link lock poisoned") = Some(peer);
    }

    /// Goes back to HTTP, if `peer` is still the link in use.
    pub(crate) fn clear_link(&self, peer: &Arc<Peer>) {
        let mut link = self.link.write().expect("link lock poisoned");
        if link.as_ref().is_some_and(|l| Arc::ptr_eq(l, peer)) {
            *link = None;
        }
    }

    /// Closes the link in use (it will be opened again).
    pub(crate) fn close_link(&self) {
        if let Some(peer) = self.link.read().expect("link lock poisoned").as_ref() {
            peer.close();
        }
    }

    /// Whether the link is open (the gateway's pings then keep this node alive).
    pub(crate) fn is_linked(&self) -> bool {
        self.open_link().is_some()
    }

    fn open_link(&self) -> Option<Arc<Peer>> {
        self.link.read().expect("link lock poisoned").clone().filter(|p| !p.is_closed())
    }

    /// The replica in use.
    pub fn base(&self) -> &str {
        &self.bases[self.current.load(Ordering::Relaxed) % self.bases.len()]
    }

    /// After `base` failed: use the next replica, unless another request moved on already.
    pub(crate) fn fail_over(&self, base: &str) {
        if self.bases.len() < 2 {
            return;
        }
        let at = self.current.load(Ordering::Relaxed);
        if self.bases[at % self.bases.len()] == base {
            let next = (at + 1) % self.bases.len();
            if self.current.compare_exchange(at, next, Ordering::Relaxed, Ordering::Relaxed).is_ok() {
                tracing::warn!(from = base, to = %self.bases[next], "gateway replica unavailable; failing over");
            }
        }
    }

    /// `POST path` with `body`, over the link if it is open; the answer's body.
    async fn post<T: serde::Serialize>(&self, path: &str, body: &T) -> Result<String, Error> {
        if let Some(peer) = self.open_link() {
            match peer.request("POST", path, None, Some(body), REQUEST_TIMEOUT).await {
                Ok(answer) => {
                    return match StatusCode::from_u16(answer.status).unwrap_or(StatusCode::BAD_GATEWAY) {
                        status if status.is_success() => Ok(answer.body),
                        status if status.is_client_error() => Err(Error::Refused { status, body: answer.body }),
                        status => Err(Error::Unavailable(format!("{status}"))),
                    };
                }
                // Not sent: HTTP carries it instead.
                Err(LinkError::Closed) => {}
                Err(err) => {
                    // Sent, but no answer: the link is suspect. Reopening it
                    // is the link task's job; the caller retries.
                    peer.close();
                    return Err(Error::Unavailable(err.to_string()));
                }
            }
        }
        let base = self.base().to_owned();
        let sent = self.http.post(format!("{base}{path}")).bearer_auth(&self.token).json(body).send().await;
        let result = match sent {
            Ok(response) => match check(response).await {
                Ok(response) => response.text().await.map_err(|e| Error::Unavailable(e.to_string())),
                Err(err) => Err(err),
            },
            Err(e) => Err(Error::Unavailable(e.to_string())),
        };
        if let Err(Error::Unavailable(_)) = &result {
            self.fail_over(&base);
        }
        result
    }

    /// Trades a single-use join token for this node's identity and token
    /// (no bearer token yet: the join token is the credential).
    pub async fn join(bases: &str, request: &wire::JoinNode) -> Result<wire::NodeJoined, Error> {
        let client = GatewayClient::new(bases, "");
        let mut last = Error::Unavailable("no gateway URL".into());
        for base in client.bases.iter() {
            let sent = client.http.post(format!("{base}/v1/nodes/join")).json(request).send().await;
            let result = match sent {
                Ok(response) => check(response).await,
                Err(e) => Err(Error::Unavailable(e.to_string())),
            };
            match result {
                Ok(response) => return response.json().await.map_err(|e| Error::Unavailable(e.to_string())),
                Err(err @ Error::Refused { .. }) => return Err(err),
                Err(err) => last = err,
            }
        }
        Err(last)
    }

    /// Registers this node.
    pub async fn register(&self, node: &wire::RegisterNode) -> Result<wire::NodeRegistered, Error> {
        let body = self.post("/v1/nodes", node).await?;
        serde_json::from_str(&body).map_err(|e| Error::Unavailable(format!("the gateway's answer: {e}")))
    }

    /// Sends a heartbeat. `Refused` with 404 means: register again.
    pub async fn heartbeat(&self, node_id: wire::NodeId, heartbeat: &wire::Heartbeat) -> Result<(), Error> {
        self.post(&format!("/v1/nodes/{node_id}/heartbeat"), heartbeat).await.map(|_| ())
    }

    /// Sends a report until the gateway has it. A 404 or 409 (the dispatch
    /// is not this node's, or already ended) settles it too; any other
    /// refusal is returned, for the caller to send an outcome the gateway can take.
    pub async fn report_until_acked(&self, id: wire::DispatchId, report: &wire::Report) -> Result<(), Error> {
        match self.until_acked(&format!("/v1/dispatches/{id}/reports"), report, "report").await {
            Err(Error::Refused { status, .. }) if status == StatusCode::NOT_FOUND || status == StatusCode::CONFLICT => {
                Ok(())
            }
            other => other,
        }
    }

    /// Sends a batch of run records until the gateway has it (a refusal: the
    /// gateway keeps earlier ones, or the dispatches are gone; either way, done).
    pub async fn records_until_acked<T: serde::Serialize>(&self, batch: &T) {
        if let Err(err) = self.until_acked("/v1/dispatches/records", batch, "run record batch").await {
            tracing::debug!(error = %err, "the gateway refused a run record batch");
        }
    }

    /// Ships a log batch until the gateway has it (or refuses it; output is
    /// never worth failing a call over).
    pub async fn logs_until_acked(&self, id: wire::DispatchId, batch: &wire::LogBatch) {
        if let Err(err) = self.until_acked(&format!("/v1/dispatches/{id}/logs"), batch, "log batch").await {
            tracing::warn!(dispatch_id = %id, error = %err, "the gateway refused a log batch; dropping it");
        }
    }

    async fn until_acked<T: serde::Serialize>(&self, path: &str, body: &T, what: &str) -> Result<(), Error> {
        let mut delay = Duration::from_millis(50);
        loop {
            match self.post(path, body).await {
                Ok(_) => return Ok(()),
                Err(err @ Error::Refused { .. }) => {
                    tracing::warn!(path, error = %err, "the gateway refused a {what}");
                    return Err(err);
                }
                Err(err) => {
                    tracing::debug!(path, error = %err, "{what} not delivered; retrying");
                    tokio::time::sleep(delay + Duration::from_millis(rand::random::<u64>() % 50)).await;
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
            }
        }
    }

    /// Uploads file `file` as artifact `path` of dispatch `id`, streamed,
    /// retrying (from the start) while the gateway is unavailable. The
    /// gateway stores an upload whole or not at all, so a retry is safe.
    pub async fn artifact_put(&self, id: wire::DispatchId, path: &str, file: &std::path::Path) -> Result<(), Error> {
        self.retrying(|base| async move {
            let mut url = reqwest::Url::parse(&base).map_err(|e| Error::Unavailable(format!("{base}: {e}")))?;
            url.path_segments_mut()
                .map_err(|()| Error::Unavailable(format!("{base} cannot be a base URL")))?
                .pop_if_empty()
                .extend(["v1", "dispatches", &id.to_string(), "artifacts", path]);
            let opened = tokio::fs::File::open(file)
                .await
                .map_err(|e| Error::Refused { status: StatusCode::GONE, body: format!("{}: {e}", file.display()) })?;
            let length = opened.metadata().await.map(|m| m.len()).unwrap_or(0);
            let body = reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::with_capacity(opened, 256 * 1024));
            let response = self
                .http
                .put(url)
                .bearer_auth(&self.token)
                .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
                .header(reqwest::header::CONTENT_LENGTH, length)
                // A large file takes longer than the client's usual 30 s.
                .timeout(Duration::from_secs(3600))
                .body(body)
                .send()
                .await
                .map_err(|e| Error::Unavailable(e.to_string()))?;
            check(response).await.map(drop)
        })
        .await
    }

    /// Downloads a bundle's bytes, retrying while the gateway is unavailable.
    pub async fn bundle(&self, sha256: &str) -> Result<Vec<u8>, Error> {
        self.retrying(|base| async move {
            let response = self
                .http
                .get(format!("{base}/v1/bundles/{sha256}"))
                .bearer_auth(&self.token)
                .send()
                .await
                .map_err(|e| Error::Unavailable(e.to_string()))?;
            let response = check(response).await?;
            response.bytes().await.map(|b| b.to_vec()).map_err(|e| Error::Unavailable(e.to_string()))
        })
        .await
    }

    /// Runs `request` against the replica in use; while it is unavailable,
    /// fails over and tries again, up to 10 times with a growing pause.
    async fn retrying<T, F, Fut>(&self, request: F) -> Result<T, Error>
    where
        F: Fn(String) -> Fut,
        Fut: std::future::Future<Output = Result<T, Error>>,
    {
        let mut attempts = 0;
        loop {
            let base = self.base().to_owned();
            let result = request(base.clone()).await;
            if let Err(Error::Unavailable(_)) = &result {
                self.fail_over(&base);
            }
            match result {
                Err(Error::Unavailable(err)) if attempts < 10 => {
                    attempts += 1;
                    tracing::debug!(error = %err, attempts, "the gateway is unavailable; retrying");
                    tokio::time::sleep(Duration::from_millis(200 * attempts)).await;
                }
                other => return other,
            }
        }
    }
}

/// `http://a:8080, http://b:8080/` → `["http://a:8080", "http://b:8080"]`.
fn split_bases(bases: &str) -> Vec<String> {
    let list: Vec<String> =
        bases.split(',').map(|b| b.trim().trim_end_matches('/').to_owned()).filter(|b| !b.is_empty()).collect();
    if list.is_empty() {
        vec![String::new()]
    } else {
        list
    }
}

async fn check(response: reqwest::Response) -> Result<reqwest::Response, Error> {
    let status = response.status();
    if status.is_success() {
        Ok(response)
    } else if status.is_client_error() {
        Err(Error::Refused { status, body: response.text().await.unwrap_or_default() })
    } else {
        Err(Error::Unavailable(format!("{status}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gateway_list_is_split_and_trimmed() {
        assert_eq!(split_bases("http://a:8080"), ["http://a:8080"]);
        assert_eq!(split_bases(" http://a:8080/, http://b:8080 ,"), ["http://a:8080", "http://b:8080"]);
    }

    #[test]
    fn failing_over_moves_once_per_failed_replica_and_wraps_around() {
        let client = GatewayClient::new("http://a,http://b", "t");
        assert_eq!(client.base(), "http://a");
        client.fail_over("http://a");
        client.fail_over("http://a"); // a second failure seen on the old replica moves nothing
        assert_eq!(client.base(), "http://b");
        client.fail_over("http://b");
        assert_eq!(client.base(), "http://a");
        let single = GatewayClient::new("http://a", "t");
        single.fail_over("http://a");
        assert_eq!(single.base(), "http://a");
    }
}

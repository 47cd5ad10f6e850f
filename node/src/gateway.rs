//! Node → gateway calls: registration, heartbeats, reports, logs and bundle
//! downloads. Reports and log batches are retried until the gateway
//! acknowledges them, so a gateway restart loses nothing.

use std::time::Duration;

use reqwest::StatusCode;

/// A client for the gateway's node-facing routes.
#[derive(Clone)]
pub struct GatewayClient {
    http: reqwest::Client,
    base: String,
    token: String,
}

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
    /// A client for `base` (e.g. `http://127.0.0.1:8080`) using a node token.
    pub fn new(base: &str, token: &str) -> GatewayClient {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(3))
            .timeout(Duration::from_secs(30))
            .build()
            .expect("reqwest client");
        GatewayClient { http, base: base.trim_end_matches('/').to_owned(), token: token.to_owned() }
    }

    async fn post<T: serde::Serialize>(&self, path: &str, body: &T) -> Result<reqwest::Response, Error> {
        let response = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .json(body)
            .send()
            .await
            .map_err(|e| Error::Unavailable(e.to_string()))?;
        check(response).await
    }

    /// Trades a single-use join token for this node's identity and token
    /// (no bearer token yet: the join token is the credential).
    pub async fn join(base: &str, request: &wire::JoinNode) -> Result<wire::NodeJoined, Error> {
        GatewayClient::new(base, "")
            .http
            .post(format!("{}/v1/nodes/join", base.trim_end_matches('/')))
            .json(request)
            .send()
            .await
            .map_err(|e| Error::Unavailable(e.to_string()))
            .map(check)?
            .await?
            .json()
            .await
            .map_err(|e| Error::Unavailable(e.to_string()))
    }

    /// Registers this node.
    pub async fn register(&self, node: &wire::RegisterNode) -> Result<wire::NodeRegistered, Error> {
        self.post("/v1/nodes", node).await?.json().await.map_err(|e| Error::Unavailable(e.to_string()))
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

    /// Downloads a bundle's bytes, retrying while the gateway is unavailable.
    pub async fn bundle(&self, sha256: &str) -> Result<Vec<u8>, Error> {
        let mut attempts = 0;
        loop {
            let result = async {
                let response = self
                    .http
                    .get(format!("{}/v1/bundles/{sha256}", self.base))
                    .bearer_auth(&self.token)
                    .send()
                    .await
                    .map_err(|e| Error::Unavailable(e.to_string()))?;
                let response = check(response).await?;
                response.bytes().await.map(|b| b.to_vec()).map_err(|e| Error::Unavailable(e.to_string()))
            }
            .await;
            match result {
                Err(Error::Unavailable(_)) if attempts < 10 => {
                    attempts += 1;
                    tokio::time::sleep(Duration::from_millis(200 * attempts)).await;
                }
                other => return other,
            }
        }
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

//! Gateway → node calls. Each request carries a short-lived JWT signed with
//! the node's own key (sent at registration), so a node runs code only for
//! its gateway.

use std::time::Duration;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Serialize;

use crate::db::NodeEndpoint;

/// Why a call could not be handed to a node.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// The node certainly did not start the call: `unreachable` if no
    /// connection could be made, else it refused (full, or a bad request).
    #[error("node refused the call: {message}")]
    Refused { message: String, unreachable: bool },
    /// The request may or may not have reached the node.
    #[error("unknown whether the node got the call: {0}")]
    Unknown(String),
}

/// What a node said to a cancel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelOutcome {
    /// The node is stopping the call and will confirm.
    Accepted,
    /// The node does not run the call (any more).
    UnknownCall,
}

#[derive(Serialize)]
struct GatewayClaims<'a> {
    sub: &'a str,
    aud: String,
    iat: i64,
    exp: i64,
}

/// A small typed client for the node API.
#[derive(Clone)]
pub struct NodeClient {
    http: reqwest::Client,
}

impl Default for NodeClient {
    fn default() -> Self {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(10))
            .pool_max_idle_per_host(64)
            .build()
            .expect("reqwest client");
        NodeClient { http }
    }
}

impl NodeClient {
    fn token(node: &NodeEndpoint) -> String {
        let now = chrono::Utc::now().timestamp();
        let claims = GatewayClaims { sub: "gateway", aud: node.node_id.to_string(), iat: now, exp: now + 60 };
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(node.api_secret.as_bytes()),
        )
        .expect("HS256 signing cannot fail")
    }

    /// Hands a call to the node. A node that already has the call answers 2xx too.
    pub async fn start(&self, node: &NodeEndpoint, call: &wire::StartCall) -> Result<(), ForwardError> {
        let response = self
            .http
            .post(format!("{}/calls", node.address.trim_end_matches('/')))
            .bearer_auth(Self::token(node))
            .json(call)
            .send()
            .await
            .map_err(|err| {
                if err.is_connect() || err.is_builder() {
                    ForwardError::Refused { message: err.to_string(), unreachable: true }
                } else {
                    ForwardError::Unknown(err.to_string())
                }
            })?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let body = response.text().await.unwrap_or_default();
        if status.is_client_error() || status == reqwest::StatusCode::SERVICE_UNAVAILABLE {
            Err(ForwardError::Refused { message: format!("{status}: {body}"), unreachable: false })
        } else {
            Err(ForwardError::Unknown(format!("{status}: {body}")))
        }
    }

    /// Asks the node to stop a call.
    pub async fn cancel(
        &self,
        node: &NodeEndpoint,
        dispatch_id: uuid::Uuid,
        cancel: &wire::CancelCall,
    ) -> Result<CancelOutcome, String> {
        let response = self
            .http
            .post(format!("{}/calls/{dispatch_id}/cancel", node.address.trim_end_matches('/')))
            .bearer_auth(Self::token(node))
            .json(cancel)
            .send()
            .await
            .map_err(|err| err.to_string())?;
        match response.status() {
            s if s.is_success() => Ok(CancelOutcome::Accepted),
            reqwest::StatusCode::NOT_FOUND => Ok(CancelOutcome::UnknownCall),
            s => Err(format!("node answered {s}")),
        }
    }

    /// Asks the node to stop an instance's worker (404: it has none; also done).
    pub async fn stop_instance(&self, node: &NodeEndpoint, instance_id: uuid::Uuid) -> Result<(), String> {
        let response = self
            .http
            .post(format!("{}/instances/{instance_id}/stop", node.address.trim_end_matches('/')))
            .bearer_auth(Self::token(node))
            .send()
            .await
            .map_err(|err| err.to_string())?;
        match response.status() {
            s if s.is_success() || s == reqwest::StatusCode::NOT_FOUND => Ok(()),
            s => Err(format!("node answered {s}")),
        }
    }
}

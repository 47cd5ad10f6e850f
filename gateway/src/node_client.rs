//! Gateway → node calls. Each request carries a short-lived JWT signed with
//! the node's own key (sent at registration), so a node runs code only for
//! its gateway, whether the request travels over the node's link or HTTP.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use link::LinkError;
use reqwest::StatusCode;
use serde::Serialize;

use crate::db::NodeEndpoint;
use crate::node_link::Links;

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

/// A small typed client for the node API: over the node's link when this
/// replica holds it, else over HTTP to the address the node registered.
#[derive(Clone)]
pub struct NodeClient {
    http: reqwest::Client,
    /// The node links this replica holds.
    pub links: Arc<Links>,
}

impl Default for NodeClient {
    fn default() -> Self {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(2))
            .timeout(REQUEST_TIMEOUT)
            .pool_max_idle_per_host(64)
            .build()
            .expect("reqwest client");
        NodeClient { http, links: Arc::default() }
    }
}

/// How long a node has to answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a request to a node has no answer.
enum NoAnswer {
    /// It certainly did not reach the node.
    NotSent(String),
    /// It may or may not have.
    Unknown(String),
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

    /// `POST path` on the node, signed for it, with `body`: over its link if
    /// this replica holds one, else (or if that link just closed) over HTTP.
    async fn post<T: Serialize>(
        &self,
        node: &NodeEndpoint,
        path: &str,
        body: Option<&T>,
    ) -> Result<link::Answer, NoAnswer> {
        let token = Self::token(node);
        if let Some(peer) = self.links.get(node.node_id) {
            self.links.sent.fetch_add(1, Ordering::Relaxed);
            match peer.request("POST", path, Some(&token), body, REQUEST_TIMEOUT).await {
                Ok(answer) => return Ok(answer),
                Err(LinkError::Closed) => {}
                Err(err) => return Err(NoAnswer::Unknown(err.to_string())),
            }
        }
        let mut request = self.http.post(format!("{}{path}", node.address.trim_end_matches('/'))).bearer_auth(token);
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.map_err(|err| {
            if err.is_connect() || err.is_builder() {
                NoAnswer::NotSent(err.to_string())
            } else {
                NoAnswer::Unknown(err.to_string())
            }
        })?;
        let status = response.status().as_u16();
        Ok(link::Answer { status, body: response.text().await.unwrap_or_default() })
    }

    /// Hands a call to the node. A node that already has the call answers 2xx too.
    pub async fn start(&self, node: &NodeEndpoint, call: &wire::StartCall) -> Result<(), ForwardError> {
        let answer = self.post(node, "/calls", Some(call)).await.map_err(|err| match err {
            NoAnswer::NotSent(message) => ForwardError::Refused { message, unreachable: true },
            NoAnswer::Unknown(message) => ForwardError::Unknown(message),
        })?;
        let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::BAD_GATEWAY);
        if status.is_success() {
            Ok(())
        } else if status.is_client_error() || status == StatusCode::SERVICE_UNAVAILABLE {
            Err(ForwardError::Refused { message: format!("{status}: {}", answer.body), unreachable: false })
        } else {
            Err(ForwardError::Unknown(format!("{status}: {}", answer.body)))
        }
    }

    /// Asks the node to stop a call.
    pub async fn cancel(
        &self,
        node: &NodeEndpoint,
        dispatch_id: uuid::Uuid,
        cancel: &wire::CancelCall,
    ) -> Result<CancelOutcome, String> {
        let answer = self.post(node, &format!("/calls/{dispatch_id}/cancel"), Some(cancel)).await.map_err(text)?;
        match answer.status {
            _ if answer.is_success() => Ok(CancelOutcome::Accepted),
            404 => Ok(CancelOutcome::UnknownCall),
            s => Err(format!("node answered {s}")),
        }
    }

    /// Asks the node to stop an instance's worker (404: it has none; also done).
    pub async fn stop_instance(&self, node: &NodeEndpoint, instance_id: uuid::Uuid) -> Result<(), String> {
        let answer = self.post(node, &format!("/instances/{instance_id}/stop"), None::<&()>).await.map_err(text)?;
        match answer.status {
            _ if answer.is_success() => Ok(()),
            404 => Ok(()),
            s => Err(format!("node answered {s}")),
        }
    }
}

fn text(err: NoAnswer) -> String {
    match err {
        NoAnswer::NotSent(message) | NoAnswer::Unknown(message) => message,
    }
}

//! The node's HTTP API, called by its gateway: start, cancel and list calls.
//! Every route but `/healthz` requires a JWT signed with the key this node
//! sent at registration, addressed to this node's id: the node runs code, so
//! it takes orders only from its gateway.

use std::sync::{Arc, RwLock};

use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use crate::calls::{Calls, StartError};

/// What the API handlers share.
#[derive(Clone)]
pub struct NodeState {
    pub calls: Calls,
    /// The key the gateway signs with.
    pub secret: Arc<String>,
    /// This node's id, once registered; until then every signed route is refused.
    pub node_id: Arc<RwLock<Option<wire::NodeId>>>,
}

/// The node API router.
pub fn router(state: NodeState) -> Router {
    Router::new()
        .route("/calls", post(start).get(list))
        .route("/calls/{id}/cancel", post(cancel))
        .route("/instances/{id}/stop", post(stop_instance))
        .route("/healthz", get(|| async { Json(wire::Health { status: "ok".into() }) }))
        .with_state(state)
}

fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    let body = wire::ErrorBody { code: code.into(), message: message.into(), request_id: String::new(), field: None };
    (status, Json(body)).into_response()
}

/// A request signed by this node's gateway.
struct FromGateway;

#[derive(Deserialize)]
struct GatewayClaims {
    #[allow(dead_code)]
    sub: String,
}

impl FromRequestParts<NodeState> for FromGateway {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &NodeState) -> Result<Self, Self::Rejection> {
        let unauthorized = |message: &str| error(StatusCode::UNAUTHORIZED, "unauthenticated", message);
        let Some(node_id) = *state.node_id.read().expect("lock poisoned") else {
            return Err(error(
                StatusCode::SERVICE_UNAVAILABLE,
                "not_registered",
                "the node has not registered with its gateway yet",
            ));
        };
        let token = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| unauthorized("send `Authorization: Bearer <token signed by the gateway>`"))?;
        let mut validation = Validation::new(Algorithm::HS256);
        validation.algorithms = vec![Algorithm::HS256];
        validation.set_audience(&[node_id.to_string()]);
        validation.set_required_spec_claims(&["exp", "aud"]);
        jsonwebtoken::decode::<GatewayClaims>(token, &DecodingKey::from_secret(state.secret.as_bytes()), &validation)
            .map_err(|_| unauthorized("the request is not signed by this node's gateway"))?;
        Ok(FromGateway)
    }
}

async fn start(_: FromGateway, State(state): State<NodeState>, Json(call): Json<wire::StartCall>) -> Response {
    match state.calls.start(call) {
        Ok(()) => StatusCode::ACCEPTED.into_response(),
        Err(err @ StartError::Full(_)) => error(StatusCode::SERVICE_UNAVAILABLE, "node_full", err.to_string()),
        Err(err @ StartError::BadFunction(_)) => {
            error(StatusCode::UNPROCESSABLE_ENTITY, "invalid_function", err.to_string())
        }
    }
}

async fn cancel(
    _: FromGateway,
    State(state): State<NodeState>,
    Path(id): Path<uuid::Uuid>,
    Json(request): Json<wire::CancelCall>,
) -> Response {
    if state.calls.cancel(wire::DispatchId(id)) {
        tracing::info!(dispatch_id = %id, by = %request.by, reason = ?request.reason, "cancelling call");
        StatusCode::ACCEPTED.into_response()
    } else {
        error(StatusCode::NOT_FOUND, "not_found", format!("this node does not run dispatch {id}"))
    }
}

async fn list(_: FromGateway, State(state): State<NodeState>) -> Json<wire::RunningCalls> {
    Json(wire::RunningCalls { items: state.calls.running() })
}

async fn stop_instance(_: FromGateway, State(state): State<NodeState>, Path(id): Path<uuid::Uuid>) -> Response {
    if state.calls.stop_instance(id) {
        StatusCode::ACCEPTED.into_response()
    } else {
        error(StatusCode::NOT_FOUND, "not_found", format!("this node does not host instance {id}"))
    }
}

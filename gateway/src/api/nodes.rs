//! `/v1/nodes`: node daemons register and heartbeat here.

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use uuid::Uuid;
use wire::{Heartbeat, Node, NodeList, NodeRegistered, RegisterNode};

use super::auth::Authenticated;
use super::error::{
    ApiError, BadRequest, Forbidden, NotFound, PayloadTooLarge, Unauthorized, Unavailable, Unprocessable,
    UnsupportedMediaType,
};
use super::extract::{Json, Path};
use super::AppState;
use crate::auth::Scope;

/// Register a node (or re-register after a restart).
///
/// Takes a node credential, and registers exactly the node it names (its
/// `cluster` and `name` must match). Dispatches the gateway believed ran on this node but that `running` does
/// not list fail with `node_lost`.
#[utoipa::path(post, path = "/v1/nodes", tag = "nodes", operation_id = "node_register",
    request_body = RegisterNode,
    responses((status = 200, description = "Registered; heartbeat at the given interval.", body = NodeRegistered),
        BadRequest, Unauthorized, Forbidden, PayloadTooLarge, UnsupportedMediaType, Unprocessable, Unavailable),
    security(("bearer" = ["node"])))]
pub async fn node_register(
    State(state): State<AppState>,
    auth: Authenticated,
    Json(body): Json<RegisterNode>,
) -> Result<Json<NodeRegistered>, ApiError> {
    let caller = auth.require(Scope::Node)?;
    let node = state.app.node_register(&caller, body).await?;
    Ok(Json(NodeRegistered {
        node_id: wire::NodeId(node.node_id),
        heartbeat_interval_s: state.app.settings.nodes.heartbeat_interval_s,
        linked_heartbeat_interval_s: Some(state.app.settings.nodes.linked_heartbeat_interval_s),
        max_result_bytes: Some(state.app.settings.results.max_bytes as u64),
        artifact_limits: Some(wire::ArtifactLimits {
            max_file_bytes: state.app.settings.artifacts.max_file_bytes,
            max_call_bytes: state.app.settings.artifacts.max_call_bytes,
            max_files: state.app.settings.artifacts.max_files,
        }),
    }))
}

/// Heartbeat, listing the calls the node still runs. Only for the caller's own node.
#[utoipa::path(post, path = "/v1/nodes/{id}/heartbeat", tag = "nodes", operation_id = "node_heartbeat",
    params(("id" = Uuid, Path, description = "The node id.")),
    request_body = Heartbeat,
    responses((status = 200, description = "Recorded.", body = Node),
        BadRequest, Unauthorized, Forbidden, NotFound, PayloadTooLarge, UnsupportedMediaType, Unprocessable, Unavailable),
    security(("bearer" = ["node"])))]
pub async fn node_heartbeat(
    State(state): State<AppState>,
    auth: Authenticated,
    Path(id): Path<Uuid>,
    Json(body): Json<Heartbeat>,
) -> Result<Json<Node>, ApiError> {
    let caller = auth.require(Scope::Node)?;
    Ok(Json(state.app.node_heartbeat(&caller, id, body).await?.into()))
}

/// Open the node's link: a WebSocket the node keeps open, over which the
/// gateway sends it calls and cancels and it sends heartbeats, reports and
/// output (each message a request of the receiver's own API). Only for the
/// caller's own, registered node.
#[utoipa::path(get, path = "/v1/nodes/{id}/link", tag = "nodes", operation_id = "node_link",
    params(("id" = Uuid, Path, description = "The node id.")),
    responses((status = 101, description = "Switched to the WebSocket protocol: the link is open."),
        BadRequest, Unauthorized, Forbidden, NotFound, Unavailable),
    security(("bearer" = ["node"])))]
pub async fn node_link(
    State(state): State<AppState>,
    auth: Authenticated,
    Path(id): Path<Uuid>,
    headers: axum::http::HeaderMap,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let caller = auth.require(Scope::Node)?;
    state.app.node_link_check(&caller, id).await?;
    let upgrade = upgrade.map_err(|rejection| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "not_an_upgrade",
            format!(
                "this route opens a WebSocket: send GET with `Connection: upgrade`, `Upgrade: websocket`, \
                 `Sec-WebSocket-Version: 13` and a `Sec-WebSocket-Key` ({rejection})"
            ),
        )
    })?;
    // Authenticated already, so the header is there.
    let token = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default()
        .trim()
        .to_owned();
    Ok(upgrade
        .read_buffer_size(link::READ_BUFFER_BYTES)
        .max_message_size(link::MAX_MESSAGE_BYTES)
        .max_frame_size(link::MAX_MESSAGE_BYTES)
        .on_upgrade(move |socket| crate::node_link::serve(state, id, token, socket)))
}

/// List the project's nodes, with their addresses.
#[utoipa::path(get, path = "/v1/nodes", tag = "nodes", operation_id = "node_list",
    responses((status = 200, description = "Every node of the token's project.", body = NodeList), Unauthorized, Forbidden, Unavailable),
    security(("bearer" = ["admin"])))]
pub async fn node_list(State(state): State<AppState>, auth: Authenticated) -> Result<Json<NodeList>, ApiError> {
    let caller = auth.require(Scope::Admin)?;
    let items = state.app.node_list(&caller).await?.into_iter().map(|n| super::views::node_view(n, true)).collect();
    Ok(Json(NodeList { items }))
}

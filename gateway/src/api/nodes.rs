//! `/v1/nodes`: node daemons register and heartbeat here.

use axum::extract::State;
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

/// List the project's nodes, with their addresses.
#[utoipa::path(get, path = "/v1/nodes", tag = "nodes", operation_id = "node_list",
    responses((status = 200, description = "Every node of the token's project.", body = NodeList), Unauthorized, Forbidden, Unavailable),
    security(("bearer" = ["admin"])))]
pub async fn node_list(State(state): State<AppState>, auth: Authenticated) -> Result<Json<NodeList>, ApiError> {
    let caller = auth.require(Scope::Admin)?;
    let items = state.app.node_list(&caller).await?.into_iter().map(|n| super::views::node_view(n, true)).collect();
    Ok(Json(NodeList { items }))
}

//! `/v1/clusters`: compute the gateway provisions; `/v1/nodes/join` and
//! `/v1/node-binary`: how a new machine becomes a node.

use axum::body::Body;
use axum::extract::State;
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use wire::{Cluster, ClusterList, CreateCluster, JoinNode, JoinTokenCreated, ListClusters, NodeJoined};

use super::auth::Authenticated;
use super::error::{
    ApiError, BadRequest, Conflict, Forbidden, NotFound, PayloadTooLarge, Unauthorized, Unavailable, Unprocessable,
    UnsupportedMediaType,
};
use super::extract::{Json, Path, Query};
use super::AppState;
use crate::app::cluster::ClusterView;
use crate::auth::Scope;

/// Create a cluster: the gateway provisions its machines, which join as nodes.
///
/// It starts `provisioning` and becomes `ready` once `count` nodes joined,
/// or `failed` with the provider's message. Dispatches naming it queue until then.
#[utoipa::path(post, path = "/v1/clusters", tag = "clusters", operation_id = "cluster_create",
    request_body = CreateCluster,
    responses((status = 201, description = "Provisioning.", body = Cluster),
        BadRequest, Unauthorized, Forbidden, Conflict, PayloadTooLarge, UnsupportedMediaType, Unprocessable, Unavailable),
    security(("bearer" = ["admin"])))]
pub async fn cluster_create(
    State(state): State<AppState>,
    auth: Authenticated,
    Json(body): Json<CreateCluster>,
) -> Result<(StatusCode, Json<Cluster>), ApiError> {
    let caller = auth.require(Scope::Admin)?;
    let view = state.app.cluster_create(&caller, body).await?;
    Ok((StatusCode::CREATED, Json(cluster_view(view, true))))
}

/// List clusters, newest first (live ones unless `all=true`).
#[utoipa::path(get, path = "/v1/clusters", tag = "clusters", operation_id = "cluster_list",
    params(ListClusters),
    responses((status = 200, description = "Clusters.", body = ClusterList), Unauthorized, Forbidden, Unprocessable, Unavailable),
    security(("bearer" = ["dispatch:read"])))]
pub async fn cluster_list(
    State(state): State<AppState>,
    auth: Authenticated,
    Query(query): Query<ListClusters>,
) -> Result<Json<ClusterList>, ApiError> {
    let caller = auth.require(Scope::DispatchRead)?;
    let admin = caller.has(Scope::Admin);
    let items = state.app.cluster_list(&caller, query.all).await?.into_iter().map(|v| cluster_view(v, admin)).collect();
    Ok(Json(ClusterList { items }))
}

/// Get a cluster by name: the live one, or else the most recent that ended.
#[utoipa::path(get, path = "/v1/clusters/{name}", tag = "clusters", operation_id = "cluster_get",
    params(("name" = String, Path, description = "The cluster name.")),
    responses((status = 200, description = "The cluster, its machines and nodes.", body = Cluster),
        Unauthorized, Forbidden, NotFound, Unavailable),
    security(("bearer" = ["dispatch:read"])))]
pub async fn cluster_get(
    State(state): State<AppState>,
    auth: Authenticated,
    Path(name): Path<String>,
) -> Result<Json<Cluster>, ApiError> {
    let caller = auth.require(Scope::DispatchRead)?;
    let admin = caller.has(Scope::Admin);
    Ok(Json(cluster_view(state.app.cluster_get(&caller, &name).await?, admin)))
}

/// Stop a cluster: it becomes `stopping`, its machines are terminated, then it is `terminated`.
///
/// Idempotent. Dispatches still queued for it fail with `cluster_terminated`,
/// unless a profile will bring the cluster back for them.
#[utoipa::path(delete, path = "/v1/clusters/{name}", tag = "clusters", operation_id = "cluster_delete",
    params(("name" = String, Path, description = "The cluster name.")),
    responses((status = 202, description = "Stopping (or already ended).", body = Cluster),
        Unauthorized, Forbidden, NotFound, Unavailable),
    security(("bearer" = ["admin"])))]
pub async fn cluster_delete(
    State(state): State<AppState>,
    auth: Authenticated,
    Path(name): Path<String>,
) -> Result<(StatusCode, Json<Cluster>), ApiError> {
    let caller = auth.require(Scope::Admin)?;
    Ok((StatusCode::ACCEPTED, Json(cluster_view(state.app.cluster_delete(&caller, &name).await?, true))))
}

/// A single-use join token for one more existing host of a `static` cluster.
///
/// Run the returned `command` on the host; the token works once, before `expires_at`.
#[utoipa::path(post, path = "/v1/clusters/{name}/join-tokens", tag = "clusters", operation_id = "cluster_join_token",
    params(("name" = String, Path, description = "The cluster name.")),
    responses((status = 201, description = "A new join token.", body = JoinTokenCreated),
        Unauthorized, Forbidden, NotFound, Unprocessable, Unavailable),
    security(("bearer" = ["admin"])))]
pub async fn cluster_join_token(
    State(state): State<AppState>,
    auth: Authenticated,
    Path(name): Path<String>,
) -> Result<(StatusCode, Json<JoinTokenCreated>), ApiError> {
    let caller = auth.require(Scope::Admin)?;
    Ok((StatusCode::CREATED, Json(state.app.cluster_join_token(&caller, &name).await?)))
}

/// A new machine trades its join token for its node name and a node token.
///
/// No bearer token: the join token in the body is the credential. It works
/// once, before it expires, and only while its cluster is live.
#[utoipa::path(post, path = "/v1/nodes/join", tag = "nodes", operation_id = "node_join",
    request_body = JoinNode,
    responses((status = 200, description = "Joined; register with the returned token.", body = NodeJoined),
        BadRequest, Unauthorized, PayloadTooLarge, UnsupportedMediaType, Unprocessable, Unavailable))]
pub async fn node_join(
    State(state): State<AppState>,
    Json(body): Json<JoinNode>,
) -> Result<Json<NodeJoined>, ApiError> {
    Ok(Json(state.app.node_join(&state.keys, body).await?))
}

/// Download the `rh-node` binary this gateway runs (for machine bootstrap).
///
/// Accepts a valid, unspent join token or any gateway token as
/// `Authorization: Bearer …`. The binary is built for the gateway's own
/// platform and Python; see the README's network and image requirements.
#[utoipa::path(get, path = "/v1/node-binary", tag = "nodes", operation_id = "node_binary",
    responses((status = 200, description = "The rh-node executable.", content_type = "application/octet-stream", body = wire::BinaryBody),
        Unauthorized, NotFound, Unavailable))]
pub async fn node_binary(State(state): State<AppState>, headers: HeaderMap) -> Result<impl IntoResponse, ApiError> {
    let token = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .ok_or_else(|| ApiError::unauthenticated("send `Authorization: Bearer <join token>`"))?;
    let allowed = if token.starts_with("rhj_") {
        state.app.db.join_token_valid(token).await?
    } else {
        state.keys.verify(token).map(|claims| !state.revocations.contains(&claims.jti)).unwrap_or(false)
    };
    if !allowed {
        return Err(ApiError::unauthenticated("the token is not a valid join token or gateway token"));
    }
    let path = crate::compute::local::node_binary_path(&state.app.settings).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "this gateway has no rh-node to serve; set compute.node_binary_path or compute.node_binary_url",
        )
    })?;
    let file = tokio::fs::File::open(&path).await.map_err(|err| {
        tracing::error!(path = %path.display(), error = %err, "cannot open rh-node");
        ApiError::new(StatusCode::NOT_FOUND, "not_found", "this gateway's rh-node is missing; see its log")
    })?;
    let body = Body::from_stream(tokio_util::io::ReaderStream::new(file));
    Ok(([(CONTENT_TYPE, "application/octet-stream")], body))
}

/// A cluster as the API shows it; node addresses only to admins of its project.
fn cluster_view(view: ClusterView, with_addresses: bool) -> Cluster {
    let row = view.row;
    Cluster {
        id: row.cluster_id,
        project: row.project,
        name: row.name,
        shared_with: row.shared_with,
        spec: serde_json::from_value(row.spec).unwrap_or_default(),
        profile: row.profile,
        state: match row.state {
            crate::db::ClusterState::Provisioning => wire::ClusterState::Provisioning,
            crate::db::ClusterState::Ready => wire::ClusterState::Ready,
            crate::db::ClusterState::Stopping => wire::ClusterState::Stopping,
            crate::db::ClusterState::Terminated => wire::ClusterState::Terminated,
            crate::db::ClusterState::Failed => wire::ClusterState::Failed,
        },
        state_reason: row.state_reason,
        created_by: row.created_by,
        created_at: row.created_at,
        ready_at: row.ready_at,
        terminated_at: row.terminated_at,
        instances: view
            .instances
            .into_iter()
            .map(|i| wire::ClusterInstance {
                node_name: i.node_name,
                state: match i.state {
                    crate::db::InstanceState::Requested => "requested",
                    crate::db::InstanceState::Created => "created",
                    crate::db::InstanceState::Terminating => "terminating",
                    crate::db::InstanceState::Terminated => "terminated",
                }
                .into(),
                provider_id: i.provider_id,
                joined_at: i.joined_at,
            })
            .collect(),
        nodes: view
            .nodes
            .into_iter()
            .filter(|n| n.state == crate::db::NodeState::Ready)
            .map(|n| super::views::node_view(n, with_addresses))
            .collect(),
    }
}

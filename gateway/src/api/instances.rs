//! `/v1/instances`: remote objects. A class constructed once on a node; its
//! methods are called with `POST /v1/dispatches` naming `instance` and `method`.

use axum::extract::State;
use axum::http::StatusCode;
use wire::{CreateInstance, Instance, InstanceList, ListClusters};

use super::auth::Authenticated;
use super::error::{
    ApiError, BadRequest, Conflict, Forbidden, NotFound, PayloadTooLarge, Unauthorized, Unavailable, Unprocessable,
    UnsupportedMediaType,
};
use super::extract::{Json, Path, Query};
use super::views::instance_view;
use super::AppState;
use crate::app::dispatch::Created;
use crate::auth::Scope;

/// Create an instance: construct `class(*args, **kwargs)` once, in a
/// dedicated worker of a node of `cluster`.
///
/// It starts `starting` (the constructor is a dispatch: see `constructor_id`
/// for its logs) and becomes `ready`, or `failed` with the constructor's
/// exception. Creating a live name again with the same fields returns it
/// (200: attach); with other fields it is a 409.
#[utoipa::path(post, path = "/v1/instances", tag = "instances", operation_id = "instance_create",
    request_body = CreateInstance,
    responses((status = 201, description = "Created; its constructor is queued or running.", body = Instance),
        (status = 200, description = "A live instance of that name and fields already exists.", body = Instance),
        BadRequest, Unauthorized, Forbidden, Conflict, PayloadTooLarge, UnsupportedMediaType, Unprocessable, Unavailable),
    security(("bearer" = ["dispatch:write"])))]
pub async fn instance_create(
    State(state): State<AppState>,
    auth: Authenticated,
    Json(body): Json<CreateInstance>,
) -> Result<(StatusCode, Json<Instance>), ApiError> {
    let caller = auth.require(Scope::DispatchWrite)?;
    let (row, created) = state.app.object_create(&caller, body).await?;
    let status = if created == Created::New { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(instance_view(row, Vec::new()))))
}

/// List the project's instances by name (live ones unless `all=true`).
#[utoipa::path(get, path = "/v1/instances", tag = "instances", operation_id = "instance_list",
    params(ListClusters),
    responses((status = 200, description = "Instances.", body = InstanceList), Unauthorized, Forbidden, Unprocessable, Unavailable),
    security(("bearer" = ["dispatch:read"])))]
pub async fn instance_list(
    State(state): State<AppState>,
    auth: Authenticated,
    Query(query): Query<ListClusters>,
) -> Result<Json<InstanceList>, ApiError> {
    let caller = auth.require(Scope::DispatchRead)?;
    let items = state
        .app
        .object_list(&caller, query.all)
        .await?
        .into_iter()
        .map(|row| instance_view(row, Vec::new()))
        .collect();
    Ok(Json(InstanceList { items }))
}

/// Get an instance (the live one of that name, else the latest deleted one) with its latest events.
#[utoipa::path(get, path = "/v1/instances/{name}", tag = "instances", operation_id = "instance_get",
    params(("name" = String, Path, description = "The instance name.")),
    responses((status = 200, description = "The instance.", body = Instance), Unauthorized, Forbidden, NotFound, Unavailable),
    security(("bearer" = ["dispatch:read"])))]
pub async fn instance_get(
    State(state): State<AppState>,
    auth: Authenticated,
    Path(name): Path<String>,
) -> Result<Json<Instance>, ApiError> {
    let caller = auth.require(Scope::DispatchRead)?;
    let (row, events) = state.app.object_get(&caller, &name).await?;
    Ok(Json(instance_view(row, events)))
}

/// Delete an instance: its queued and running method calls are cancelled and its worker is stopped.
#[utoipa::path(delete, path = "/v1/instances/{name}", tag = "instances", operation_id = "instance_delete",
    params(("name" = String, Path, description = "The instance name.")),
    responses((status = 200, description = "Deleted (or already deleted).", body = Instance), Unauthorized, Forbidden, NotFound, Unavailable),
    security(("bearer" = ["dispatch:write"])))]
pub async fn instance_delete(
    State(state): State<AppState>,
    auth: Authenticated,
    Path(name): Path<String>,
) -> Result<Json<Instance>, ApiError> {
    let caller = auth.require(Scope::DispatchWrite)?;
    Ok(Json(instance_view(state.app.object_delete(&caller, &name).await?, Vec::new())))
}

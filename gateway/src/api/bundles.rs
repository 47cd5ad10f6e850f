//! `/v1/bundles` and `/v1/functions`: code and named functions.

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use wire::{Bundle, Function, FunctionList, RegisterFunction};

use super::auth::Authenticated;
use super::error::{
    ApiError, BadRequest, Forbidden, NotFound, PayloadTooLarge, Unauthorized, Unavailable, Unprocessable,
    UnsupportedMediaType,
};
use super::extract::{Json, Path, Query};
use super::AppState;
use crate::auth::Scope;

/// Upload a code bundle: a tar.gz of a project folder.
///
/// Content-addressed by sha256 and stored once: uploading the same bytes
/// again returns the stored bundle (200). Archives that are not tar.gz, that
/// would unpack outside their folder, or that are too large are refused and
/// nothing is stored.
#[utoipa::path(post, path = "/v1/bundles", tag = "bundles", operation_id = "bundle_upload",
    params(wire::BundleSource),
    request_body(content = wire::BinaryBody, content_type = "application/gzip", description = "The tar.gz bytes."),
    responses(
        (status = 201, description = "Stored.", body = Bundle),
        (status = 200, description = "Already stored.", body = Bundle),
        Unauthorized, Forbidden, PayloadTooLarge, Unprocessable, Unavailable),
    security(("bearer" = ["dispatch:write"])))]
pub async fn bundle_upload(
    State(state): State<AppState>,
    auth: Authenticated,
    Query(source): Query<wire::BundleSource>,
    body: Body,
) -> Result<(StatusCode, Json<Bundle>), ApiError> {
    let caller = auth.require(Scope::DispatchWrite)?;
    let limit = state.app.settings.bundles.max_bytes;
    let bytes = axum::body::to_bytes(body, limit).await.map_err(|_| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!(
                "the bundle is larger than bundles.max_bytes ({limit} bytes); leave data and build outputs out of it"
            ),
        )
    })?;
    let (row, new) = state.app.bundle_put(&caller, bytes.to_vec(), source).await?;
    Ok((if new { StatusCode::CREATED } else { StatusCode::OK }, Json(row.into())))
}

/// Download a bundle's bytes: a project's own bundles, or, for a node, the
/// bundle of a dispatch running on it (nodes fetch code this way).
#[utoipa::path(get, path = "/v1/bundles/{sha256}", tag = "bundles", operation_id = "bundle_download",
    params(("sha256" = String, Path, description = "The bundle's sha256, hex.")),
    responses((status = 200, description = "The tar.gz bytes.", content_type = "application/gzip", body = wire::BinaryBody),
        Unauthorized, Forbidden, NotFound, Unavailable),
    security(("bearer" = ["dispatch:read"]), ("bearer" = ["node"])))]
pub async fn bundle_download(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    Path(sha256): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    if !(caller.has(Scope::Node) || caller.has(Scope::DispatchRead)) {
        return Err(ApiError::missing_scope(Scope::DispatchRead));
    }
    let data = state.app.bundle_data(&caller, &sha256).await?;
    Ok(([(header::CONTENT_TYPE, "application/gzip")], data))
}

/// Register (or replace) a named function.
#[utoipa::path(post, path = "/v1/functions", tag = "functions", operation_id = "function_register",
    request_body = RegisterFunction,
    responses((status = 200, description = "Registered.", body = Function),
        BadRequest, Unauthorized, Forbidden, PayloadTooLarge, UnsupportedMediaType, Unprocessable, Unavailable),
    security(("bearer" = ["dispatch:write"])))]
pub async fn function_register(
    State(state): State<AppState>,
    auth: Authenticated,
    Json(body): Json<RegisterFunction>,
) -> Result<Json<Function>, ApiError> {
    let caller = auth.require(Scope::DispatchWrite)?;
    Ok(Json(state.app.function_register(&caller, body).await?.into()))
}

/// List the project's named functions.
#[utoipa::path(get, path = "/v1/functions", tag = "functions", operation_id = "function_list",
    responses((status = 200, description = "Every named function.", body = FunctionList), Unauthorized, Forbidden, Unavailable),
    security(("bearer" = ["dispatch:read"])))]
pub async fn function_list(State(state): State<AppState>, auth: Authenticated) -> Result<Json<FunctionList>, ApiError> {
    let caller = auth.require(Scope::DispatchRead)?;
    let items = state.app.function_list(&caller).await?.into_iter().map(Into::into).collect();
    Ok(Json(FunctionList { items }))
}

/// Get one named function.
#[utoipa::path(get, path = "/v1/functions/{name}", tag = "functions", operation_id = "function_get",
    params(("name" = String, Path, description = "The function's name.")),
    responses((status = 200, description = "The function.", body = Function), BadRequest, Unauthorized, Forbidden, NotFound, Unavailable),
    security(("bearer" = ["dispatch:read"])))]
pub async fn function_get(
    State(state): State<AppState>,
    auth: Authenticated,
    Path(name): Path<String>,
) -> Result<Json<Function>, ApiError> {
    let caller = auth.require(Scope::DispatchRead)?;
    Ok(Json(state.app.function_get(&caller, &name).await?.into()))
}

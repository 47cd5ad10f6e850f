//! `/v1/dispatches/{id}/artifacts`: files calls keep. Nodes upload them while
//! the call runs; the project lists and downloads them.

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use uuid::Uuid;

use super::auth::Authenticated;
use super::error::{
    ApiError, BadRequest, Conflict, Forbidden, NotFound, PayloadTooLarge, Unauthorized, Unavailable, Unprocessable,
};
use super::extract::{Json, Path};
use super::AppState;
use crate::auth::Scope;

/// List the files a dispatch kept (what its call wrote under `$RH_OUTPUTS`).
#[utoipa::path(get, path = "/v1/dispatches/{id}/artifacts", tag = "dispatches", operation_id = "dispatch_artifacts",
    params(("id" = Uuid, Path, description = "The dispatch id.")),
    responses((status = 200, description = "Its artifacts, by path.", body = wire::ArtifactList),
        BadRequest, Unauthorized, Forbidden, NotFound, Unavailable),
    security(("bearer" = ["dispatch:read"])))]
pub async fn dispatch_artifacts(
    State(state): State<AppState>,
    auth: Authenticated,
    Path(id): Path<Uuid>,
) -> Result<Json<wire::ArtifactList>, ApiError> {
    let caller = auth.require(Scope::DispatchRead)?;
    let rows = state.app.artifact_list(&caller, id).await?;
    let total_bytes = rows.iter().map(|r| r.size_bytes).sum();
    Ok(Json(wire::ArtifactList { items: rows.into_iter().map(Into::into).collect(), total_bytes }))
}

/// Download one artifact's bytes. `path` is percent-encoded as one segment
/// (`plots%2Firis.png`). It is always sent as an attachment, with
/// `nosniff` and a sandboxing CSP: a kept file never runs as a page of the gateway.
#[utoipa::path(get, path = "/v1/dispatches/{id}/artifacts/{path}", tag = "dispatches", operation_id = "dispatch_artifact_get",
    params(("id" = Uuid, Path, description = "The dispatch id."),
        ("path" = String, Path, description = "The artifact's path, percent-encoded (`/` as `%2F`).")),
    responses((status = 200, description = "The bytes.", content_type = "application/octet-stream", body = wire::BinaryBody),
        BadRequest, Unauthorized, Forbidden, NotFound, Unavailable),
    security(("bearer" = ["dispatch:read"])))]
pub async fn dispatch_artifact_get(
    State(state): State<AppState>,
    auth: Authenticated,
    Path((id, path)): Path<(Uuid, String)>,
) -> Result<Response, ApiError> {
    let caller = auth.require(Scope::DispatchRead)?;
    let (row, bytes) = state.app.artifact_open(&caller, id, &path).await?;
    Ok(artifact_response(&row, bytes))
}

/// An artifact's bytes as a download that can never render as a page of the
/// gateway (the API and the dashboard both send it this way).
pub(crate) fn artifact_response<S, E>(row: &crate::db::ArtifactRow, bytes: S) -> Response
where
    S: futures::Stream<Item = Result<axum::body::Bytes, E>> + Send + 'static,
    E: Into<Box<dyn std::error::Error + Send + Sync>> + 'static,
{
    let path = &row.path;
    let name = path.rsplit('/').next().unwrap_or(path);
    // RFC 6266 `filename*`: the name percent-encoded, so no quote or newline can break the header.
    let encoded: String = name
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"._-".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    let disposition = HeaderValue::from_str(&format!("attachment; filename*=UTF-8''{encoded}"))
        .unwrap_or_else(|_| HeaderValue::from_static("attachment"));
    let content_type = HeaderValue::from_str(&row.content_type)
        .unwrap_or_else(|_| HeaderValue::from_static("application/octet-stream"));
    let mut response = Body::from_stream(bytes).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, content_type);
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(row.size_bytes));
    headers.insert(header::CONTENT_DISPOSITION, disposition);
    headers.insert(header::ETAG, HeaderValue::from_str(&format!("\"{}\"", row.sha256)).expect("hex is a valid header"));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static("sandbox; default-src 'none'"));
    response
}

/// Keep a file of a running call (its node only). The body is the file's
/// bytes, streamed; it is stored content-addressed once whole. Uploading the
/// same bytes to the same path again is harmless.
#[utoipa::path(put, path = "/v1/dispatches/{id}/artifacts/{path}", tag = "nodes", operation_id = "dispatch_artifact_put",
    params(("id" = Uuid, Path, description = "The dispatch id."),
        ("path" = String, Path, description = "The artifact's path under `$RH_OUTPUTS`, percent-encoded.")),
    request_body(content = wire::BinaryBody, content_type = "application/octet-stream", description = "The file's bytes."),
    responses((status = 201, description = "Kept.", body = wire::Artifact),
        (status = 200, description = "Already kept with these bytes.", body = wire::Artifact),
        BadRequest, Unauthorized, Forbidden, NotFound, Conflict, PayloadTooLarge, Unprocessable, Unavailable),
    security(("bearer" = ["node"])))]
pub async fn dispatch_artifact_put(
    State(state): State<AppState>,
    auth: Authenticated,
    Path((id, path)): Path<(Uuid, String)>,
    body: Body,
) -> Result<(StatusCode, Json<wire::Artifact>), ApiError> {
    let caller = auth.require(Scope::Node)?;
    let (row, new) = state.app.artifact_put(&caller, id, &path, body.into_data_stream()).await?;
    Ok((if new { StatusCode::CREATED } else { StatusCode::OK }, Json(row.into())))
}

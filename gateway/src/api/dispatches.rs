//! `/v1/dispatches`: create, read, list, cancel, wait, events and reports.
//!
//! Handlers only extract, check the scope, call `app` and map to views.

use axum::extract::State;
use axum::http::StatusCode;
use uuid::Uuid;
use wire::{
    CancelDispatch, CreateDispatch, CreateQuery, Dispatch, DispatchEventList, DispatchPage, ListDispatches, Report,
    WaitQuery,
};

use super::auth::Authenticated;
use super::error::{
    ApiError, BadRequest, Conflict, Forbidden, NotFound, PayloadTooLarge, Unauthorized, Unavailable, Unprocessable,
    UnsupportedMediaType,
};
use super::extract::{Json, LosslessJson, Path, Query};
use super::AppState;
use crate::app::dispatch::Created;
use crate::auth::Scope;

/// Record a dispatch: one remote call of a Python function.
///
/// With an `idempotency_key`, retrying is safe: the same key and body return
/// the existing dispatch (200), the same key with another body is a 409.
#[utoipa::path(post, path = "/v1/dispatches", tag = "dispatches", operation_id = "dispatch_create",
    params(CreateQuery),
    request_body = CreateDispatch,
    responses(
        (status = 201, description = "Recorded: `queued`, or already `running` when a node of its cluster had a free slot (placed in the same commit); with `wait_s`, as it ended, or as it is when that time ran out.", body = Dispatch),
        (status = 200, description = "An earlier request with the same idempotency key and body made this dispatch.", body = Dispatch),
        BadRequest, Unauthorized, Forbidden, Conflict, PayloadTooLarge, UnsupportedMediaType, Unprocessable, Unavailable
    ),
    security(("bearer" = ["dispatch:write"])))]
pub async fn dispatch_create(
    State(state): State<AppState>,
    auth: Authenticated,
    Query(query): Query<CreateQuery>,
    Json(body): Json<CreateDispatch>,
) -> Result<(StatusCode, Json<Dispatch>), ApiError> {
    let caller = auth.require(Scope::DispatchWrite)?;
    let (row, created) = state.app.dispatch_create(&caller, body, query.wait_s).await?;
    let status = if created == Created::New { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(with_queued_reason(&state, row).await?)))
}

/// List the project's dispatches, newest first, with filters and cursor pagination.
///
/// Pages are keyset-paginated on the id, so rows created while you page
/// never shift or repeat the pages you have not read yet.
#[utoipa::path(get, path = "/v1/dispatches", tag = "dispatches", operation_id = "dispatch_list",
    params(ListDispatches),
    responses((status = 200, description = "A page of dispatches.", body = DispatchPage), Unauthorized, Forbidden, Unprocessable, Unavailable),
    security(("bearer" = ["dispatch:read"])))]
pub async fn dispatch_list(
    State(state): State<AppState>,
    auth: Authenticated,
    Query(query): Query<ListDispatches>,
) -> Result<Json<DispatchPage>, ApiError> {
    let caller = auth.require(Scope::DispatchRead)?;
    let (rows, next_cursor) = state.app.dispatch_list(&caller, query).await?;
    Ok(Json(DispatchPage { items: rows.into_iter().map(Into::into).collect(), next_cursor }))
}

/// Get one dispatch.
#[utoipa::path(get, path = "/v1/dispatches/{id}", tag = "dispatches", operation_id = "dispatch_get",
    params(("id" = Uuid, Path, description = "The dispatch id.")),
    responses((status = 200, description = "The dispatch.", body = Dispatch), BadRequest, Unauthorized, Forbidden, NotFound, Unavailable),
    security(("bearer" = ["dispatch:read"])))]
pub async fn dispatch_get(
    State(state): State<AppState>,
    auth: Authenticated,
    Path(id): Path<Uuid>,
) -> Result<Json<Dispatch>, ApiError> {
    let caller = auth.require(Scope::DispatchRead)?;
    let row = state.app.dispatch_get(&caller, id).await?;
    Ok(Json(with_queued_reason(&state, row).await?))
}

/// Cancel a dispatch.
///
/// A queued dispatch becomes `cancelled` at once; a running one becomes
/// `cancelling` until its node confirms. Idempotent: cancelling a dispatch
/// that is already cancelling or finished returns it unchanged.
#[utoipa::path(post, path = "/v1/dispatches/{id}/cancel", tag = "dispatches", operation_id = "dispatch_cancel",
    params(("id" = Uuid, Path, description = "The dispatch id.")),
    request_body(content = CancelDispatch, description = "Optional; an empty object is fine."),
    responses((status = 200, description = "The dispatch after the cancel.", body = Dispatch),
        BadRequest, Unauthorized, Forbidden, NotFound, PayloadTooLarge, UnsupportedMediaType, Unprocessable, Unavailable),
    security(("bearer" = ["dispatch:write"])))]
pub async fn dispatch_cancel(
    State(state): State<AppState>,
    auth: Authenticated,
    Path(id): Path<Uuid>,
    Json(body): Json<CancelDispatch>,
) -> Result<Json<Dispatch>, ApiError> {
    let caller = auth.require(Scope::DispatchWrite)?;
    Ok(Json(state.app.dispatch_cancel(&caller, id, body.reason).await?.into()))
}

/// The dispatch's append-only event log, oldest first.
#[utoipa::path(get, path = "/v1/dispatches/{id}/events", tag = "dispatches", operation_id = "dispatch_events",
    params(("id" = Uuid, Path, description = "The dispatch id.")),
    responses((status = 200, description = "Every transition, with actor and reason.", body = DispatchEventList),
        BadRequest, Unauthorized, Forbidden, NotFound, Unavailable),
    security(("bearer" = ["dispatch:read"])))]
pub async fn dispatch_events(
    State(state): State<AppState>,
    auth: Authenticated,
    Path(id): Path<Uuid>,
) -> Result<Json<DispatchEventList>, ApiError> {
    let caller = auth.require(Scope::DispatchRead)?;
    let rows = state.app.dispatch_events(&caller, id).await?;
    Ok(Json(DispatchEventList { items: rows.into_iter().map(Into::into).collect() }))
}

/// Long-poll until the dispatch is terminal.
///
/// Returns as soon as the dispatch reaches `succeeded`, `failed`,
/// `cancelled` or `timed_out`, or after `timeout_s` with its current state.
/// Check `state` in the response to tell the two apart.
#[utoipa::path(get, path = "/v1/dispatches/{id}/wait", tag = "dispatches", operation_id = "dispatch_wait",
    params(("id" = Uuid, Path, description = "The dispatch id."), WaitQuery),
    responses((status = 200, description = "The dispatch, terminal or as it stood at the timeout.", body = Dispatch),
        BadRequest, Unauthorized, Forbidden, NotFound, Unprocessable, Unavailable),
    security(("bearer" = ["dispatch:read"])))]
pub async fn dispatch_wait(
    State(state): State<AppState>,
    auth: Authenticated,
    Path(id): Path<Uuid>,
    Query(query): Query<WaitQuery>,
) -> Result<Json<Dispatch>, ApiError> {
    let caller = auth.require(Scope::DispatchRead)?;
    let row = state.app.dispatch_wait(&caller, id, query.timeout_s).await?;
    Ok(Json(Box::pin(with_queued_reason(&state, row)).await?))
}

/// Report a state change observed on a node.
///
/// Used by node daemons, with the credential of the node the dispatch is
/// placed on (any other node gets 404), and by operators with an `admin`
/// token of the dispatch's project. The change goes through the dispatch
/// state machine: an illegal one is a 409 naming both states. A result over
/// `results.max_bytes` fails the dispatch with `result_too_large`.
#[utoipa::path(post, path = "/v1/dispatches/{id}/reports", tag = "nodes", operation_id = "dispatch_report",
    params(("id" = Uuid, Path, description = "The dispatch id.")),
    request_body = Report,
    responses((status = 200, description = "The dispatch after the change.", body = Dispatch),
        BadRequest, Unauthorized, Forbidden, NotFound, Conflict, PayloadTooLarge, UnsupportedMediaType, Unprocessable, Unavailable),
    security(("bearer" = ["node"])))]
pub async fn dispatch_report(
    State(state): State<AppState>,
    auth: Authenticated,
    Path(id): Path<Uuid>,
    LosslessJson(body): LosslessJson<Report>,
) -> Result<Json<Dispatch>, ApiError> {
    let Authenticated(caller) = auth;
    Ok(Json(state.app.dispatch_report(&caller, id, body).await?.into()))
}

/// The view of `row`, saying why it waits if it is still queued.
async fn with_queued_reason(state: &AppState, row: crate::db::DispatchRow) -> Result<Dispatch, ApiError> {
    let queued = (row.state == crate::dispatch::DispatchState::Queued).then(|| row.cluster_key());
    let mut view: Dispatch = row.into();
    if let Some(cluster) = queued {
        view.queued_reason = Some(state.app.queued_reason(&cluster).await?);
    }
    Ok(view)
}

/// The run record of a dispatch: everything needed to run the call again.
///
/// Code (bundle, entry point), arguments and their hash, the requirement set
/// as asked and as resolved on the node, the interpreter and platform, the
/// names of the environment variables the call saw, and where it ran. Stored
/// once when the call starts; its state and timings are read live. 404 until
/// the call has started.
#[utoipa::path(get, path = "/v1/dispatches/{id}/record", tag = "dispatches", operation_id = "dispatch_record",
    params(("id" = Uuid, Path, description = "The dispatch id.")),
    responses((status = 200, description = "The run record.", body = wire::RunRecord),
        BadRequest, Unauthorized, Forbidden, NotFound, Unavailable),
    security(("bearer" = ["dispatch:read"])))]
pub async fn dispatch_record(
    State(state): State<AppState>,
    auth: Authenticated,
    Path(id): Path<Uuid>,
) -> Result<Json<wire::RunRecord>, ApiError> {
    let caller = auth.require(Scope::DispatchRead)?;
    Ok(Json(state.app.record_get(&caller, id).await?))
}

/// A node records what its calls run with, in batches (node credential only; a dispatch's first record stays).
#[utoipa::path(post, path = "/v1/dispatches/records", tag = "nodes", operation_id = "dispatch_records_store",
    request_body = wire::RunRecordBatch,
    responses((status = 204, description = "Stored (records of dispatches not placed on this node are dropped)."),
        BadRequest, Unauthorized, Forbidden, NotFound, PayloadTooLarge, UnsupportedMediaType, Unprocessable, Unavailable),
    security(("bearer" = ["node"])))]
pub async fn dispatch_records_store(
    State(state): State<AppState>,
    auth: Authenticated,
    Json(body): Json<wire::RunRecordBatch>,
) -> Result<StatusCode, ApiError> {
    let caller = auth.require(Scope::Node)?;
    state.app.records_store(&caller, body).await?;
    Ok(StatusCode::NO_CONTENT)
}

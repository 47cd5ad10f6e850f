//! `/v1/schedules`: cron schedules that fire dispatches.

use axum::extract::State;
use axum::http::StatusCode;
use wire::{CreateSchedule, DispatchPage, ListDispatches, Schedule, ScheduleList, UpdateSchedule};

use super::auth::Authenticated;
use super::error::{
    ApiError, BadRequest, Conflict, Forbidden, NotFound, PayloadTooLarge, Unauthorized, Unavailable, Unprocessable,
    UnsupportedMediaType,
};
use super::extract::{Json, Path, Query};
use super::AppState;
use crate::auth::Scope;

/// Create a schedule: its dispatch is created at every instant the cron expression names.
///
/// Each fire is one dispatch, labelled `schedule` and `scheduled_for`, with an
/// idempotency key derived from the schedule and the instant: any number of
/// gateway replicas firing the same instant make one dispatch.
#[utoipa::path(post, path = "/v1/schedules", tag = "schedules", operation_id = "schedule_create",
    request_body = CreateSchedule,
    responses((status = 201, description = "Created; `upcoming` lists its next fire times.", body = Schedule),
        BadRequest, Unauthorized, Forbidden, Conflict, PayloadTooLarge, UnsupportedMediaType, Unprocessable, Unavailable),
    security(("bearer" = ["dispatch:write"])))]
pub async fn schedule_create(
    State(state): State<AppState>,
    auth: Authenticated,
    Json(body): Json<CreateSchedule>,
) -> Result<(StatusCode, Json<Schedule>), ApiError> {
    let caller = auth.require(Scope::DispatchWrite)?;
    Ok((StatusCode::CREATED, Json(state.app.schedule_create(&caller, body).await?)))
}

/// List the project's schedules, by name.
#[utoipa::path(get, path = "/v1/schedules", tag = "schedules", operation_id = "schedule_list",
    responses((status = 200, description = "Schedules.", body = ScheduleList), Unauthorized, Forbidden, Unavailable),
    security(("bearer" = ["dispatch:read"])))]
pub async fn schedule_list(State(state): State<AppState>, auth: Authenticated) -> Result<Json<ScheduleList>, ApiError> {
    let caller = auth.require(Scope::DispatchRead)?;
    Ok(Json(ScheduleList { items: state.app.schedule_list(&caller).await? }))
}

/// Get a schedule and its next fire times.
#[utoipa::path(get, path = "/v1/schedules/{name}", tag = "schedules", operation_id = "schedule_get",
    params(("name" = String, Path, description = "The schedule name.")),
    responses((status = 200, description = "The schedule.", body = Schedule), Unauthorized, Forbidden, NotFound, Unavailable),
    security(("bearer" = ["dispatch:read"])))]
pub async fn schedule_get(
    State(state): State<AppState>,
    auth: Authenticated,
    Path(name): Path<String>,
) -> Result<Json<Schedule>, ApiError> {
    let caller = auth.require(Scope::DispatchRead)?;
    Ok(Json(state.app.schedule_get(&caller, &name).await?))
}

/// Change a schedule: pause (`{"paused": true}`), resume, or edit any field.
///
/// Changing its timing, or resuming it, moves the next fire to the first
/// instant after now: fires missed while paused are not made up.
#[utoipa::path(patch, path = "/v1/schedules/{name}", tag = "schedules", operation_id = "schedule_update",
    params(("name" = String, Path, description = "The schedule name.")),
    request_body = UpdateSchedule,
    responses((status = 200, description = "The schedule as changed.", body = Schedule),
        BadRequest, Unauthorized, Forbidden, NotFound, PayloadTooLarge, UnsupportedMediaType, Unprocessable, Unavailable),
    security(("bearer" = ["dispatch:write"])))]
pub async fn schedule_update(
    State(state): State<AppState>,
    auth: Authenticated,
    Path(name): Path<String>,
    Json(body): Json<UpdateSchedule>,
) -> Result<Json<Schedule>, ApiError> {
    let caller = auth.require(Scope::DispatchWrite)?;
    Ok(Json(state.app.schedule_update(&caller, &name, body).await?))
}

/// Delete a schedule. Dispatches it already made stay, and keep running.
#[utoipa::path(delete, path = "/v1/schedules/{name}", tag = "schedules", operation_id = "schedule_delete",
    params(("name" = String, Path, description = "The schedule name.")),
    responses((status = 204, description = "Deleted."), Unauthorized, Forbidden, NotFound, Unavailable),
    security(("bearer" = ["dispatch:write"])))]
pub async fn schedule_delete(
    State(state): State<AppState>,
    auth: Authenticated,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    let caller = auth.require(Scope::DispatchWrite)?;
    state.app.schedule_delete(&caller, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Page through a schedule's dispatches, newest first (the filters of `GET /v1/dispatches`).
#[utoipa::path(get, path = "/v1/schedules/{name}/runs", tag = "schedules", operation_id = "schedule_runs",
    params(("name" = String, Path, description = "The schedule name."), ListDispatches),
    responses((status = 200, description = "A page of its dispatches.", body = DispatchPage),
        Unauthorized, Forbidden, NotFound, Unprocessable, Unavailable),
    security(("bearer" = ["dispatch:read"])))]
pub async fn schedule_runs(
    State(state): State<AppState>,
    auth: Authenticated,
    Path(name): Path<String>,
    Query(query): Query<ListDispatches>,
) -> Result<Json<DispatchPage>, ApiError> {
    let caller = auth.require(Scope::DispatchRead)?;
    let (rows, next_cursor) = state.app.schedule_runs(&caller, &name, query).await?;
    Ok(Json(DispatchPage { items: rows.into_iter().map(Into::into).collect(), next_cursor }))
}

//! `/v1/dispatches/{id}/logs`: nodes append output, clients read or follow it.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use uuid::Uuid;
use wire::{Dispatch, LogBatch, LogEntry, LogPage, LogQuery};

use super::auth::Authenticated;
use super::error::{
    ApiError, BadRequest, Forbidden, NotFound, PayloadTooLarge, Unauthorized, Unavailable, Unprocessable,
    UnsupportedMediaType,
};
use super::extract::{Json, LosslessJson, Path, Query};
use super::AppState;
use crate::auth::{Caller, Scope};
use crate::db::{DispatchRow, LogRow, LogStream};
use crate::notify::Subscription;

/// Append a batch of a call's output (nodes). Re-sending a batch is harmless.
#[utoipa::path(post, path = "/v1/dispatches/{id}/logs", tag = "nodes", operation_id = "dispatch_logs_append",
    params(("id" = Uuid, Path, description = "The dispatch id.")),
    request_body = LogBatch,
    responses((status = 204, description = "Stored (or already stored)."),
        BadRequest, Unauthorized, Forbidden, NotFound, PayloadTooLarge, UnsupportedMediaType, Unprocessable, Unavailable),
    security(("bearer" = ["node"])))]
pub async fn dispatch_logs_append(
    State(state): State<AppState>,
    auth: Authenticated,
    Path(id): Path<Uuid>,
    LosslessJson(body): LosslessJson<LogBatch>,
) -> Result<StatusCode, ApiError> {
    let caller = auth.require(Scope::Node)?;
    state.app.dispatch_logs_append(&caller, id, body).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Read a dispatch's stdout/stderr.
///
/// Without `follow`, returns the entries after `offset` as JSON. With
/// `follow=true`, streams them as server-sent events (`event: log`, data a
/// `LogEntry`) as they arrive, and ends with `event: end` once the dispatch
/// is terminal and everything has been sent; the `end` event's data is the
/// terminal dispatch, so a follower needs no further request for the result.
#[utoipa::path(get, path = "/v1/dispatches/{id}/logs", tag = "dispatches", operation_id = "dispatch_logs",
    params(("id" = Uuid, Path, description = "The dispatch id."), LogQuery),
    responses(
        (status = 200, description = "A page of output (JSON), or with `follow=true` a live stream of server-sent events: `event: log` (data: a LogEntry), and last `event: end` (data: the terminal Dispatch).",
            content(
                (LogPage = "application/json"),
                (wire::LogStreamEvent = "text/event-stream")
            )),
        BadRequest, Unauthorized, Forbidden, NotFound, Unprocessable, Unavailable),
    security(("bearer" = ["dispatch:read"])))]
pub async fn dispatch_logs(
    State(state): State<AppState>,
    auth: Authenticated,
    Path(id): Path<Uuid>,
    Query(query): Query<LogQuery>,
) -> Result<Response, ApiError> {
    let caller = auth.require(Scope::DispatchRead)?;
    let offset = query.offset.unwrap_or(0);
    if offset < 0 {
        return Err(crate::Error::invalid("offset", "`offset` must be 0 or more").into());
    }
    if query.follow.unwrap_or(false) {
        return follow_response(state, caller, id, offset).await;
    }
    let (row, rows, complete) = state.app.dispatch_logs_read(&caller, id, offset).await?;
    let next_offset = rows.last().map_or(offset, |r| r.seq);
    let entries = rows.into_iter().map(entry).collect();
    Ok(Json(LogPage { entries, next_offset, complete, truncated: row.log_truncated }).into_response())
}

/// The server-sent event stream of a dispatch's output after `offset`, as
/// `GET /v1/dispatches/{id}/logs?follow=true` serves it (the dashboard's run
/// page follows the same stream).
pub(crate) async fn follow_response(
    state: AppState,
    caller: Caller,
    id: Uuid,
    offset: i64,
) -> Result<Response, ApiError> {
    // Subscribe before the first read, so nothing written in between is
    // missed; the read fails fast (404) before committing to a stream.
    let logs = state.app.log_notifier.subscribe(id);
    let states = state.app.notifier.subscribe(id);
    let first = state.app.dispatch_logs_read(&caller, id, offset).await?;
    Ok(follow(state, caller, id, offset, first, (logs, states)).into_response())
}

type Subscriptions = (Subscription<()>, Subscription<Arc<DispatchRow>>);

fn follow(
    state: AppState,
    caller: Caller,
    id: Uuid,
    mut offset: i64,
    first: (DispatchRow, Vec<LogRow>, bool),
    (mut logs, mut states): Subscriptions,
) -> impl IntoResponse {
    let (sender, receiver) = tokio::sync::mpsc::channel::<Result<Event, Infallible>>(64);
    tokio::spawn(async move {
        let app = &state.app;
        let (mut row, mut rows, mut complete) = first;
        // Output bytes sent so far, when the stream started at the beginning.
        let mut seen = (offset == 0).then_some(0i64);
        loop {
            for log in rows {
                offset = log.seq;
                if log.stream != LogStream::System {
                    seen = seen.map(|bytes| bytes + log.text.len() as i64);
                }
                let event = Event::default()
                    .event("log")
                    .id(log.seq.to_string())
                    .json_data(entry(log))
                    .expect("entry serializes");
                if sender.send(Ok(event)).await.is_err() {
                    return; // the client went away
                }
            }
            if complete {
                let end = Event::default().event("end").json_data(Dispatch::from(row)).expect("dispatch serializes");
                let _ = sender.send(Ok(end)).await;
                return;
            }
            let pushed = tokio::select! {
                _ = logs.changed() => None,
                pushed = states.changed() => pushed,
                _ = sender.closed() => return,
                _ = app.shutdown.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(30)) => None,
            };
            let read = match pushed {
                // This replica wrote the new state: only the output needs reading.
                Some(pushed) if pushed.generation >= row.generation => {
                    app.dispatch_logs_after(Arc::unwrap_or_clone(pushed), offset, seen).await
                }
                _ => app.dispatch_logs_read(&caller, id, offset).await,
            };
            (row, rows, complete) = match read {
                Ok(read) => read,
                Err(err) => {
                    tracing::warn!(dispatch_id = %id, error = %err, "log follow stopped");
                    let _ = sender
                        .send(Ok(Event::default()
                            .event("error")
                            .data("the log stream failed; retry from the last seq")))
                        .await;
                    return;
                }
            };
        }
    });
    Sse::new(tokio_stream::wrappers::ReceiverStream::new(receiver)).keep_alive(KeepAlive::default())
}

fn entry(row: LogRow) -> LogEntry {
    let stream = match row.stream {
        LogStream::Stdout => wire::LogStream::Stdout,
        LogStream::Stderr => wire::LogStream::Stderr,
        LogStream::System => wire::LogStream::System,
    };
    LogEntry { seq: row.seq, stream, text: row.text, at: Some(row.created_at) }
}

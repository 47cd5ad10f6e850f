//! The dashboard's pages: extract, call `app::`, render.

use std::collections::HashMap;

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::{Form, Json};
use axum_extra::extract::Query;
use chrono::{DateTime, NaiveDateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::error::UiError;
use super::pages::{self, Page, RunView};
use super::session::UiSession;
use crate::api::AppState;
use crate::auth::Scope;

/// Rows per page of the runs list.
const RUNS_PAGE: u32 = 50;
/// Dispatches one Gantt chart draws at most.
const GANTT_MAX: u32 = 500;

/// `GET /ui`: the runs list.
pub async fn home() -> Redirect {
    Redirect::to("/ui/runs")
}

/// The runs list's filters, as its form sends them (empty means "any").
#[derive(Debug, Default, Deserialize)]
pub struct RunsQuery {
    #[serde(default)]
    pub state: Option<String>,
    #[serde(default)]
    pub cluster: Option<String>,
    #[serde(default)]
    pub function: Option<String>,
    #[serde(default)]
    pub label: Vec<String>,
    #[serde(default)]
    pub created_after: Option<String>,
    #[serde(default)]
    pub created_before: Option<String>,
    #[serde(default)]
    pub cursor: Option<String>,
}

impl RunsQuery {
    fn to_list(&self) -> Result<wire::ListDispatches, UiError> {
        let given =
            |value: &Option<String>| value.as_deref().map(str::trim).filter(|v| !v.is_empty()).map(str::to_owned);
        Ok(wire::ListDispatches {
            state: given(&self.state).into_iter().collect(),
            cluster: given(&self.cluster),
            function: given(&self.function),
            label: self.label.iter().map(|l| l.trim().to_owned()).filter(|l| !l.is_empty()).collect(),
            created_after: instant("created_after", given(&self.created_after))?,
            created_before: instant("created_before", given(&self.created_before))?,
            limit: Some(RUNS_PAGE),
            cursor: given(&self.cursor),
        })
    }
}

/// An instant from a filter field: RFC 3339, or a browser's `datetime-local`
/// value (`2026-12-03T14:30`), read as UTC.
fn instant(field: &str, value: Option<String>) -> Result<Option<DateTime<Utc>>, UiError> {
    let Some(value) = value else { return Ok(None) };
    if let Ok(at) = DateTime::parse_from_rfc3339(&value) {
        return Ok(Some(at.with_timezone(&Utc)));
    }
    for format in ["%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S"] {
        if let Ok(at) = NaiveDateTime::parse_from_str(&value, format) {
            return Ok(Some(at.and_utc()));
        }
    }
    Err(UiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        format!("`{field}` must be a date and time such as 2026-12-03T14:30 (UTC) or RFC 3339, got `{value}`"),
    ))
}

/// `GET /ui/runs`: dispatches newest first, filtered, a page at a time.
pub async fn runs(
    State(state): State<AppState>,
    session: UiSession,
    Query(query): Query<RunsQuery>,
) -> Result<Response, UiError> {
    let list = query.to_list()?;
    let (rows, next_cursor) = state.app.dispatch_list(session.caller(), list).await?;
    let nodes = node_names(&state, &session).await?;
    let runs: Vec<RunView> = rows.into_iter().map(|row| run_view(&state, &nodes, row.into())).collect();
    Ok(pages::runs(&page(&session, "runs"), &query, &runs, next_cursor.as_deref()).into_response())
}

#[derive(Debug, Deserialize)]
pub struct StatesQuery {
    #[serde(default)]
    id: Vec<Uuid>,
}

/// What the runs and run pages refresh without reloading.
#[derive(Debug, Serialize)]
pub struct LiveState {
    id: Uuid,
    state: String,
    duration: String,
    terminal: bool,
}

/// `GET /ui/runs/states?id=…`: the current state of up to 100 dispatches.
pub async fn run_states(
    State(state): State<AppState>,
    session: UiSession,
    Query(query): Query<StatesQuery>,
) -> Result<Json<Vec<LiveState>>, UiError> {
    let mut states = Vec::with_capacity(query.id.len().min(100));
    for id in query.id.into_iter().take(100) {
        let dispatch: wire::Dispatch = match state.app.dispatch_get(session.caller(), id).await {
            Ok(row) => row.into(),
            Err(crate::Error::NotFound { .. }) => continue,
            Err(err) => return Err(err.into()),
        };
        states.push(LiveState {
            id,
            state: dispatch.state.to_string(),
            duration: pages::duration_text(&dispatch),
            terminal: dispatch.state.is_terminal(),
        });
    }
    Ok(Json(states))
}

/// `GET /ui/runs/{id}`: one run, its timeline, live output and outcome.
pub async fn run(State(state): State<AppState>, session: UiSession, Path(id): Path<Uuid>) -> Result<Response, UiError> {
    let caller = session.caller();
    let dispatch: wire::Dispatch = state.app.dispatch_get(caller, id).await?.into();
    let events: Vec<wire::DispatchEvent> =
        state.app.dispatch_events(caller, id).await?.into_iter().map(Into::into).collect();
    let record = match state.app.record_get(caller, id).await {
        Ok(record) => Some(record),
        Err(crate::Error::NotFound { .. }) => None,
        Err(err) => return Err(err.into()),
    };
    let artifacts: Vec<wire::Artifact> =
        state.app.artifact_list(caller, id).await?.into_iter().map(Into::into).collect();
    let nodes = node_names(&state, &session).await?;
    let can_cancel = caller.has(Scope::DispatchWrite) && !dispatch.state.is_terminal();
    let view = run_view(&state, &nodes, dispatch);
    Ok(pages::run(&page(&session, "runs"), &view, &events, record.as_ref(), &artifacts, can_cancel).into_response())
}

#[derive(Debug, Deserialize)]
pub struct LogsQuery {
    #[serde(default)]
    offset: Option<i64>,
}

/// `GET /ui/runs/{id}/logs`: the run's output as server-sent events, the
/// same stream `GET /v1/dispatches/{id}/logs?follow=true` serves. A
/// reconnecting browser resumes after its `Last-Event-ID`.
pub async fn run_logs(
    State(state): State<AppState>,
    session: UiSession,
    Path(id): Path<Uuid>,
    headers: HeaderMap,
    Query(query): Query<LogsQuery>,
) -> Result<Response, UiError> {
    let resumed = headers.get("last-event-id").and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<i64>().ok());
    let offset = resumed.or(query.offset).unwrap_or(0).max(0);
    let caller = session.0.caller;
    Ok(crate::api::logs::follow_response(state, caller, id, offset).await?)
}

/// `GET /ui/runs/{id}/output.txt`: the whole output, as a download.
pub async fn run_output(
    State(state): State<AppState>,
    session: UiSession,
    Path(id): Path<Uuid>,
) -> Result<Response, UiError> {
    let mut text = String::new();
    let mut offset = 0;
    loop {
        let (_, rows, complete) = state.app.dispatch_logs_read(session.caller(), id, offset).await?;
        let Some(last) = rows.last() else { break };
        offset = last.seq;
        for row in rows {
            text.push_str(&row.text);
        }
        if complete {
            break;
        }
    }
    let disposition = format!("attachment; filename=\"dispatch-{id}.log\"");
    let mut response = text.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    headers.insert(header::CONTENT_DISPOSITION, HeaderValue::from_str(&disposition).expect("uuid is ascii"));
    Ok(response)
}

#[derive(Debug, Deserialize)]
pub struct CancelForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    reason: String,
}

/// `POST /ui/runs/{id}/cancel`: needs `dispatch:write` and the session's CSRF token.
pub async fn run_cancel(
    State(state): State<AppState>,
    session: UiSession,
    Path(id): Path<Uuid>,
    headers: HeaderMap,
    Form(form): Form<CancelForm>,
) -> Result<Response, UiError> {
    session.check_csrf(&headers, &form.csrf)?;
    if !session.caller().has(Scope::DispatchWrite) {
        return Err(UiError::forbidden("cancelling needs a token with `dispatch:write`; this session is read-only"));
    }
    let reason = Some(form.reason.trim()).filter(|r| !r.is_empty()).map(str::to_owned);
    let reason = reason.or_else(|| Some(format!("cancelled from the dashboard by {}", session.caller().sub)));
    state.app.dispatch_cancel(session.caller(), id, reason).await?;
    Ok(Redirect::to(&format!("/ui/runs/{id}")).into_response())
}

/// `GET /ui/runs/{id}/artifacts/{path}`: an artifact, always as a download.
pub async fn run_artifact(
    State(state): State<AppState>,
    session: UiSession,
    Path((id, path)): Path<(Uuid, String)>,
) -> Result<Response, UiError> {
    let (row, bytes) = state.app.artifact_open(session.caller(), id, &path).await?;
    Ok(crate::api::artifacts::artifact_response(&row, bytes))
}

#[derive(Debug, Deserialize)]
pub struct GanttQuery {
    #[serde(default)]
    label: Vec<String>,
}

/// `GET /ui/gantt?label=dag_id=…&label=run_id=…`: every dispatch of one
/// orchestrator run on a time axis.
pub async fn gantt(
    State(state): State<AppState>,
    session: UiSession,
    Query(query): Query<GanttQuery>,
) -> Result<Response, UiError> {
    let labels: Vec<String> = query.label.into_iter().filter(|l| !l.trim().is_empty()).collect();
    if labels.is_empty() {
        return Err(UiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "name the run with `label`, e.g. `?label=dag_id=ml_pipeline&label=run_id=…` (Airflow) or `?label=flow_run_id=…` (Prefect)",
        ));
    }
    let list = wire::ListDispatches { label: labels.clone(), limit: Some(GANTT_MAX), ..Default::default() };
    let (rows, more) = state.app.dispatch_list(session.caller(), list).await?;
    let mut runs: Vec<wire::Dispatch> = rows.into_iter().map(Into::into).collect();
    runs.reverse(); // oldest first, top to bottom
    Ok(pages::gantt(&page(&session, "runs"), &labels, &runs, more.is_some(), Utc::now()).into_response())
}

#[derive(Debug, Deserialize)]
pub struct FunctionQuery {
    #[serde(default)]
    function: String,
}

/// `GET /ui/functions?function=…`: a function's running time and outcomes per hour.
pub async fn function_charts(
    State(state): State<AppState>,
    session: UiSession,
    Query(query): Query<FunctionQuery>,
) -> Result<Response, UiError> {
    let hours = state.app.function_hours(session.caller(), &query.function).await?;
    Ok(pages::function_charts(&page(&session, "runs"), &query.function, &hours).into_response())
}

/// `GET /ui/clusters`: clusters, their nodes and their autostop.
pub async fn clusters(State(state): State<AppState>, session: UiSession) -> Result<Response, UiError> {
    let clusters = state.app.cluster_list(session.caller(), false).await?;
    let mut autostop = HashMap::new();
    for view in &clusters {
        if let Ok(spec) = serde_json::from_value::<wire::ClusterSpec>(view.row.spec.clone()) {
            if let Some(at) = state.app.cluster_autostop_at(&view.row, &spec).await? {
                autostop.insert(view.row.cluster_id, at);
            }
        }
    }
    Ok(pages::clusters(&page(&session, "clusters"), &clusters, &autostop, Utc::now()).into_response())
}

/// `GET /ui/schedules`: schedules and remote objects.
pub async fn schedules(State(state): State<AppState>, session: UiSession) -> Result<Response, UiError> {
    let schedules = state.app.schedule_list(session.caller()).await?;
    let instances: Vec<wire::Instance> = state
        .app
        .object_list(session.caller(), false)
        .await?
        .into_iter()
        .map(|row| crate::api::views::instance_view(row, Vec::new()))
        .collect();
    Ok(pages::schedules(&page(&session, "schedules"), &schedules, &instances).into_response())
}

fn page<'a>(session: &'a UiSession, nav: &'static str) -> Page<'a> {
    Page { project: &session.0.caller.project, sub: &session.0.caller.sub, csrf: &session.0.csrf_token, nav }
}

async fn node_names(state: &AppState, session: &UiSession) -> Result<HashMap<Uuid, String>, UiError> {
    let nodes = state.app.node_list(session.caller()).await?;
    Ok(nodes.into_iter().map(|n| (n.node_id, format!("{}/{}", n.cluster, n.name))).collect())
}

fn run_view(state: &AppState, nodes: &HashMap<Uuid, String>, dispatch: wire::Dispatch) -> RunView {
    let node = dispatch.node_id.and_then(|id| nodes.get(&id).cloned());
    let links = pages::orchestrator_links(&dispatch.labels, &state.app.settings.ui);
    RunView { dispatch, node, links }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_instants_accept_the_browsers_format_and_name_the_field() {
        let at = instant("created_after", Some("2026-12-03T14:30".into())).unwrap().unwrap();
        assert_eq!(at.to_rfc3339(), "2026-12-03T14:30:00+00:00");
        assert!(instant("x", Some("2026-12-03T14:30:00+01:00".into())).unwrap().is_some());
        let err = instant("created_before", Some("yesterday".into())).unwrap_err();
        assert_eq!(err.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert!(err.message.contains("created_before"), "{}", err.message);
    }

    #[test]
    fn empty_filters_mean_any() {
        let query =
            RunsQuery { state: Some(String::new()), label: vec![" ".into(), "dag_id=x".into()], ..Default::default() };
        let list = query.to_list().unwrap();
        assert!(list.state.is_empty() && list.cluster.is_none());
        assert_eq!(list.label, vec!["dag_id=x".to_owned()]);
    }
}

//! Liveness, readiness and Prometheus metrics.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use wire::Health;

use super::error::{ApiError, Unavailable};
use super::extract::Json;
use super::AppState;

/// Liveness: the process is up and serving.
#[utoipa::path(get, path = "/healthz", tag = "health", operation_id = "healthz",
    responses((status = 200, description = "The gateway is up.", body = Health, example = json!({"status": "ok"}))))]
pub async fn healthz() -> Json<Health> {
    Json(Health { status: "ok".into() })
}

/// Readiness: the database answers.
#[utoipa::path(get, path = "/readyz", tag = "health", operation_id = "readyz",
    responses((status = 200, description = "The database is reachable.", body = Health, example = json!({"status": "ok"})), Unavailable))]
pub async fn readyz(State(state): State<AppState>) -> Result<Json<Health>, ApiError> {
    state.app.db.ping().await?;
    Ok(Json(Health { status: "ok".into() }))
}

/// Prometheus metrics: dispatches by state, stored bundles, and request latency histograms.
///
/// Open unless `http.metrics_token` is set; then it needs that bearer token.
/// Label values come only from closed sets (route templates, known methods).
#[utoipa::path(get, path = "/metrics", tag = "health", operation_id = "metrics",
    responses((status = 200, description = "Prometheus text exposition format.", content_type = "text/plain",
        body = String, example = "# TYPE rh_dispatches gauge\nrh_dispatches{state=\"queued\"} 3\n"),
        super::error::Unauthorized, Unavailable))]
pub async fn metrics(
    State(state): State<AppState>,
    headers: axum::http::HeaderMap,
) -> Result<impl IntoResponse, ApiError> {
    if let Some(expected) = &state.app.settings.http.metrics_token {
        use secrecy::ExposeSecret;
        let sent = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        // Compared as digests, so the time taken says nothing about the token.
        let matches = sent.is_some_and(|sent| {
            use sha2::Digest;
            sha2::Sha256::digest(sent.as_bytes()) == sha2::Sha256::digest(expected.expose_secret().as_bytes())
        });
        if !matches {
            return Err(ApiError::unauthenticated("send `Authorization: Bearer <http.metrics_token>`"));
        }
    }
    let counts = state.app.db.dispatch_count_by_state().await?;
    let bundles = state.app.db.bundle_count().await?;
    let watched = state.app.notifier.watched() as i64;
    let text = state.metrics.render(&counts, bundles, watched, &state.app.nodes.links);
    Ok((StatusCode::OK, [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text))
}

/// The last outcome of each background task (placement, node reaper, cancel repair).
#[utoipa::path(get, path = "/v1/admin/background-tasks", tag = "health", operation_id = "background_tasks",
    responses((status = 200, description = "Status by task name.", body = std::collections::BTreeMap<String, crate::background::TaskStatus>),
        super::error::Unauthorized, super::error::Forbidden, Unavailable),
    security(("bearer" = ["admin"])))]
pub async fn background_tasks(
    State(state): State<AppState>,
    auth: super::auth::Authenticated,
) -> Result<Json<std::collections::BTreeMap<String, crate::background::TaskStatus>>, ApiError> {
    auth.require(crate::auth::Scope::Admin)?;
    Ok(Json(state.statuses.snapshot()))
}

//! The dashboard: server-rendered pages under `/ui`.
//!
//! Pages are HTML from compile-time-checked `maud` templates, which escape
//! every value spliced into them, so nothing users or their code control
//! (logs, labels, results, tracebacks, function names) can become markup.
//! Charts are SVG drawn here. One small script module, served from the
//! binary like every other asset, follows live output and states; pages work
//! without it, except for what is live.
//!
//! A browser signs in with a one-time link (`rh ui`, `make run`) or by
//! pasting a token, and then holds an HttpOnly, SameSite=Strict session
//! cookie scoped to `/ui`. The session acts exactly as the token that opened
//! it. Forms that change state carry the session's CSRF token. Every response
//! sends a strict Content-Security-Policy.
//!
//! Handlers call `app::` like the API's do; they hold no SQL.

use axum::extract::Request;
use axum::http::{header, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;

use crate::api::AppState;

mod assets;
mod charts;
mod error;
mod handlers;
mod pages;
mod session;

pub use session::COOKIE;

/// The policy every dashboard response carries unless it sets a stricter one
/// (artifact downloads are sandboxed): scripts, styles and images only from
/// this origin, no inline script or style, no framing, forms post only here.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
    connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// The dashboard's routes, mounted at `/ui`.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/ui", get(handlers::home))
        .route("/ui/", get(handlers::home))
        .route("/ui/login", get(session::login_page).post(session::login_with_token))
        .route("/ui/login/{code}", get(session::login_with_link))
        .route("/ui/logout", post(session::logout))
        .route("/ui/runs", get(handlers::runs))
        .route("/ui/runs/states", get(handlers::run_states))
        .route("/ui/runs/{id}", get(handlers::run))
        .route("/ui/runs/{id}/logs", get(handlers::run_logs))
        .route("/ui/runs/{id}/output.txt", get(handlers::run_output))
        .route("/ui/runs/{id}/cancel", post(handlers::run_cancel))
        .route("/ui/runs/{id}/artifacts/{path}", get(handlers::run_artifact))
        .route("/ui/gantt", get(handlers::gantt))
        .route("/ui/functions", get(handlers::function_charts))
        .route("/ui/clusters", get(handlers::clusters))
        .route("/ui/schedules", get(handlers::schedules))
        .route("/ui/assets/{name}", get(assets::serve))
        .layer(axum::middleware::from_fn(security_headers))
}

/// Adds the dashboard's security headers to every response that has not set its own.
async fn security_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.entry(header::CONTENT_SECURITY_POLICY).or_insert(HeaderValue::from_static(CSP));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    // Never tell another site which page linked to it. (Not `no-referrer`:
    // with it, browsers send `Origin: null` on this origin's own form posts.)
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    headers.entry(header::CACHE_CONTROL).or_insert(HeaderValue::from_static("no-store"));
    response
}

//! `/v1/ui/login-links`: one-time links into the web dashboard.

use axum::extract::State;
use axum::http::StatusCode;

use super::auth::Authenticated;
use super::error::{ApiError, Forbidden, Unauthorized, Unavailable};
use super::extract::Json;
use super::AppState;
use crate::auth::Scope;

/// Make a one-time login link for the dashboard.
///
/// Opening it in a browser signs that browser in as this token (same
/// project and scopes) and sets an HttpOnly session cookie; the token itself
/// never appears in a URL. The link works once, for 5 minutes. The session
/// ends when the token is revoked or expires (after 12 hours at most).
#[utoipa::path(post, path = "/v1/ui/login-links", tag = "dashboard", operation_id = "ui_login_link",
    responses((status = 201, description = "The link.", body = wire::LoginLink), Unauthorized, Forbidden, Unavailable),
    security(("bearer" = ["dispatch:read"])))]
pub async fn ui_login_link(
    State(state): State<AppState>,
    auth: Authenticated,
) -> Result<(StatusCode, Json<wire::LoginLink>), ApiError> {
    let caller = auth.require(Scope::DispatchRead)?;
    let (path, expires_at) = state.app.ui_link_create(&caller).await?;
    let url = format!("{}{path}", state.app.public_url().trim_end_matches('/'));
    Ok((StatusCode::CREATED, Json(wire::LoginLink { path, url, expires_at })))
}

//! Signing in and out, the session extractor and the CSRF check.

use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use serde::Deserialize;

use super::error::UiError;
use super::pages;
use crate::api::AppState;
use crate::app::ui::{NewSession, Session};
use crate::auth::Caller;

/// The session cookie's name.
pub const COOKIE: &str = "rh_session";

/// A signed-in browser whose token is still valid and not revoked.
pub struct UiSession(pub Session);

impl FromRequestParts<AppState> for UiSession {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        if let Some(cookie) = cookie_value(&parts.headers, COOKIE) {
            match state.app.ui_session(cookie).await {
                Ok(Some(session)) if !state.revocations.contains(&session.caller.jti) => {
                    return Ok(UiSession(session));
                }
                Ok(_) => {}
                Err(err) => return Err(UiError::from(err).into_response()),
            }
        }
        if parts.method != Method::GET {
            return Err(
                UiError::forbidden("you are not signed in, or your session has ended; sign in again").into_response()
            );
        }
        // A link followed from another site (an Airflow task's extra link)
        // arrives without the SameSite=Strict cookie. Loading the same URL
        // again from this page is a same-site navigation, which carries it.
        let cross_site = parts.headers.get("sec-fetch-site").is_some_and(|v| v == "cross-site");
        let here = parts.uri.path_and_query().map_or("/ui/runs", |p| p.as_str()).to_owned();
        if cross_site {
            return Err(pages::reload(&here).into_response());
        }
        let next = pages::encode(&here);
        Err(Redirect::to(&format!("/ui/login?next={next}")).into_response())
    }
}

impl UiSession {
    pub fn caller(&self) -> &Caller {
        &self.0.caller
    }

    /// Refuses a state-changing request without this session's CSRF token.
    pub fn check_csrf(&self, headers: &HeaderMap, sent: &str) -> Result<(), UiError> {
        if !same_origin(headers) {
            return Err(UiError::forbidden("this request came from another site"));
        }
        if !constant_time_eq(sent.as_bytes(), self.0.csrf_token.as_bytes()) {
            return Err(UiError::forbidden(
                "the form's CSRF token is missing or stale; reload the page and submit it again",
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Deserialize)]
pub struct LoginQuery {
    #[serde(default)]
    next: Option<String>,
}

/// `GET /ui/login`: paste a token.
pub async fn login_page(Query(query): Query<LoginQuery>) -> Response {
    pages::login(&safe_next(query.next.as_deref()), None).into_response()
}

#[derive(Debug, Deserialize)]
pub struct LoginForm {
    #[serde(default)]
    token: String,
    #[serde(default)]
    next: Option<String>,
}

/// `POST /ui/login`: a session from a pasted token.
pub async fn login_with_token(
    State(state): State<AppState>,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Result<Response, UiError> {
    let next = safe_next(form.next.as_deref());
    if !same_origin(&headers) {
        return Err(UiError::forbidden("this sign-in came from another site"));
    }
    let refused = |message: String| (StatusCode::UNAUTHORIZED, pages::login(&next, Some(&message))).into_response();
    let token = form.token.trim();
    if token.is_empty() {
        return Ok(refused("paste a token (`rh-gateway token create`, or your `RH_TOKEN`)".into()));
    }
    let claims = match state.keys.verify(token) {
        Ok(claims) => claims,
        Err(err) => return Ok(refused(format!("that token was refused: {err}"))),
    };
    if state.revocations.contains(&claims.jti) {
        return Ok(refused("that token has been revoked".into()));
    }
    match state.app.ui_session_create(&Caller::from(claims)).await {
        Ok(session) => Ok(signed_in(&state, session, &next)),
        Err(crate::Error::InvalidField { message, .. }) => Ok(refused(message)),
        Err(err) => Err(err.into()),
    }
}

/// `GET /ui/login/{code}`: a one-time link; a second use fails.
pub async fn login_with_link(State(state): State<AppState>, Path(code): Path<String>) -> Result<Response, UiError> {
    match state.app.ui_link_use(&code).await? {
        Some(session) => Ok(signed_in(&state, session, "/ui/runs")),
        None => Err(UiError::new(
            StatusCode::GONE,
            "this login link has expired or was already used; get a new one with `rh ui`, or sign in with a token",
        )),
    }
}

#[derive(Debug, Deserialize)]
pub struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

/// `POST /ui/logout`.
pub async fn logout(
    State(state): State<AppState>,
    session: UiSession,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> Result<Response, UiError> {
    session.check_csrf(&headers, &form.csrf)?;
    if let Some(cookie) = cookie_value(&headers, COOKIE) {
        state.app.ui_session_end(cookie).await?;
    }
    let mut response = Redirect::to("/ui/login").into_response();
    let clear = format!("{COOKIE}=; Path=/ui; HttpOnly; SameSite=Strict; Max-Age=0");
    response.headers_mut().insert(header::SET_COOKIE, HeaderValue::from_str(&clear).expect("ascii"));
    Ok(response)
}

fn signed_in(state: &AppState, session: NewSession, next: &str) -> Response {
    let max_age = (session.expires_at - chrono::Utc::now()).num_seconds().max(0);
    let secure = if state.app.public_url().starts_with("https://") { "; Secure" } else { "" };
    let cookie = format!("{COOKIE}={}; Path=/ui; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}", session.cookie);
    let mut response = Redirect::to(next).into_response();
    response.headers_mut().insert(header::SET_COOKIE, HeaderValue::from_str(&cookie).expect("hex cookie"));
    response
}

/// The value of cookie `name`, if the request carries it.
fn cookie_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value)
}

/// False when the browser says the request came from another origin.
fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return true; // not sent by every browser on same-origin posts; the CSRF token still decides
    };
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or_default();
    origin.split_once("://").is_some_and(|(_, rest)| !host.is_empty() && rest == host)
}

/// Where to go after signing in: only a dashboard path, never another site.
fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(next)
            if (next == "/ui" || next.starts_with("/ui/"))
                && !next.contains("//")
                && !next.contains('\\')
                && !next.chars().any(char::is_control) =>
        {
            next.to_owned()
        }
        _ => "/ui/runs".to_owned(),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_stays_on_the_dashboard() {
        assert_eq!(safe_next(Some("/ui/runs/abc?x=1")), "/ui/runs/abc?x=1");
        for bad in ["https://evil.example/", "//evil.example", "/ui//evil", "/uix", "/ui/\\evil", "/v1/dispatches"] {
            assert_eq!(safe_next(Some(bad)), "/ui/runs", "{bad}");
        }
        assert_eq!(safe_next(None), "/ui/runs");
    }

    #[test]
    fn cookies_and_origins_are_read_exactly() {
        let mut headers = HeaderMap::new();
        headers.insert(header::COOKIE, HeaderValue::from_static("a=1; rh_session=abc; rh_session_x=2"));
        assert_eq!(cookie_value(&headers, COOKIE), Some("abc"));
        headers.insert(header::HOST, HeaderValue::from_static("127.0.0.1:8080"));
        assert!(same_origin(&headers));
        headers.insert(header::ORIGIN, HeaderValue::from_static("http://127.0.0.1:8080"));
        assert!(same_origin(&headers));
        headers.insert(header::ORIGIN, HeaderValue::from_static("http://evil.example"));
        assert!(!same_origin(&headers));
        headers.insert(header::ORIGIN, HeaderValue::from_static("null"));
        assert!(!same_origin(&headers));
        assert!(constant_time_eq(b"abc", b"abc") && !constant_time_eq(b"abc", b"abd") && !constant_time_eq(b"", b"a"));
    }
}

//! Extractors whose rejections use the standard error body.
//!
//! Text Postgres cannot store (a NUL, `\u0000`) is refused here, naming the
//! field, for every body, query string and path a client sends, so no handler
//! can pass one to the database. Node reports and output are the exception
//! ([`LosslessJson`]): what a call produced is stored whatever it holds.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::error::ApiError;

/// A JSON body; bad bodies become 400/413/415/422 with the field named, and a
/// NUL in any string is a 422 naming where it is.
pub struct Json<T>(pub T);

/// A JSON body whose strings may hold NULs (node reports and output, which
/// the gateway stores losslessly).
pub struct LosslessJson<T>(pub T);

impl<T: serde::Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Json<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        json_body(request, state, true).await.map(Json)
    }
}

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for LosslessJson<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        json_body(request, state, false).await.map(LosslessJson)
    }
}

async fn json_body<S: Send + Sync, T: DeserializeOwned>(
    request: Request,
    state: &S,
    refuse_nul: bool,
) -> Result<T, ApiError> {
    if !is_json(request.headers()) {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send the body as JSON with `Content-Type: application/json`",
        ));
    }
    let bytes = Bytes::from_request(request, state).await.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                "the request body is larger than the gateway accepts (http.body_limit_bytes); \
                 pass large data by reference instead",
            )
        } else {
            ApiError::new(rejection.status(), "bad_body", rejection.body_text())
        }
    })?;
    if refuse_nul {
        if let Some(field) = nul_field(&bytes) {
            return Err(nul_error(&field));
        }
    }
    Ok(axum::Json::<T>::from_bytes(&bytes)?.0)
}

fn is_json(headers: &HeaderMap) -> bool {
    let Some(value) = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()) else { return false };
    let essence = value.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    essence == "application/json" || (essence.starts_with("application/") && essence.ends_with("+json"))
}

fn nul_error(field: &str) -> ApiError {
    ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_field",
        format!("`{field}` contains a NUL character (\\u0000), which the gateway cannot store; remove it"),
    )
    .with_field(field)
}

/// Where the first NUL is in a JSON body (`args[0]`, `labels.k`), if it has one.
/// Only a body that spells `\u0000` is parsed for the walk.
pub(crate) fn nul_field(body: &[u8]) -> Option<String> {
    const NUL: &[u8] = b"\\u0000";
    if !body.windows(NUL.len()).any(|w| w == NUL) {
        return None;
    }
    // Unparseable: the JSON error will name the problem.
    let value: Value = serde_json::from_slice(body).ok()?;
    nul_path(&value, String::new())
}

fn nul_path(value: &Value, path: String) -> Option<String> {
    let at = |path: &str| if path.is_empty() { "body".to_owned() } else { path.to_owned() };
    match value {
        Value::String(text) if text.contains('\0') => Some(at(&path)),
        Value::Array(items) => items.iter().enumerate().find_map(|(i, item)| nul_path(item, format!("{path}[{i}]"))),
        Value::Object(map) => map.iter().find_map(|(key, item)| {
            let here = if path.is_empty() { key.clone() } else { format!("{path}.{key}") };
            if key.contains('\0') {
                Some(at(&path))
            } else {
                nul_path(item, here)
            }
        }),
        _ => None,
    }
}

/// True if a percent-encoded URL part spells a NUL.
fn has_encoded_nul(text: &str) -> bool {
    text.as_bytes().windows(3).any(|w| w[0] == b'%' && w[1] == b'0' && w[2] == b'0')
}

/// A query string; repeated keys (`state=a&state=b`) collect into a `Vec`.
pub struct Query<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        if let Some(query) = parts.uri.query().filter(|q| has_encoded_nul(q)) {
            let field = query
                .split('&')
                .find(|pair| has_encoded_nul(pair))
                .and_then(|pair| pair.split('=').next())
                .unwrap_or("query");
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_query",
                format!("`{field}` contains a NUL character (%00); remove it"),
            )
            .with_field(field));
        }
        let axum_extra::extract::Query(value) =
            axum_extra::extract::Query::<T>::from_request_parts(parts, state).await?;
        Ok(Query(value))
    }
}

/// Path parameters.
pub struct Path<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for Path<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        if has_encoded_nul(parts.uri.path()) {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_path",
                "the path contains a NUL character (%00); no resource has one in its name",
            ));
        }
        let axum::extract::Path(value) = axum::extract::Path::<T>::from_request_parts(parts, state).await?;
        Ok(Path(value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nul_is_found_with_its_path() {
        assert_eq!(nul_field(br#"{"args": [1, "a\u0000b"]}"#).as_deref(), Some("args[1]"));
        assert_eq!(nul_field(br#"{"labels": {"k": "\u0000"}}"#).as_deref(), Some("labels.k"));
        assert_eq!(nul_field(br#"{"kwargs": {"a\u0000": 1}}"#).as_deref(), Some("kwargs"));
        assert_eq!(nul_field(br#""\u0000""#).as_deref(), Some("body"));
        assert_eq!(nul_field(br#"{"args": ["a\\u0000b"]}"#), None, "an escaped backslash is not a NUL");
        assert_eq!(nul_field(br#"{"args": ["plain"]}"#), None);
    }
}

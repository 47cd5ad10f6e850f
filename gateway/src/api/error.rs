//! The only place that knows HTTP status codes.
//!
//! Every failure becomes one JSON body, `{code, message, request_id, field?}`.
//! Handlers and extractors return [`ApiError`]; the [`error_bodies`] middleware
//! fills in the request id and also gives framework-generated errors (404 for
//! unknown routes, 405, ...) the same shape. A 5xx is logged with its full
//! error chain and answered with a generic message.

use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::Request;
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum_extra::extract::QueryRejection;
use utoipa::IntoResponses;
use wire::ErrorBody;

use crate::auth::{Scope, TokenError};
use crate::Error;

/// An error on its way to becoming an HTTP response.
#[derive(Debug, Clone)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    field: Option<String>,
    www_authenticate: Option<String>,
}

/// The parts of an error body the middleware completes with the request id.
#[derive(Debug, Clone)]
struct PendingError {
    code: &'static str,
    message: String,
    field: Option<String>,
}

impl ApiError {
    /// An error with no field.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { status, code, message: message.into(), field: None, www_authenticate: None }
    }

    /// Names the request field at fault.
    pub fn with_field(mut self, field: impl Into<String>) -> ApiError {
        self.field = Some(field.into());
        self
    }

    /// A 401 with a `WWW-Authenticate` challenge.
    pub fn unauthenticated(message: impl Into<String>) -> ApiError {
        let message = message.into();
        let challenge = format!(
            "Bearer realm=\"runhouse-gateway\", error=\"invalid_token\", error_description=\"{}\"",
            message.replace('"', "'")
        );
        ApiError {
            www_authenticate: Some(challenge),
            ..ApiError::new(StatusCode::UNAUTHORIZED, "unauthenticated", message)
        }
    }

    /// A 403 for a token that lacks `scope`.
    pub fn missing_scope(scope: Scope) -> ApiError {
        ApiError::new(
            StatusCode::FORBIDDEN,
            "missing_scope",
            format!("this token lacks the `{}` scope needed here; mint one that has it", scope.as_str()),
        )
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// What the client is told (for a 5xx, a generic sentence).
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl From<Error> for ApiError {
    fn from(err: Error) -> Self {
        match err {
            Error::NotFound { .. } => ApiError::new(StatusCode::NOT_FOUND, "not_found", err.to_string()),
            Error::InvalidField { field, message } => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_field", message).with_field(field)
            }
            Error::InvalidTransition(_) => ApiError::new(StatusCode::CONFLICT, "invalid_transition", err.to_string()),
            Error::IdempotencyConflict { .. } => {
                ApiError::new(StatusCode::CONFLICT, "idempotency_conflict", err.to_string())
                    .with_field("idempotency_key")
            }
            Error::ClusterExists { .. } => ApiError::new(StatusCode::CONFLICT, "cluster_exists", err.to_string()),
            Error::ScheduleExists { .. } => ApiError::new(StatusCode::CONFLICT, "schedule_exists", err.to_string()),
            Error::ObjectExists { .. } => ApiError::new(StatusCode::CONFLICT, "instance_exists", err.to_string()),
            Error::ObjectUnavailable { state, .. } => {
                let code = match state.as_bytes() {
                    b"failed" => "instance_failed",
                    b"lost" => "instance_lost",
                    _ => "instance_deleted",
                };
                ApiError::new(StatusCode::CONFLICT, code, err.to_string())
            }
            Error::JoinRefused => ApiError::new(StatusCode::UNAUTHORIZED, "join_refused", err.to_string()),
            Error::MissingNodeCredential => {
                ApiError::new(StatusCode::FORBIDDEN, "node_credential_required", err.to_string())
            }
            Error::StaleGeneration { .. } => ApiError::new(StatusCode::CONFLICT, "stale_generation", err.to_string())
                .with_field("expected_generation"),
            Error::ArtifactTooLarge(message) => {
                ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "artifact_too_large", message)
            }
            Error::ArtifactConflict(message) => ApiError::new(StatusCode::CONFLICT, "artifact_conflict", message),
            Error::StoreUnavailable(ref source) => {
                tracing::error!(error = format!("{source:#}"), "artifact store unavailable");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "store_unavailable",
                    "the gateway cannot reach its artifact store; retry shortly",
                )
            }
            Error::Unavailable(ref source) => {
                tracing::error!(error = %source, "database unavailable");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "the gateway cannot reach its database; retry shortly",
                )
            }
            Error::Internal(ref source) => {
                tracing::error!(error = format!("{source:#}"), "internal error");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "internal error; quote the request_id when reporting it",
                )
            }
        }
    }
}

impl From<TokenError> for ApiError {
    fn from(err: TokenError) -> Self {
        ApiError::unauthenticated(err.to_string())
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        match rejection {
            JsonRejection::JsonDataError(ref err) => {
                let (field, detail) = serde_detail(err).unwrap_or((None, rejection.body_text()));
                let message = match &field {
                    Some(field) if !detail.contains(&format!("`{field}`")) => format!("`{field}`: {detail}"),
                    _ => detail,
                };
                let error = ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_body", message);
                match field {
                    Some(field) => error.with_field(field),
                    None => error,
                }
            }
            JsonRejection::JsonSyntaxError(_) => ApiError::new(
                StatusCode::BAD_REQUEST,
                "malformed_json",
                format!("the request body is not valid JSON: {}", strip_prefix(&rejection.body_text())),
            ),
            JsonRejection::MissingJsonContentType(_) => ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send the body as JSON with `Content-Type: application/json`",
            ),
            other if other.status() == StatusCode::PAYLOAD_TOO_LARGE => ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                "the request body is larger than the gateway accepts (http.body_limit_bytes); \
                 pass large data by reference instead",
            ),
            other => ApiError::new(other.status(), "bad_body", other.body_text()),
        }
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        let text = rejection.body_text();
        let detail = strip_prefix(&text);
        let error =
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_query", format!("invalid query string: {detail}"));
        match backticked(detail) {
            Some(field) if detail.contains("field") => error.with_field(field),
            _ => error,
        }
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> Self {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_path",
            format!("invalid path parameter: {}; dispatch ids are UUIDs", strip_prefix(&rejection.body_text())),
        )
        .with_field("id")
    }
}

/// The serde path and message behind a JSON data error.
fn serde_detail(err: &axum::extract::rejection::JsonDataError) -> Option<(Option<String>, String)> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(current) = source {
        if let Some(inner) = current.downcast_ref::<serde_path_to_error::Error<serde_json::Error>>() {
            let path = inner.path().to_string();
            let message = inner.inner().to_string();
            let message = message.split(" at line ").next().unwrap_or(&message).to_owned();
            let field = if path == "." {
                // Unknown and missing fields are reported at the parent; the name is in the message.
                backticked(&message).map(str::to_owned)
            } else {
                Some(path)
            };
            return Some((field, message));
        }
        source = current.source();
    }
    None
}

fn backticked(text: &str) -> Option<&str> {
    let start = text.find('`')? + 1;
    let len = text[start..].find('`')?;
    Some(&text[start..start + len])
}

fn strip_prefix(text: &str) -> &str {
    text.split_once(": ").map(|(_, rest)| rest).unwrap_or(text)
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = self.status.into_response();
        if let Some(challenge) = self.www_authenticate.and_then(|c| HeaderValue::from_str(&c).ok()) {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, challenge);
        }
        response.extensions_mut().insert(PendingError { code: self.code, message: self.message, field: self.field });
        response
    }
}

/// Gives every error response the standard body, with the request id.
pub async fn error_bodies(request: Request, next: Next) -> Response {
    let request_id = request.headers().get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    let mut response = next.run(request).await;
    let status = response.status();
    let pending = response.extensions_mut().remove::<PendingError>();
    let pending = match pending {
        Some(pending) => pending,
        None if status.is_client_error() || status.is_server_error() => {
            // JSON bodies are already in shape; HTML ones are the dashboard's error pages.
            let shaped = response.headers().get(header::CONTENT_TYPE).is_some_and(|v| {
                v.as_bytes().starts_with(b"application/json") || v.as_bytes().starts_with(b"text/html")
            });
            if shaped {
                return response;
            }
            framework_error(status)
        }
        None => return response,
    };
    let body = ErrorBody { code: pending.code.to_owned(), message: pending.message, request_id, field: pending.field };
    let (mut parts, _) = response.into_parts();
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    let bytes = serde_json::to_vec(&body).expect("error body serializes");
    Response::from_parts(parts, axum::body::Body::from(bytes))
}

/// Errors produced by the framework rather than by our handlers.
fn framework_error(status: StatusCode) -> PendingError {
    let (code, message) = match status {
        StatusCode::NOT_FOUND => ("not_found", "no such route; see /docs for the API"),
        StatusCode::METHOD_NOT_ALLOWED => ("method_not_allowed", "this route does not accept that method; see /docs"),
        StatusCode::PAYLOAD_TOO_LARGE => ("body_too_large", "the request body is larger than the gateway accepts"),
        s if s.is_server_error() => ("internal", "internal error; quote the request_id when reporting it"),
        _ => ("bad_request", "the request was refused"),
    };
    PendingError { code, message: message.to_owned(), field: None }
}

// Response sets for the OpenAPI document: one per status, each with the common body.

/// 400: the body is not JSON, or a path parameter is malformed.
#[derive(IntoResponses)]
#[response(status = 400, description = "The body is not valid JSON, or a path parameter is malformed.",
    example = json!({"code": "malformed_json", "message": "the request body is not valid JSON: EOF while parsing an object at line 1 column 14", "request_id": "5f0c1c44-4a0e-4f3b-9d0a-1f7a2a9b7c11"}))]
pub struct BadRequest(pub ErrorBody);

/// 401: no usable bearer token.
#[derive(IntoResponses)]
#[response(status = 401, description = "The bearer token is missing, malformed, forged, expired, revoked or uses another algorithm. A `WWW-Authenticate: Bearer` header says which.",
    example = json!({"code": "unauthenticated", "message": "the token has expired", "request_id": "5f0c1c44-4a0e-4f3b-9d0a-1f7a2a9b7c11"}))]
pub struct Unauthorized(pub ErrorBody);

/// 403: the token lacks a scope.
#[derive(IntoResponses)]
#[response(status = 403, description = "The token is valid but lacks the scope this route needs.",
    example = json!({"code": "missing_scope", "message": "this token lacks the `dispatch:write` scope needed here; mint one that has it", "request_id": "5f0c1c44-4a0e-4f3b-9d0a-1f7a2a9b7c11"}))]
pub struct Forbidden(pub ErrorBody);

/// 404: no such dispatch in the token's project.
#[derive(IntoResponses)]
#[response(status = 404, description = "No such dispatch in the token's project.",
    example = json!({"code": "not_found", "message": "dispatch `01936b8e-5a4c-7d2e-9f10-3c2b1a0d9e8f` not found", "request_id": "5f0c1c44-4a0e-4f3b-9d0a-1f7a2a9b7c11"}))]
pub struct NotFound(pub ErrorBody);

/// 409: the state or the idempotency key does not allow it.
#[derive(IntoResponses)]
#[response(status = 409, description = "The dispatch's state does not allow this change (`invalid_transition`, naming both states), the idempotency key was used with another body (`idempotency_key_conflict`), or `expected_generation` is stale.",
    example = json!({"code": "invalid_transition", "message": "illegal transition from `succeeded` to `running` (start): the dispatch is succeeded", "request_id": "5f0c1c44-4a0e-4f3b-9d0a-1f7a2a9b7c11"}))]
pub struct Conflict(pub ErrorBody);

/// 413: the body is too large.
#[derive(IntoResponses)]
#[response(status = 413, description = "The body exceeds `http.body_limit_bytes`.",
    example = json!({"code": "body_too_large", "message": "the request body is larger than the gateway accepts (http.body_limit_bytes); pass large data by reference instead", "request_id": "5f0c1c44-4a0e-4f3b-9d0a-1f7a2a9b7c11"}))]
pub struct PayloadTooLarge(pub ErrorBody);

/// 415: the body is not declared as JSON.
#[derive(IntoResponses)]
#[response(status = 415, description = "The body is not sent as `application/json`.",
    example = json!({"code": "unsupported_media_type", "message": "send the body as JSON with `Content-Type: application/json`", "request_id": "5f0c1c44-4a0e-4f3b-9d0a-1f7a2a9b7c11"}))]
pub struct UnsupportedMediaType(pub ErrorBody);

/// 422: a field is unknown, missing or invalid.
#[derive(IntoResponses)]
#[response(status = 422, description = "A field is unknown, missing or has an invalid value; `field` names it.",
    example = json!({"code": "invalid_body", "message": "unknown field `clster`, expected one of `function`, `args`, `kwargs`, `cluster`, `idempotency_key`, `labels`, `timeout_s`", "request_id": "5f0c1c44-4a0e-4f3b-9d0a-1f7a2a9b7c11", "field": "clster"}))]
pub struct Unprocessable(pub ErrorBody);

/// 503: the database is unreachable.
#[derive(IntoResponses)]
#[response(status = 503, description = "The gateway cannot reach its database; retry with backoff.",
    example = json!({"code": "unavailable", "message": "the gateway cannot reach its database; retry shortly", "request_id": "5f0c1c44-4a0e-4f3b-9d0a-1f7a2a9b7c11"}))]
pub struct Unavailable(pub ErrorBody);

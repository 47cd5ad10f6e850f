//! Dashboard errors become pages. Statuses and messages come from the API's
//! mapping (`ApiError`), so a 4xx names what to fix and a 5xx says nothing
//! of the gateway's insides.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::api::error::ApiError;

/// An error on its way to becoming an error page.
#[derive(Debug)]
pub struct UiError {
    pub status: StatusCode,
    pub message: String,
}

impl UiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> UiError {
        UiError { status, message: message.into() }
    }

    /// A 403 for a session whose token lacks what the action needs.
    pub fn forbidden(message: impl Into<String>) -> UiError {
        UiError::new(StatusCode::FORBIDDEN, message)
    }
}

impl From<ApiError> for UiError {
    fn from(err: ApiError) -> Self {
        UiError { status: err.status(), message: err.message().to_owned() }
    }
}

impl From<crate::Error> for UiError {
    fn from(err: crate::Error) -> Self {
        ApiError::from(err).into()
    }
}

impl IntoResponse for UiError {
    fn into_response(self) -> Response {
        let title = self.status.canonical_reason().unwrap_or("Error");
        (self.status, super::pages::error_page(title, &self.message)).into_response()
    }
}

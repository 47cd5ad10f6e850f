//! The bearer-token extractor: every `/v1` handler takes an [`Authenticated`].

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;

use super::error::ApiError;
use super::AppState;
use crate::auth::{Caller, Scope, TokenError};

/// A caller whose token verified and is not revoked.
pub struct Authenticated(pub Caller);

impl Authenticated {
    /// The caller, if it holds `scope`; otherwise a 403.
    pub fn require(self, scope: Scope) -> Result<Caller, ApiError> {
        if self.0.has(scope) {
            Ok(self.0)
        } else {
            Err(ApiError::missing_scope(scope))
        }
    }
}

impl FromRequestParts<AppState> for Authenticated {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let header = parts
            .headers
            .get(AUTHORIZATION)
            .ok_or_else(|| ApiError::unauthenticated("send `Authorization: Bearer <token>`"))?;
        let token = header
            .to_str()
            .ok()
            .and_then(|value| value.strip_prefix("Bearer ").or_else(|| value.strip_prefix("bearer ")))
            .map(str::trim)
            .ok_or_else(|| ApiError::unauthenticated("the Authorization header must be `Bearer <token>`"))?;
        let claims = state.keys.verify(token)?;
        if state.revocations.contains(&claims.jti) {
            return Err(TokenError::Revoked.into());
        }
        Ok(Authenticated(Caller::from(claims)))
    }
}

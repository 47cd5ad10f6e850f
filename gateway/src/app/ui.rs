//! The dashboard's use cases: signing in (one-time links, pasted tokens),
//! sessions, and the figures its charts draw.
//!
//! A session acts exactly as the token that opened it: same project, subject
//! and scopes, and it ends when that token is revoked or expires.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};

use super::App;
use crate::auth::{Caller, Claims, Scope};
use crate::db::ui::{FunctionHour, Grant};
use crate::{Error, Result};

/// How long a one-time login link works.
pub const LINK_TTL: Duration = Duration::from_secs(5 * 60);
/// The longest a browser session lasts (less if its token expires sooner).
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// How far back the per-function charts look.
pub const CHART_WINDOW: Duration = Duration::from_secs(7 * 86_400);
/// At most this many of a function's latest dispatches feed its charts.
const CHART_MAX_ROWS: i64 = 100_000;

/// A signed-in browser: who it acts as, and the token its forms must carry.
#[derive(Debug, Clone)]
pub struct Session {
    pub caller: Caller,
    pub csrf_token: String,
    pub expires_at: DateTime<Utc>,
}

/// A new session's cookie value (shown once, stored only hashed) and expiry.
#[derive(Debug)]
pub struct NewSession {
    pub cookie: String,
    pub expires_at: DateTime<Utc>,
}

impl App {
    /// A one-time login link acting as `caller`, valid for 5 minutes.
    /// Returns the link's path (`/ui/login/<code>`) and when it expires.
    pub async fn ui_link_create(&self, caller: &Caller) -> Result<(String, DateTime<Utc>)> {
        let grant = grant_of(caller)?;
        let code = secret();
        let expires_at = Utc::now() + LINK_TTL;
        self.db.ui_link_insert(&digest(&code), &grant, expires_at).await?;
        Ok((format!("/ui/login/{code}"), expires_at))
    }

    /// Uses up a login link; `None` if it is unknown, expired or used.
    pub async fn ui_link_use(&self, code: &str) -> Result<Option<NewSession>> {
        if !is_secret(code) {
            return Ok(None);
        }
        match self.db.ui_link_consume(&digest(code)).await? {
            Some(grant) => Ok(Some(self.ui_session_insert(grant).await?)),
            None => Ok(None),
        }
    }

    /// A session acting as `caller` (who pasted their token).
    pub async fn ui_session_create(&self, caller: &Caller) -> Result<NewSession> {
        self.ui_session_insert(grant_of(caller)?).await
    }

    async fn ui_session_insert(&self, grant: Grant) -> Result<NewSession> {
        let cookie = secret();
        let expires_at = (Utc::now() + SESSION_TTL).min(grant.token_exp);
        self.db.ui_session_insert(&digest(&cookie), &grant, &secret(), expires_at).await?;
        Ok(NewSession { cookie, expires_at })
    }

    /// The live session behind a cookie. The caller still has to check the
    /// token's revocation (`Session::caller.jti`).
    pub async fn ui_session(&self, cookie: &str) -> Result<Option<Session>> {
        if !is_secret(cookie) {
            return Ok(None);
        }
        let Some(row) = self.db.ui_session_get(&digest(cookie)).await? else {
            return Ok(None);
        };
        let claims = Claims {
            sub: row.sub,
            project: row.project,
            scopes: row.scopes,
            exp: row.expires_at.timestamp(),
            iat: 0,
            nbf: None,
            jti: row.token_jti,
            node: None,
        };
        Ok(Some(Session { caller: Caller::from(claims), csrf_token: row.csrf_token, expires_at: row.expires_at }))
    }

    /// Ends the session behind a cookie.
    pub async fn ui_session_end(&self, cookie: &str) -> Result<()> {
        if is_secret(cookie) {
            self.db.ui_session_delete(&digest(cookie)).await?;
        }
        Ok(())
    }

    /// Per hour of the last week: one function's outcomes and running-time percentiles.
    pub async fn function_hours(&self, caller: &Caller, function: &str) -> Result<Vec<FunctionHour>> {
        if function.is_empty() || function.len() > 512 {
            return Err(Error::invalid("function", "`function` must be 1 to 512 characters"));
        }
        let since = Utc::now() - CHART_WINDOW;
        self.db.function_hours(&caller.project, function, since, CHART_MAX_ROWS).await
    }
}

/// What a session made for `caller` may do. People sign in; node credentials do not.
fn grant_of(caller: &Caller) -> Result<Grant> {
    if !caller.has(Scope::DispatchRead) {
        return Err(Error::invalid(
            "token",
            "signing in to the dashboard needs a token with `dispatch:read` or `admin`",
        ));
    }
    let token_exp = DateTime::from_timestamp(caller.exp, 0).unwrap_or(DateTime::<Utc>::MAX_UTC);
    Ok(Grant {
        project: caller.project.clone(),
        sub: caller.sub.clone(),
        scopes: caller.scope_names(),
        token_jti: caller.jti.clone(),
        token_exp,
    })
}

/// 32 random bytes, hex.
fn secret() -> String {
    hex::encode(rand::random::<[u8; 32]>())
}

fn is_secret(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit())
}

fn digest(text: &str) -> Vec<u8> {
    Sha256::digest(text.as_bytes()).to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_random_hex_and_only_hex_is_looked_up() {
        let (a, b) = (secret(), secret());
        assert_ne!(a, b);
        assert!(is_secret(&a));
        assert!(!is_secret(&a[1..]));
        assert!(!is_secret(&format!("{}g", &a[1..])));
        assert!(!is_secret("../../etc/passwd"));
    }

    #[test]
    fn node_credentials_and_write_only_tokens_cannot_sign_in() {
        let reader = Caller::acting_for("p", "ann".into(), &[Scope::DispatchRead]);
        assert_eq!(grant_of(&reader).unwrap().scopes, vec!["dispatch:read".to_owned()]);
        let node = Caller::acting_for("p", "node".into(), &[Scope::Node]);
        assert!(matches!(grant_of(&node), Err(Error::InvalidField { .. })));
    }
}

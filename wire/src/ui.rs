//! The web dashboard's sign-in link.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// `POST /v1/ui/login-links`: a one-time link that signs a browser in to the
/// dashboard as the token that asked for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct LoginLink {
    /// The link's path on the gateway (`/ui/login/<code>`); prefix the gateway's URL.
    pub path: String,
    /// The whole link, on the gateway's public URL.
    pub url: String,
    /// It works once, until this instant (5 minutes after it was made).
    pub expires_at: DateTime<Utc>,
}

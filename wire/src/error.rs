//! The one error body every gateway endpoint returns.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The JSON body of every 4xx and 5xx response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({
    "code": "invalid_field",
    "message": "`cluster` must not be empty",
    "request_id": "5f0c1c44-4a0e-4f3b-9d0a-1f7a2a9b7c11",
    "field": "cluster"
}))]
pub struct ErrorBody {
    /// A stable, machine-readable code such as `not_found` or `invalid_transition`.
    pub code: String,
    /// What went wrong and, for a 4xx, what to change.
    pub message: String,
    /// The request id, also sent as the `x-request-id` response header.
    pub request_id: String,
    /// The request field at fault, when one field is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

//! Code bundles and named functions.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A stored code bundle: a tar.gz of a project folder, addressed by its sha256.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({"sha256": "3b1f…", "size_bytes": 20480, "unpacked_bytes": 81920, "files": 12, "created_at": "2026-11-22T10:00:00Z"}))]
pub struct Bundle {
    pub sha256: String,
    pub size_bytes: i64,
    pub unpacked_bytes: i64,
    pub files: i32,
    pub created_at: DateTime<Utc>,
}

/// Where a bundle was packed from, as the packing tool says on upload
/// (`POST /v1/bundles?git_commit=…&git_dirty=…&packer=…`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct BundleSource {
    /// The commit checked out in the packed project's git repository.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[param(max_length = 64)]
    pub git_commit: Option<String>,
    /// True if the packed files differed from that commit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub git_dirty: Option<bool>,
    /// The tool and version that packed it (`rh 0.1.0`, `runhouse-gateway-airflow 0.1.0`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[param(max_length = 128)]
    pub packer: Option<String>,
}

/// `POST /v1/functions`: name a function so dispatches can call it by name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"name": "embed", "function": "pipeline.embed:embed_batch", "bundle": "3b1f…", "requirements": ["numpy==2.1.0"], "cluster": "gpu"}))]
pub struct RegisterFunction {
    /// Unique within the project; registering again replaces it.
    #[schema(min_length = 1, max_length = 128)]
    pub name: String,
    /// `module:qualname`.
    #[schema(min_length = 3, max_length = 512)]
    pub function: String,
    /// sha256 of an uploaded bundle.
    #[serde(default)]
    pub bundle: Option<String>,
    #[serde(default)]
    pub requirements: Vec<String>,
    /// Default cluster for dispatches that name no cluster.
    #[serde(default)]
    pub cluster: Option<String>,
}

/// A registered function.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Function {
    pub name: String,
    pub project: String,
    pub function: String,
    pub bundle: Option<String>,
    pub requirements: Vec<String>,
    pub cluster: Option<String>,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// `GET /v1/functions`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct FunctionList {
    pub items: Vec<Function>,
}

/// Raw bytes in a request or response body (a tar.gz bundle, a binary),
/// described to OpenAPI as binary rather than as an array of numbers.
#[derive(Debug, Clone, ToSchema)]
#[schema(value_type = String, format = Binary)]
pub struct BinaryBody(pub Vec<u8>);

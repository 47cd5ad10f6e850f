//! Artifacts: files a call keeps, stored content-addressed and listed per dispatch.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The longest artifact path, in bytes.
pub const MAX_ARTIFACT_PATH: usize = 512;

/// One file a call kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Artifact {
    /// Its path under the call's `$RH_OUTPUTS`, with `/` between folders.
    pub path: String,
    pub size_bytes: i64,
    /// sha256 of the bytes, hex: the name it is stored under.
    pub sha256: String,
    /// Guessed from the file name.
    pub content_type: String,
    pub created_at: DateTime<Utc>,
}

/// `GET /v1/dispatches/{id}/artifacts`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ArtifactList {
    pub items: Vec<Artifact>,
    /// Their total size.
    pub total_bytes: i64,
}

/// Why `path` cannot name an artifact, or `None` if it can: a relative path
/// of plain names separated by `/`, with no `.` or `..`, no empty names, no
/// backslashes or control characters, and at most [`MAX_ARTIFACT_PATH`] bytes.
/// The node checks it before uploading and the gateway again on upload.
pub fn artifact_path_problem(path: &str) -> Option<String> {
    if path.is_empty() {
        return Some("an artifact path is empty".into());
    }
    if path.len() > MAX_ARTIFACT_PATH {
        return Some(format!("artifact path `{}…` is longer than {MAX_ARTIFACT_PATH} bytes", &path[..64]));
    }
    if path.chars().any(|c| c.is_control() || c == '\\') {
        return Some(format!("artifact path {path:?} contains a control character or a backslash"));
    }
    if path.starts_with('/') {
        return Some(format!("artifact path `{path}` is absolute; name it relative to $RH_OUTPUTS"));
    }
    if path.split('/').any(|name| name.is_empty() || name == "." || name == "..") {
        return Some(format!("artifact path `{path}` has an empty, `.` or `..` part; it must stay inside $RH_OUTPUTS"));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::artifact_path_problem;

    #[test]
    fn artifact_paths() {
        for ok in ["a.png", "plots/iris.png", "x/y/z.bin", "..hidden", "a..b"] {
            assert_eq!(artifact_path_problem(ok), None, "{ok}");
        }
        for bad in ["", "/etc/passwd", "../x", "a/../../x", "a//b", "a/./b", "a/", "a\\b", "a\nb", "..", "."] {
            assert!(artifact_path_problem(bad).is_some(), "{bad:?} should be refused");
        }
        assert!(artifact_path_problem(&"a".repeat(600)).is_some());
    }
}

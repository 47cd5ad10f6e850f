//! Artifacts: files a call keeps. Its node uploads each one while the
//! dispatch runs; the project reads them back by dispatch and path.

use axum::body::Bytes;
use futures::Stream;
use uuid::Uuid;

use super::App;
use crate::artifact_store::PutError;
use crate::auth::Caller;
use crate::db::{ArtifactInsert, ArtifactRow};
use crate::dispatch::DispatchState;
use crate::{Error, Result};

impl App {
    /// Keeps `path` for dispatch `id`, which must be running on the caller's
    /// node: streams `body` into the store (at most `artifacts.max_file_bytes`),
    /// then records it within the call's totals. Returns the artifact and
    /// whether it is new (a retried upload of the same bytes is not).
    pub async fn artifact_put<S, E>(
        &self,
        caller: &Caller,
        id: Uuid,
        path: &str,
        body: S,
    ) -> Result<(ArtifactRow, bool)>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let binding = caller.node().ok_or(Error::MissingNodeCredential)?;
        let Some(node_id) = self.node_id_of(caller, binding).await? else {
            return Err(Error::NotFound { kind: "node", id: binding.name.clone() });
        };
        if let Some(problem) = wire::artifact_path_problem(path) {
            return Err(Error::invalid("path", problem));
        }
        let not_running = || {
            Error::ArtifactConflict(format!(
                "dispatch {id} is not running on this node; a call keeps files while it runs"
            ))
        };
        let placed = self.db.dispatches_on_node(&[id], node_id).await?;
        if !placed.iter().any(|row| matches!(row.state, DispatchState::Running | DispatchState::Cancelling)) {
            return Err(not_running());
        }
        let limits = &self.settings.artifacts;
        let (sha256, size) = self.artifacts.put(body, limits.max_file_bytes).await.map_err(|err| match err {
            PutError::TooLarge { limit } => Error::ArtifactTooLarge(format!(
                "artifact `{path}` is larger than artifacts.max_file_bytes ({limit} bytes); keep smaller files, or \
                 write large data to your own storage and return its URI"
            )),
            PutError::Body(message) => Error::invalid("body", message),
            PutError::Store(err) => Error::StoreUnavailable(err.into()),
        })?;
        let content_type = mime_guess::from_path(path).first_or_octet_stream().essence_str().to_owned();
        let inserted = self
            .db
            .artifact_insert(
                id,
                node_id,
                path,
                &sha256,
                size as i64,
                &content_type,
                i64::from(limits.max_files),
                limits.max_call_bytes as i64,
            )
            .await?;
        let new = match inserted {
            Ok(ArtifactInsert::Stored) => true,
            Ok(ArtifactInsert::Same) => false,
            Ok(ArtifactInsert::Conflict { sha256: kept }) => {
                return Err(Error::ArtifactConflict(format!(
                    "dispatch {id} already kept `{path}` with other bytes (sha256 {kept}); a path is kept once"
                )))
            }
            Ok(ArtifactInsert::NotRunning) => return Err(not_running()),
            Err((files, bytes)) => {
                return Err(Error::ArtifactTooLarge(format!(
                    "dispatch {id} keeps {files} files of {bytes} bytes already; `{path}` ({size} bytes) would pass \
                     artifacts.max_files ({}) or artifacts.max_call_bytes ({})",
                    limits.max_files, limits.max_call_bytes
                )))
            }
        };
        let row = self
            .db
            .artifact_get(id, path)
            .await?
            .ok_or_else(|| Error::Internal(anyhow::anyhow!("artifact {id}/{path} vanished after its insert")))?;
        Ok((row, new))
    }

    /// The files one of the caller's project's dispatches kept.
    pub async fn artifact_list(&self, caller: &Caller, id: Uuid) -> Result<Vec<ArtifactRow>> {
        self.dispatch_get(caller, id).await?;
        self.db.artifact_list(id).await
    }

    /// One kept file of one of the caller's project's dispatches, and its bytes.
    pub async fn artifact_open(
        &self,
        caller: &Caller,
        id: Uuid,
        path: &str,
    ) -> Result<(ArtifactRow, impl Stream<Item = std::result::Result<Bytes, object_store::Error>> + Send + 'static)>
    {
        self.dispatch_get(caller, id).await?;
        let row = self
            .db
            .artifact_get(id, path)
            .await?
            .ok_or_else(|| Error::NotFound { kind: "artifact", id: format!("{id}/{path}") })?;
        let bytes = self.artifacts.get(&row.sha256).await.map_err(|e| Error::StoreUnavailable(e.into()))?;
        Ok((row, bytes))
    }
}

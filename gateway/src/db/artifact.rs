//! Artifacts: the files a call kept, one row per (dispatch, path).

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::DataStore;
use crate::Result;

/// One kept file.
#[derive(Debug, Clone)]
pub struct ArtifactRow {
    pub dispatch_id: Uuid,
    pub path: String,
    pub sha256: String,
    pub size_bytes: i64,
    pub content_type: String,
    pub created_at: DateTime<Utc>,
}

impl From<ArtifactRow> for wire::Artifact {
    fn from(row: ArtifactRow) -> Self {
        wire::Artifact {
            path: row.path,
            size_bytes: row.size_bytes,
            sha256: row.sha256,
            content_type: row.content_type,
            created_at: row.created_at,
        }
    }
}

/// What [`DataStore::artifact_insert`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArtifactInsert {
    Stored,
    /// The path was kept before with the same bytes: nothing changed.
    Same,
    /// The path was kept before with other bytes: refused.
    Conflict {
        sha256: String,
    },
    /// The dispatch is not running on that node (any more).
    NotRunning,
}

impl DataStore {
    /// Keeps `path` of a dispatch running on `node_id`, whose bytes are blob
    /// `sha256`, unless the call already holds `max_files` files or
    /// `max_bytes` bytes (then `Err` of the totals). One statement: the
    /// running check, the totals and the insert see the same snapshot, and
    /// the primary key settles two concurrent inserts of one path.
    #[allow(clippy::too_many_arguments)]
    pub async fn artifact_insert(
        &self,
        dispatch_id: Uuid,
        node_id: Uuid,
        path: &str,
        sha256: &str,
        size_bytes: i64,
        content_type: &str,
        max_files: i64,
        max_bytes: i64,
    ) -> Result<std::result::Result<ArtifactInsert, (i64, i64)>> {
        let row = sqlx::query!(
            r#"
            with running as (
                select dispatch_id from dispatch
                where dispatch_id = $1 and node_id = $2 and state in ('running', 'cancelling')
            ), existing as (
                select sha256 from dispatch_artifact where dispatch_id = $1 and path = $3
            ), totals as (
                select count(*) as files, coalesce(sum(size_bytes), 0)::bigint as bytes
                from dispatch_artifact where dispatch_id = $1
            ), inserted as (
                insert into dispatch_artifact (dispatch_id, path, sha256, size_bytes, content_type)
                select $1, $3, $4, $5, $6
                from running, totals
                where not exists (select 1 from existing)
                  and totals.files < $7 and totals.bytes + $5 <= $8
                on conflict (dispatch_id, path) do nothing
                returning sha256
            )
            select exists (select 1 from running) as "running!",
                   (select sha256 from existing) as existing,
                   exists (select 1 from inserted) as "inserted!",
                   (select files from totals) as "files!",
                   (select bytes from totals) as "bytes!"
            "#,
            dispatch_id,
            node_id,
            path,
            sha256,
            size_bytes,
            content_type,
            max_files,
            max_bytes,
        )
        .fetch_one(self.pool())
        .await?;
        Ok(if !row.running {
            Ok(ArtifactInsert::NotRunning)
        } else if let Some(existing) = row.existing {
            Ok(if existing == sha256 { ArtifactInsert::Same } else { ArtifactInsert::Conflict { sha256: existing } })
        } else if row.inserted {
            Ok(ArtifactInsert::Stored)
        } else if row.files >= max_files || row.bytes + size_bytes > max_bytes {
            Err((row.files, row.bytes))
        } else {
            // A concurrent upload of the same path won the insert.
            Ok(ArtifactInsert::Same)
        })
    }

    /// A dispatch's artifacts, by path.
    pub async fn artifact_list(&self, dispatch_id: Uuid) -> Result<Vec<ArtifactRow>> {
        let rows = sqlx::query_as!(
            ArtifactRow,
            "select dispatch_id, path, sha256, size_bytes, content_type, created_at
             from dispatch_artifact where dispatch_id = $1 order by path",
            dispatch_id
        )
        .fetch_all(self.pool())
        .await?;
        Ok(rows)
    }

    /// One artifact of a dispatch.
    pub async fn artifact_get(&self, dispatch_id: Uuid, path: &str) -> Result<Option<ArtifactRow>> {
        let row = sqlx::query_as!(
            ArtifactRow,
            "select dispatch_id, path, sha256, size_bytes, content_type, created_at
             from dispatch_artifact where dispatch_id = $1 and path = $2",
            dispatch_id,
            path
        )
        .fetch_optional(self.pool())
        .await?;
        Ok(row)
    }
}

//! Code bundles (content-addressed tar.gz blobs) and registered functions.

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::DataStore;
use crate::Result;

/// A bundle's metadata (the blob itself is read separately).
#[derive(Debug, Clone)]
pub struct BundleRow {
    pub sha256: String,
    pub size_bytes: i64,
    pub unpacked_bytes: i64,
    pub files: i32,
    pub created_at: DateTime<Utc>,
}

/// One row of `function`.
#[derive(Debug, Clone)]
pub struct FunctionRow {
    pub project: String,
    pub name: String,
    pub function_ref: String,
    pub bundle: Option<String>,
    pub requirements: Value,
    pub cluster: Option<String>,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl DataStore {
    /// Stores a bundle unless one with this hash exists. Returns its metadata
    /// and whether this call stored it.
    pub async fn bundle_insert(
        &self,
        sha256: &str,
        data: &[u8],
        unpacked_bytes: i64,
        files: i32,
    ) -> Result<(BundleRow, bool)> {
        let inserted = sqlx::query_as!(
            BundleRow,
            r#"
            insert into bundle (sha256, size_bytes, unpacked_bytes, files, data)
            values ($1, $2, $3, $4, $5)
            on conflict (sha256) do nothing
            returning sha256, size_bytes, unpacked_bytes, files, created_at
            "#,
            sha256,
            data.len() as i64,
            unpacked_bytes,
            files,
            data
        )
        .fetch_optional(self.pool())
        .await?;
        match inserted {
            Some(row) => Ok((row, true)),
            None => {
                let row = self.bundle_get(sha256).await?.expect("a conflicting bundle row exists");
                Ok((row, false))
            }
        }
    }

    /// A bundle's metadata.
    pub async fn bundle_get(&self, sha256: &str) -> Result<Option<BundleRow>> {
        let row = sqlx::query_as!(
            BundleRow,
            "select sha256, size_bytes, unpacked_bytes, files, created_at from bundle where sha256 = $1",
            sha256
        )
        .fetch_optional(self.pool())
        .await?;
        Ok(row)
    }

    /// Records that `project` holds bundle `sha256` (it uploaded the bytes).
    pub async fn bundle_hold(&self, project: &str, sha256: &str, source: Option<&serde_json::Value>) -> Result<()> {
        sqlx::query!(
            "insert into bundle_project (project, sha256, source) values ($1, $2, $3)
             on conflict (project, sha256) do update set source = coalesce(excluded.source, bundle_project.source)",
            project,
            sha256,
            source
        )
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// True if `project` holds bundle `sha256`.
    pub async fn bundle_held(&self, project: &str, sha256: &str) -> Result<bool> {
        let held = sqlx::query_scalar!(
            r#"select exists(select 1 from bundle_project where project = $1 and sha256 = $2) as "held!""#,
            project,
            sha256
        )
        .fetch_one(self.pool())
        .await?;
        Ok(held)
    }

    /// Where the project's copy of a bundle was packed from, if its packer said.
    pub async fn bundle_source(&self, project: &str, sha256: &str) -> Result<Option<serde_json::Value>> {
        let source = sqlx::query_scalar!(
            "select source from bundle_project where project = $1 and sha256 = $2",
            project,
            sha256
        )
        .fetch_optional(self.pool())
        .await?;
        Ok(source.flatten())
    }

    /// A bundle's bytes.
    pub async fn bundle_data(&self, sha256: &str) -> Result<Option<Vec<u8>>> {
        let data = sqlx::query_scalar!("select data from bundle where sha256 = $1", sha256)
            .fetch_optional(self.pool())
            .await?;
        Ok(data)
    }

    /// How many bundles are stored.
    pub async fn bundle_count(&self) -> Result<i64> {
        let count = sqlx::query_scalar!(r#"select count(*) as "count!" from bundle"#).fetch_one(self.pool()).await?;
        Ok(count)
    }

    /// Creates or replaces a named function.
    pub async fn function_upsert(&self, row: &FunctionRow) -> Result<FunctionRow> {
        let row = sqlx::query_as!(
            FunctionRow,
            r#"
            insert into function (project, name, function_ref, bundle, requirements, cluster, created_by)
            values ($1, $2, $3, $4, $5, $6, $7)
            on conflict (project, name) do update set
                function_ref = excluded.function_ref,
                bundle = excluded.bundle,
                requirements = excluded.requirements,
                cluster = excluded.cluster,
                updated_at = now()
            returning project, name, function_ref, bundle, requirements, cluster, created_by, created_at, updated_at
            "#,
            row.project,
            row.name,
            row.function_ref,
            row.bundle,
            row.requirements,
            row.cluster,
            row.created_by,
        )
        .fetch_one(self.pool())
        .await?;
        Ok(row)
    }

    /// One named function of a project.
    pub async fn function_get(&self, project: &str, name: &str) -> Result<Option<FunctionRow>> {
        let row = sqlx::query_as!(
            FunctionRow,
            r#"
            select project, name, function_ref, bundle, requirements, cluster, created_by, created_at, updated_at
            from function where project = $1 and name = $2
            "#,
            project,
            name
        )
        .fetch_optional(self.pool())
        .await?;
        Ok(row)
    }

    /// Every named function of a project.
    pub async fn function_list(&self, project: &str) -> Result<Vec<FunctionRow>> {
        let rows = sqlx::query_as!(
            FunctionRow,
            r#"
            select project, name, function_ref, bundle, requirements, cluster, created_by, created_at, updated_at
            from function where project = $1 order by name
            "#,
            project
        )
        .fetch_all(self.pool())
        .await?;
        Ok(rows)
    }
}

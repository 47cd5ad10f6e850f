//! The artifact store: the bytes of the files calls keep, content-addressed
//! (`blobs/<sha256>`) behind one `object_store` interface, so the local
//! filesystem, S3 and Cloud Storage behave alike.
//!
//! An upload streams into `tmp/<uuid>` while it is hashed and counted, then
//! moves to its blob name; the blob is therefore whole before anyone can
//! name it, and a failed or oversized upload leaves nothing behind.

use std::sync::Arc;

use axum::body::Bytes;
use futures::{Stream, StreamExt};
use object_store::aws::AmazonS3Builder;
use object_store::gcp::GoogleCloudStorageBuilder;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::prefix::PrefixStore;
use object_store::{ObjectStore, WriteMultipart};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::config::ArtifactSettings;

/// Why an upload was not stored.
#[derive(Debug, thiserror::Error)]
pub enum PutError {
    #[error("larger than {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("the upload was interrupted: {0}")]
    Body(String),
    #[error("the artifact store failed: {0}")]
    Store(#[from] object_store::Error),
}

/// Where artifacts' bytes live.
#[derive(Clone)]
pub struct ArtifactStore {
    store: Arc<dyn ObjectStore>,
    /// The store's URL, for logs (no credentials: they are options, never in the URL).
    pub url: String,
}

impl std::fmt::Debug for ArtifactStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArtifactStore").field("url", &self.url).finish()
    }
}

impl ArtifactStore {
    /// Opens the store `settings` name, or the default folder of `installation`.
    pub fn open(settings: &ArtifactSettings, installation: Uuid) -> anyhow::Result<ArtifactStore> {
        let url = match &settings.store {
            Some(url) => url.clone(),
            None => {
                let data = std::env::var_os("XDG_DATA_HOME")
                    .map(std::path::PathBuf::from)
                    .or_else(|| {
                        std::env::var_os("HOME").map(|home| std::path::PathBuf::from(home).join(".local/share"))
                    })
                    .unwrap_or_else(std::env::temp_dir);
                let dir = data.join("runhouse-gateway").join(format!("artifacts-{}", installation.simple()));
                format!("file://{}", dir.display())
            }
        };
        let parsed = reqwest::Url::parse(&url).map_err(|e| {
            anyhow::anyhow!("artifacts.store `{url}` is not a URL ({e}); use file:///path, s3://bucket or gs://bucket")
        })?;
        let prefix = parsed.path().trim_matches('/').to_owned();
        let store: Arc<dyn ObjectStore> = match parsed.scheme() {
            "file" => {
                let dir = std::path::PathBuf::from(parsed.path());
                std::fs::create_dir_all(&dir)
                    .map_err(|e| anyhow::anyhow!("artifacts.store: cannot create {}: {e}", dir.display()))?;
                return Ok(ArtifactStore { store: Arc::new(LocalFileSystem::new_with_prefix(&dir)?), url });
            }
            "s3" | "s3a" => {
                let mut builder = AmazonS3Builder::from_env().with_url(&url);
                for (key, value) in &settings.options {
                    let key = key.parse().map_err(|e| anyhow::anyhow!("artifacts.options: {e}"))?;
                    builder = builder.with_config(key, value);
                }
                Arc::new(builder.build()?)
            }
            "gs" => {
                let mut builder = GoogleCloudStorageBuilder::from_env().with_url(&url);
                for (key, value) in &settings.options {
                    let key = key.parse().map_err(|e| anyhow::anyhow!("artifacts.options: {e}"))?;
                    builder = builder.with_config(key, value);
                }
                Arc::new(builder.build()?)
            }
            other => anyhow::bail!("artifacts.store: unknown scheme `{other}`; use file://, s3:// or gs://"),
        };
        let store = if prefix.is_empty() { store } else { Arc::new(PrefixStore::new(store, prefix.as_str())) };
        Ok(ArtifactStore { store, url })
    }

    fn blob(sha256: &str) -> Path {
        Path::from(format!("blobs/{sha256}"))
    }

    /// Streams `body` into the store, refusing more than `limit` bytes.
    /// Returns the bytes' sha256 (hex) and size once their blob is whole.
    pub async fn put<S, E>(&self, body: S, limit: u64) -> Result<(String, u64), PutError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let staging = Path::from(format!("tmp/{}", Uuid::new_v4()));
        let upload = self.store.put_multipart(&staging).await?;
        let mut writer = WriteMultipart::new(upload);
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        let mut body = body;
        let fail = |writer: WriteMultipart, error: PutError| async move {
            let _ = writer.abort().await;
            Err(error)
        };
        while let Some(chunk) = body.next().await {
            let chunk = match chunk {
                Ok(chunk) => chunk,
                Err(err) => return fail(writer, PutError::Body(err.to_string())).await,
            };
            size += chunk.len() as u64;
            if size > limit {
                return fail(writer, PutError::TooLarge { limit }).await;
            }
            hasher.update(&chunk);
            // Back-pressure: at most a few parts in flight.
            if let Err(err) = writer.wait_for_capacity(4).await {
                return Err(err.into());
            }
            writer.put(chunk);
        }
        writer.finish().await?;
        let sha256 = hex::encode(hasher.finalize());
        let blob = Self::blob(&sha256);
        if self.store.head(&blob).await.is_ok() {
            // Kept before (by this call or another): one copy is enough.
            let _ = self.store.delete(&staging).await;
        } else {
            self.store.rename(&staging, &blob).await?;
        }
        Ok((sha256, size))
    }

    /// The bytes of blob `sha256`, streamed.
    pub async fn get(
        &self,
        sha256: &str,
    ) -> Result<impl Stream<Item = Result<Bytes, object_store::Error>> + Send + 'static, object_store::Error> {
        Ok(self.store.get(&Self::blob(sha256)).await?.into_stream())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks(parts: &[&'static [u8]]) -> impl Stream<Item = Result<Bytes, std::convert::Infallible>> + Unpin {
        futures::stream::iter(parts.iter().map(|p| Ok(Bytes::from_static(p))).collect::<Vec<_>>())
    }

    #[tokio::test]
    async fn blobs_are_content_addressed_and_limits_leave_nothing_behind() {
        let dir = std::env::temp_dir().join(format!("rh-artifact-store-{}", Uuid::new_v4().simple()));
        let settings = ArtifactSettings { store: Some(format!("file://{}", dir.display())), ..Default::default() };
        let store = ArtifactStore::open(&settings, Uuid::nil()).unwrap();
        let (sha, size) = store.put(chunks(&[b"hello ", b"world"]), 100).await.unwrap();
        assert_eq!((sha.as_str(), size), ("b94d27b9934d3e08a52e52d7da7dabfac484efe37a5380ee9088f7ace2efcde9", 11));
        // The same bytes again: one blob.
        assert_eq!(store.put(chunks(&[b"hello world"]), 100).await.unwrap().0, sha);
        let mut got = Vec::new();
        let mut stream = store.get(&sha).await.unwrap();
        while let Some(chunk) = stream.next().await {
            got.extend_from_slice(&chunk.unwrap());
        }
        assert_eq!(got, b"hello world");
        assert!(matches!(store.put(chunks(&[b"0123456789", b"x"]), 10).await, Err(PutError::TooLarge { limit: 10 })));
        let left: Vec<_> = walk(&dir);
        assert_eq!(left, vec![format!("blobs/{sha}")], "only the blob remains");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn walk(dir: &std::path::Path) -> Vec<String> {
        let mut files = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for entry in std::fs::read_dir(&d).unwrap().flatten() {
                if entry.file_type().unwrap().is_dir() {
                    stack.push(entry.path());
                } else {
                    files.push(entry.path().strip_prefix(dir).unwrap().display().to_string());
                }
            }
        }
        files
    }
}

//! The node's cache of unpacked code bundles, by sha256.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};

use crate::gateway::GatewayClient;

/// Unpacked bundles under `<work>/bundles/<sha256>/`.
pub struct BundleCache {
    root: PathBuf,
    gateway: GatewayClient,
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl BundleCache {
    /// A cache in `root`.
    pub fn new(root: PathBuf, gateway: GatewayClient) -> BundleCache {
        BundleCache { root, gateway, locks: Mutex::new(HashMap::new()) }
    }

    /// The folder holding bundle `sha256`, downloading and unpacking it on first use.
    pub async fn ensure(&self, sha256: &str) -> Result<PathBuf, String> {
        if sha256.len() != 64 || !sha256.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(format!("`{sha256}` is not a sha256"));
        }
        let dir = self.root.join(sha256);
        if dir.is_dir() {
            return Ok(dir);
        }
        let lock = self.locks.lock().expect("lock poisoned").entry(sha256.to_owned()).or_default().clone();
        let _held = lock.lock().await;
        if dir.is_dir() {
            return Ok(dir);
        }
        let data = self.gateway.bundle(sha256).await.map_err(|e| format!("cannot download bundle {sha256}: {e}"))?;
        let actual = hex::encode(Sha256::digest(&data));
        if actual != sha256 {
            return Err(format!("bundle {sha256} arrived with sha256 {actual}"));
        }
        let root = self.root.clone();
        let target = dir.clone();
        tokio::task::spawn_blocking(move || unpack(&root, &target, &data))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("cannot unpack bundle {sha256}: {e}"))?;
        Ok(dir)
    }
}

/// Unpacks into a temporary folder, then renames it into place, so a crash
/// never leaves a half-unpacked bundle that looks complete.
fn unpack(root: &Path, target: &Path, data: &[u8]) -> std::io::Result<()> {
    std::fs::create_dir_all(root)?;
    let staging = root.join(format!(".tmp-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&staging)?;
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(data));
    archive.set_preserve_permissions(false);
    archive.set_overwrite(true);
    // `unpack` refuses entries that would land outside `staging`.
    let result = archive.unpack(&staging).and_then(|_| std::fs::rename(&staging, target));
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&staging);
    }
    result
}

//! Per-requirements Python environments: `pip install --target` into
//! `<work>/envs/<hash>/` on first use, then reused by every call with the same
//! requirement set. pip runs with the node's environment, so `PIP_INDEX_URL`,
//! `PIP_FIND_LINKS` and `PIP_NO_INDEX` point it at a mirror or a wheel folder
//! on machines without internet.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};

/// Cached requirement environments.
pub struct EnvCache {
    root: PathBuf,
    python: String,
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl EnvCache {
    /// A cache in `root`, installing with `python -m pip`.
    pub fn new(root: PathBuf, python: String) -> EnvCache {
        EnvCache { root, python, locks: Mutex::new(HashMap::new()) }
    }

    /// The site folder for `requirements`, installing it on first use. `None` for no requirements.
    pub async fn ensure(&self, requirements: &[String]) -> Result<Option<PathBuf>, String> {
        if requirements.is_empty() {
            return Ok(None);
        }
        let mut sorted = requirements.to_vec();
        sorted.sort();
        sorted.dedup();
        let hash = hex::encode(Sha256::digest(sorted.join("\n").as_bytes()));
        let dir = self.root.join(&hash[..32]);
        if dir.is_dir() {
            return Ok(Some(dir));
        }
        let lock = self.locks.lock().expect("lock poisoned").entry(hash.clone()).or_default().clone();
        let _held = lock.lock().await;
        if dir.is_dir() {
            return Ok(Some(dir));
        }
        std::fs::create_dir_all(&self.root).map_err(|e| e.to_string())?;
        let staging = self.root.join(format!(".tmp-{}", uuid::Uuid::new_v4().simple()));
        let mut pip = tokio::process::Command::new(&self.python);
        // pip runs the requirements' build code: it sees none of the node's secrets.
        for (name, _) in std::env::vars_os().filter(|(name, _)| crate::worker::is_private_env(name)) {
            pip.env_remove(name);
        }
        let output = pip
            .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-input", "--target"])
            .arg(&staging)
            .args(&sorted)
            .output()
            .await
            .map_err(|e| format!("cannot run pip ({}): {e}", self.python))?;
        if !output.status.success() {
            let _ = std::fs::remove_dir_all(&staging);
            let stderr = String::from_utf8_lossy(&output.stderr);
            let tail: Vec<&str> = stderr.lines().rev().take(15).collect::<Vec<_>>().into_iter().rev().collect();
            return Err(format!("pip could not install {}: {}", sorted.join(" "), tail.join("\n")));
        }
        std::fs::rename(&staging, &dir).map_err(|e| e.to_string())?;
        Ok(Some(dir))
    }
}

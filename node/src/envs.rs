//! Per-requirements Python environments: `pip install --target` into
//! `<envs>/<hash>/` (`<work>/envs/` unless `--envs-dir` says otherwise) on
//! first use, then reused by every call with the same requirement set.
//! Daemons may share the folder: each installs into a staging folder and
//! renames it into place, and a daemon that loses that race uses the
//! winner's. pip runs with the node's environment, so `PIP_INDEX_URL`,
//! `PIP_FIND_LINKS` and `PIP_NO_INDEX` point it at a mirror or a wheel folder
//! on machines without internet. Under a root daemon pip runs as the worker
//! user, in the workers' sandbox: a requirement's build code gets no more
//! rights than the calls that import it. The finished folder then belongs to
//! the daemon, so no call can change what later calls import.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};

use crate::sandbox::WorkerUser;

/// Cached requirement environments.
pub struct EnvCache {
    root: PathBuf,
    python: String,
    user: Option<WorkerUser>,
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl EnvCache {
    /// A cache in `root`, installing with `python -m pip`.
    pub fn new(root: PathBuf, python: String, user: Option<WorkerUser>) -> EnvCache {
        EnvCache { root, python, user, locks: Mutex::new(HashMap::new()) }
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
        std::fs::create_dir(&staging).map_err(|e| e.to_string())?;
        let _jail = match &self.user {
            Some(user) => {
                nix::unistd::chown(&staging, Some(user.uid), Some(user.gid)).map_err(|e| e.to_string())?;
                let python = std::fs::canonicalize(&self.python).map_err(|e| format!("{}: {e}", self.python))?;
                // The interpreter's prefix (`<prefix>/bin/python`): its standard library.
                let prefix = python.parent().and_then(Path::parent).unwrap_or(&python).to_path_buf();
                let requirement_paths: Vec<PathBuf> =
                    sorted.iter().map(PathBuf::from).filter(|p| p.is_absolute() && p.exists()).collect();
                let mut exposed: Vec<&Path> = vec![&prefix, &staging];
                exposed.extend(requirement_paths.iter().map(PathBuf::as_path));
                let jail = Arc::new(user.jail(&exposed).map_err(|e| format!("{e:#}"))?);
                pip.envs(user.env());
                jail.apply(&mut pip);
                Some(jail)
            }
            None => None,
        };
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
        if self.user.is_some() {
            chown_tree(&staging).map_err(|e| format!("cannot take ownership of {}: {e}", staging.display()))?;
        }
        if let Err(err) = std::fs::rename(&staging, &dir) {
            let _ = std::fs::remove_dir_all(&staging);
            // Another daemon sharing this folder finished the same set first.
            if !dir.is_dir() {
                return Err(format!("cannot move the environment into {}: {err}", dir.display()));
            }
        }
        Ok(Some(dir))
    }
}

/// Gives `root` and everything under it to the daemon's user, read-only for others.
fn chown_tree(root: &Path) -> std::io::Result<()> {
    let (uid, gid) = (nix::unistd::Uid::effective(), nix::unistd::Gid::effective());
    let mut stack = vec![root.to_path_buf()];
    while let Some(path) = stack.pop() {
        nix::unistd::fchownat(None, &path, Some(uid), Some(gid), nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW)?;
        let meta = std::fs::symlink_metadata(&path)?;
        if meta.is_dir() {
            for entry in std::fs::read_dir(&path)? {
                stack.push(entry?.path());
            }
        }
        if !meta.is_symlink() {
            use std::os::unix::fs::PermissionsExt;
            let mode = meta.permissions().mode() & !0o022;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))?;
        }
    }
    Ok(())
}

//! A call's `$RH_OUTPUTS`: a folder the node makes for each call, whose
//! files become the dispatch's artifacts when the call ends.
//!
//! Making and removing a folder are metadata writes that can wait behind
//! the file system's journal (on a disk Postgres is flushing, several
//! milliseconds), so neither happens on a call's path: a few empty folders
//! are made ahead of time, and a finished call's folder is removed after
//! its report, by the same background job that makes its replacement. That
//! job never runs beside a call's worker (on two cores it would delay the
//! worker's wake-up), and costs one blocking-pool hand-off per call, not
//! two. A folder is never given to a second call, so a process the first
//! left behind cannot write into another call's outputs.
//!
//! Everything in it is checked before anything is uploaded: regular files
//! only (a symbolic link could point anywhere on the node), UTF-8 paths the
//! gateway accepts, and the gateway's limits. A folder that breaks a rule
//! fails the call with a message naming the file and the rule, rather than
//! keeping part of what the call asked to keep.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crate::gateway::{self, GatewayClient};

/// Where calls' output folders go, and who owns them.
pub struct Outputs {
    root: PathBuf,
    /// The worker user, when workers run as another user than the daemon.
    owner: Option<(nix::unistd::Uid, nix::unistd::Gid)>,
    limits: Mutex<wire::ArtifactLimits>,
    /// Empty folders made ahead of calls.
    ready: Mutex<Vec<PathBuf>>,
    /// Whether a task is making more of them.
    refilling: AtomicBool,
}

/// How many empty folders are kept ready.
const READY_FOLDERS: usize = 8;

/// One file to keep.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kept {
    pub path: String,
    pub file: PathBuf,
    pub size: u64,
}

/// Why a call's outputs could not be kept: a failure code and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub code: &'static str,
    pub message: String,
}

/// What a node assumes the gateway allows until it says otherwise.
const DEFAULT_LIMITS: wire::ArtifactLimits =
    wire::ArtifactLimits { max_file_bytes: 1 << 30, max_call_bytes: 4 << 30, max_files: 1_000 };

impl Outputs {
    /// Output folders under `root` (made now, and emptied of any a previous
    /// run of the node left), owned by `owner` if given.
    pub fn new(root: PathBuf, owner: Option<(nix::unistd::Uid, nix::unistd::Gid)>) -> std::io::Result<Outputs> {
        if root.exists() {
            std::fs::remove_dir_all(&root)?;
        }
        std::fs::create_dir_all(&root)?;
        if let Some((uid, gid)) = owner {
            nix::unistd::chown(&root, Some(uid), Some(gid))?;
        }
        Ok(Outputs {
            root,
            owner,
            limits: Mutex::new(DEFAULT_LIMITS),
            ready: Mutex::default(),
            refilling: AtomicBool::new(false),
        })
    }

    /// The limits the gateway announced at registration.
    pub fn set_limits(&self, limits: wire::ArtifactLimits) {
        *self.limits.lock().expect("limits lock poisoned") = limits;
    }

    /// An empty output folder for one call: one made ahead of time if there
    /// is one, else one made now (and more are made in the background).
    /// Spares taken are replaced when calls end (see [`Outputs::remove_later`]).
    pub fn take(self: &Arc<Self>) -> std::io::Result<PathBuf> {
        let ready = self.ready.lock().expect("folders lock poisoned").pop();
        if let Some(dir) = ready {
            return Ok(dir);
        }
        let dir = self.make()?;
        if !self.refilling.load(Ordering::Acquire) {
            let outputs = self.clone();
            tokio::task::spawn_blocking(move || outputs.refill());
        }
        Ok(dir)
    }

    /// Makes spare folders up to [`READY_FOLDERS`], unless another thread is at it.
    fn refill(&self) {
        if self.refilling.swap(true, Ordering::AcqRel) {
            return;
        }
        while self.ready.lock().expect("folders lock poisoned").len() < READY_FOLDERS {
            match self.make() {
                Ok(dir) => self.ready.lock().expect("folders lock poisoned").push(dir),
                Err(err) => {
                    tracing::warn!(error = %err, "cannot make an output folder ahead of a call");
                    break;
                }
            }
        }
        self.refilling.store(false, Ordering::Release);
    }

    /// Makes one empty folder only the worker user can use.
    fn make(&self) -> std::io::Result<PathBuf> {
        let dir = self.root.join(uuid::Uuid::new_v4().simple().to_string());
        std::fs::create_dir(&dir)?;
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
        if let Some((uid, gid)) = self.owner {
            nix::unistd::chown(&dir, Some(uid), Some(gid))?;
        }
        Ok(dir)
    }

    /// Removes a call's output folder (its files are uploaded or not wanted)
    /// and makes the spare that replaces it, in one background job.
    pub fn remove_later(self: &Arc<Self>, dir: PathBuf) {
        let outputs = self.clone();
        tokio::task::spawn_blocking(move || {
            if let Err(err) = std::fs::remove_dir_all(&dir) {
                if err.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(dir = %dir.display(), error = %err, "cannot remove a call's output folder");
                }
            }
            outputs.refill();
        });
    }

    /// The files of `dir` to keep, checked against the rules and limits.
    pub fn collect(&self, dir: &Path) -> Result<Vec<Kept>, Refusal> {
        let limits = *self.limits.lock().expect("limits lock poisoned");
        let rejected = |message: String| Refusal { code: "artifact_rejected", message };
        let too_large = |message: String| Refusal { code: "artifact_too_large", message };
        let mut kept = Vec::new();
        let mut folders = vec![dir.to_path_buf()];
        while let Some(folder) = folders.pop() {
            let entries = std::fs::read_dir(&folder)
                .map_err(|e| rejected(format!("cannot read {} in $RH_OUTPUTS: {e}", folder.display())))?;
            for entry in entries {
                let entry = entry.map_err(|e| rejected(format!("cannot read $RH_OUTPUTS: {e}")))?;
                let file = entry.path();
                let relative = file.strip_prefix(dir).expect("walked from dir");
                let Some(path) = relative.to_str().map(str::to_owned) else {
                    return Err(rejected(format!("{} in $RH_OUTPUTS is not a UTF-8 name", relative.display())));
                };
                // Never follows a link: what the node uploads stays inside the folder.
                let meta = std::fs::symlink_metadata(&file)
                    .map_err(|e| rejected(format!("cannot read `{path}` in $RH_OUTPUTS: {e}")))?;
                if meta.is_dir() {
                    folders.push(file);
                    continue;
                }
                if !meta.is_file() {
                    let what = if meta.file_type().is_symlink() { "a symbolic link" } else { "not a regular file" };
                    return Err(rejected(format!(
                        "`{path}` in $RH_OUTPUTS is {what}; only regular files are kept (copy the file there instead)"
                    )));
                }
                if let Some(problem) = wire::artifact_path_problem(&path) {
                    return Err(rejected(problem));
                }
                if meta.len() > limits.max_file_bytes {
                    return Err(too_large(format!(
                        "artifact `{path}` is {} bytes, over the gateway's artifacts.max_file_bytes ({} bytes); keep \
                         smaller files, or write large data to your own storage and return its URI",
                        meta.len(),
                        limits.max_file_bytes
                    )));
                }
                kept.push(Kept { path, file, size: meta.len() });
            }
        }
        if kept.len() > limits.max_files as usize {
            return Err(too_large(format!(
                "the call wrote {} files to $RH_OUTPUTS, over the gateway's artifacts.max_files ({})",
                kept.len(),
                limits.max_files
            )));
        }
        let total: u64 = kept.iter().map(|k| k.size).sum();
        if total > limits.max_call_bytes {
            return Err(too_large(format!(
                "the call wrote {total} bytes to $RH_OUTPUTS, over the gateway's artifacts.max_call_bytes ({} bytes)",
                limits.max_call_bytes
            )));
        }
        kept.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(kept)
    }
}

/// Uploads `kept` as artifacts of `id`, in order; stops at the first refusal.
pub async fn upload(gateway: &GatewayClient, id: wire::DispatchId, kept: &[Kept]) -> Result<(), Refusal> {
    for file in kept {
        let started = std::time::Instant::now();
        match gateway.artifact_put(id, &file.path, &file.file).await {
            Ok(()) => {
                tracing::debug!(dispatch_id = %id, path = %file.path, bytes = file.size, elapsed = ?started.elapsed(), "artifact kept")
            }
            Err(gateway::Error::Refused { status, body }) => {
                let message = serde_json::from_str::<wire::ErrorBody>(&body).map(|b| b.message).unwrap_or(body);
                let code = if status == reqwest::StatusCode::PAYLOAD_TOO_LARGE {
                    "artifact_too_large"
                } else {
                    "artifact_rejected"
                };
                return Err(Refusal {
                    code,
                    message: format!("the gateway refused artifact `{}`: {message}", file.path),
                });
            }
            Err(err @ gateway::Error::Unavailable(_)) => {
                return Err(Refusal {
                    code: "artifact_upload_failed",
                    message: format!("artifact `{}` could not be uploaded: {err}", file.path),
                })
            }
        }
    }
    Ok(())
}

/// `1234567` → `1.2 MB`.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["kB", "MB", "GB", "TB"];
    if bytes < 1000 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1000.0;
    let mut unit = 0;
    while value >= 1000.0 && unit < UNITS.len() - 1 {
        value /= 1000.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outputs() -> (Arc<Outputs>, PathBuf) {
        let root = std::env::temp_dir().join(format!("rh-outputs-test-{}", uuid::Uuid::new_v4().simple()));
        (Arc::new(Outputs::new(root.clone(), None).unwrap()), root)
    }

    #[tokio::test]
    async fn every_call_gets_a_new_empty_folder_and_spares_are_made_ahead() {
        let (outputs, root) = outputs();
        let first = outputs.take().unwrap();
        std::fs::write(first.join("model.bin"), b"1").unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while outputs.ready.lock().unwrap().len() < READY_FOLDERS {
            assert!(std::time::Instant::now() < deadline, "the spare folders were not made");
            tokio::task::yield_now().await;
        }
        let second = outputs.take().unwrap();
        assert_ne!(first, second);
        assert_eq!(std::fs::read_dir(&second).unwrap().count(), 0);
        let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&second).unwrap().permissions());
        assert_eq!(mode & 0o777, 0o700);
        outputs.remove_later(first.clone());
        while first.exists() || outputs.ready.lock().unwrap().len() < READY_FOLDERS {
            assert!(std::time::Instant::now() < deadline, "the used folder was not removed and replaced");
            tokio::task::yield_now().await;
        }
        // A restarted node starts from an empty root.
        drop(Outputs::new(root.clone(), None).unwrap());
        assert_eq!(std::fs::read_dir(&root).unwrap().count(), 0);
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn files_in_folders_are_kept_by_relative_path() {
        let (outputs, root) = outputs();
        let dir = outputs.make().unwrap();
        std::fs::create_dir_all(dir.join("plots")).unwrap();
        std::fs::write(dir.join("plots/iris.png"), b"png").unwrap();
        std::fs::write(dir.join("model.bin"), b"12345").unwrap();
        let kept = outputs.collect(&dir).unwrap();
        let paths: Vec<(&str, u64)> = kept.iter().map(|k| (k.path.as_str(), k.size)).collect();
        assert_eq!(paths, [("model.bin", 5), ("plots/iris.png", 3)]);
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn links_and_oversized_files_are_refused_with_their_names() {
        let (outputs, root) = outputs();
        let dir = outputs.make().unwrap();
        std::os::unix::fs::symlink("/etc/passwd", dir.join("passwd")).unwrap();
        let refusal = outputs.collect(&dir).unwrap_err();
        assert_eq!(refusal.code, "artifact_rejected");
        assert!(refusal.message.contains("`passwd`") && refusal.message.contains("symbolic link"), "{refusal:?}");
        std::fs::remove_file(dir.join("passwd")).unwrap();
        outputs.set_limits(wire::ArtifactLimits { max_file_bytes: 4, max_call_bytes: 100, max_files: 10 });
        std::fs::write(dir.join("big.bin"), b"12345").unwrap();
        let refusal = outputs.collect(&dir).unwrap_err();
        assert_eq!(refusal.code, "artifact_too_large");
        assert!(
            refusal.message.contains("big.bin") && refusal.message.contains("max_file_bytes (4 bytes)"),
            "{refusal:?}"
        );
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn sizes_read_as_people_write_them() {
        assert_eq!(human_bytes(999), "999 B");
        assert_eq!(human_bytes(31_200), "31.2 kB");
        assert_eq!(human_bytes(104_857_600), "104.9 MB");
    }
}

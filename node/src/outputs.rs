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
//! two. A process a call left behind cannot write into another call's
//! outputs: a folder goes to a later call only as [`Recycling`] allows.
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
    /// Emptied folders on their way to later calls (with a worker user only).
    recycling: Option<Mutex<Recycling>>,
}

/// How many empty folders are kept ready.
const READY_FOLDERS: usize = 8;

/// Giving a finished call's folder to a later call instead of removing it
/// and making another: each of those is an inode freed and allocated, and
/// on a journal-less ext4 (this project's benchmark machine) allocating one
/// skips every inode freed in the last minutes, while freeing one's block
/// waits for a discard when the disk is mounted with `discard`. Under load
/// that was half of the node daemon's CPU.
///
/// A folder goes back into use only if:
/// - the call left it as it was given: empty, the worker user's, mode
///   0700, no extended attributes (so no ACL);
/// - it was moved at once into `dir`, which only root can enter, so from
///   then on nothing can open it by a path (its old one is gone);
/// - a later look at every process of the worker user found none holding it
///   open or working in it (compared by device and inode, which holds across
///   the workers' mount namespaces).
///
/// It then takes a new name under the outputs root. A folder some process
/// still holds is removed, as any folder the call wrote to is. Only a
/// daemon running workers as another user recycles: otherwise a worker
/// could reach `dir` itself.
struct Recycling {
    dir: PathBuf,
    /// Moved out of reach, not yet looked at.
    waiting: Vec<PathBuf>,
    /// No process held them when last looked at.
    free: Vec<PathBuf>,
    /// When the processes were last looked at.
    looked_at: Option<std::time::Instant>,
}

/// Looking at the worker user's processes reads `/proc` for every process
/// on the machine (~1 ms), so it waits until this many folders wait, or
/// until a second has passed; meanwhile spares are made as before.
const LOOK_AFTER: usize = READY_FOLDERS;

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
    /// run of the node left), owned by `owner` if given. With an owner,
    /// emptied folders wait in `recycle_in` (root's, on the same file
    /// system) to be given out again; see [`Recycling`].
    pub fn new(
        root: PathBuf,
        owner: Option<(nix::unistd::Uid, nix::unistd::Gid)>,
        recycle_in: Option<PathBuf>,
    ) -> std::io::Result<Outputs> {
        for dir in std::iter::once(&root).chain(recycle_in.as_ref()) {
            if dir.exists() {
                std::fs::remove_dir_all(dir)?;
            }
            std::fs::create_dir_all(dir)?;
        }
        if let Some((uid, gid)) = owner {
            nix::unistd::chown(&root, Some(uid), Some(gid))?;
        }
        let recycling = match (owner, recycle_in) {
            (Some(_), Some(dir)) => {
                std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
                Some(Mutex::new(Recycling { dir, waiting: Vec::new(), free: Vec::new(), looked_at: None }))
            }
            _ => None,
        };
        Ok(Outputs {
            root,
            owner,
            limits: Mutex::new(DEFAULT_LIMITS),
            ready: Mutex::default(),
            refilling: AtomicBool::new(false),
            recycling,
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
            match self.reuse().map_or_else(|| self.make(), Ok) {
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

    /// Puts a call's output folder (its files are uploaded or not wanted)
    /// out of use: recycled if it may be, else removed; then makes the
    /// spare that replaces it. One background job.
    pub fn remove_later(self: &Arc<Self>, dir: PathBuf) {
        let outputs = self.clone();
        tokio::task::spawn_blocking(move || {
            if !outputs.recycle(&dir) {
                remove(&dir);
            }
            outputs.refill();
        });
    }

    /// Moves `dir` out of reach to be given out again, if it is as it was
    /// given (see [`Recycling`]); false if it must be removed instead.
    fn recycle(&self, dir: &Path) -> bool {
        let Some(recycling) = &self.recycling else { return false };
        if !self.as_given(dir) {
            return false;
        }
        let mut recycling = recycling.lock().expect("recycling lock poisoned");
        let to = recycling.dir.join(uuid::Uuid::new_v4().simple().to_string());
        if std::fs::rename(dir, &to).is_err() {
            return false;
        }
        recycling.waiting.push(to);
        true
    }

    /// True if `dir` is as a call was given it: an empty folder of the
    /// worker user, mode 0700, with no extended attributes.
    fn as_given(&self, dir: &Path) -> bool {
        use std::os::unix::fs::MetadataExt;
        let Some((uid, _)) = self.owner else { return false };
        std::fs::symlink_metadata(dir)
            .is_ok_and(|meta| meta.is_dir() && meta.uid() == uid.as_raw() && meta.mode() & 0o7777 == 0o700)
            && std::fs::read_dir(dir).is_ok_and(|mut entries| entries.next().is_none())
            && !has_xattrs(dir)
    }

    /// A recycled folder under a new name, if one is free: looks at the
    /// worker user's processes first when only unchecked ones wait (enough
    /// of them, or for long enough: see [`LOOK_AFTER`]).
    fn reuse(&self) -> Option<PathBuf> {
        let (uid, _) = self.owner?;
        let mut recycling = self.recycling.as_ref()?.lock().expect("recycling lock poisoned");
        let now = std::time::Instant::now();
        if recycling.free.is_empty() && look_due(recycling.waiting.len(), recycling.looked_at, now) {
            recycling.looked_at = Some(now);
            let held = held_inodes(uid.as_raw());
            for folder in std::mem::take(&mut recycling.waiting) {
                let key = std::fs::symlink_metadata(&folder).map(|m| {
                    use std::os::unix::fs::MetadataExt;
                    (m.dev(), m.ino())
                });
                match key {
                    // Checked again now that nothing can reach it: a process
                    // holding it until just now may have written to it.
                    Ok(key) if !held.contains(&key) && self.as_given(&folder) => recycling.free.push(folder),
                    // Some process holds it (or it is gone): never given out again.
                    _ => remove(&folder),
                }
            }
        }
        let folder = recycling.free.pop()?;
        drop(recycling);
        let to = self.root.join(uuid::Uuid::new_v4().simple().to_string());
        match std::fs::rename(&folder, &to) {
            Ok(()) => Some(to),
            Err(err) => {
                tracing::debug!(folder = %folder.display(), error = %err, "cannot reuse an output folder");
                remove(&folder);
                None
            }
        }
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

/// Whether to look at the worker user's processes now, with `waiting`
/// folders unchecked and the last look at `looked_at` (see [`LOOK_AFTER`]).
fn look_due(waiting: usize, looked_at: Option<std::time::Instant>, now: std::time::Instant) -> bool {
    waiting > 0
        && (waiting >= LOOK_AFTER
            || looked_at.is_none_or(|at| now.duration_since(at) >= std::time::Duration::from_secs(1)))
}

/// Removes a folder that is out of use, and what is in it.
fn remove(dir: &Path) {
    if let Err(err) = std::fs::remove_dir_all(dir) {
        if err.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(dir = %dir.display(), error = %err, "cannot remove a call's output folder");
        }
    }
}

/// True if `path` has extended attributes (an ACL is one), or they cannot be read.
fn has_xattrs(path: &Path) -> bool {
    xattr::list(path).map_or(true, |mut names| names.next().is_some())
}

/// The (device, inode) of every file, folder and working directory that a
/// process of user `uid` holds, from `/proc`.
fn held_inodes(uid: u32) -> std::collections::HashSet<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let mut held = std::collections::HashSet::new();
    let Ok(processes) = std::fs::read_dir("/proc") else { return held };
    for process in processes.flatten() {
        let pid = process.path();
        if !process.file_name().to_str().is_some_and(|name| name.bytes().all(|b| b.is_ascii_digit())) {
            continue;
        }
        // Real, effective, saved or file-system uid: any of them can reach the user's folders.
        let runs_as = std::fs::read_to_string(pid.join("status")).is_ok_and(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("Uid:"))
                .is_some_and(|ids| ids.split_whitespace().any(|id| id.parse() == Ok(uid)))
        });
        if !runs_as {
            continue;
        }
        let fds = std::fs::read_dir(pid.join("fd")).into_iter().flatten().flatten().map(|fd| fd.path());
        for link in [pid.join("cwd"), pid.join("root")].into_iter().chain(fds) {
            if let Ok(meta) = std::fs::metadata(&link) {
                held.insert((meta.dev(), meta.ino()));
            }
        }
    }
    held
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
        (Arc::new(Outputs::new(root.clone(), None, None).unwrap()), root)
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
        drop(Outputs::new(root.clone(), None, None).unwrap());
        assert_eq!(std::fs::read_dir(&root).unwrap().count(), 0);
        std::fs::remove_dir_all(root).unwrap();
    }

    /// A Python process running as `nobody` that opens folder `dir`, and
    /// once a line (or the end) comes on its stdin runs `then` (`fd` is the
    /// folder's descriptor) and exits. Returns once the folder is open.
    fn open_as_nobody(dir: &Path, then: &str) -> std::process::Child {
        use std::io::BufRead;
        use std::os::unix::process::CommandExt;
        let script = format!(
            "import os, sys; fd = os.open(sys.argv[1], os.O_RDONLY | os.O_DIRECTORY); print('open', flush=True); \
             sys.stdin.readline(); {then}"
        );
        let mut child = std::process::Command::new("python3")
            .args(["-c", &script])
            .arg(dir)
            .uid(65534)
            .gid(65534)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "open");
        child
    }

    #[test]
    fn an_emptied_folder_goes_to_a_later_call_under_a_new_name_only_if_nothing_holds_it() {
        use std::os::unix::fs::MetadataExt;
        if !nix::unistd::Uid::effective().is_root() {
            eprintln!("skipped: needs root (folders owned by another user)");
            return;
        }
        let work = std::env::temp_dir().join(format!("rh-outputs-recycle-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(work.join("home")).unwrap();
        let nobody = (nix::unistd::Uid::from_raw(65534), nix::unistd::Gid::from_raw(65534));
        let outputs = Outputs::new(work.join("home/outputs"), Some(nobody), Some(work.join("recycled"))).unwrap();
        let inode = |dir: &Path| std::fs::symlink_metadata(dir).unwrap().ino();

        // A process of the worker user holds the folder open: it is never given out again.
        let held = outputs.make().unwrap();
        let mut holder = open_as_nobody(&held, "");
        assert!(outputs.recycle(&held), "an untouched folder is recycled");
        assert!(!held.exists(), "its old path is gone at once");
        assert_eq!(outputs.reuse(), None, "a held folder is not given out");
        assert_eq!(std::fs::read_dir(work.join("recycled")).unwrap().count(), 0, "it is removed instead");
        drop(holder.stdin.take());
        holder.wait().unwrap();

        // A process that held it writes through its descriptor and lets go
        // before the look: the folder is checked again, and removed.
        let written_late = outputs.make().unwrap();
        let mut writer =
            open_as_nobody(&written_late, "os.close(os.open('late.txt', os.O_CREAT | os.O_WRONLY, dir_fd=fd))");
        assert!(outputs.recycle(&written_late), "untouched when the call ended");
        std::io::Write::write_all(writer.stdin.as_mut().unwrap(), b"write\n").unwrap();
        assert!(writer.wait().unwrap().success());
        outputs.recycling.as_ref().unwrap().lock().unwrap().looked_at = None;
        assert_eq!(outputs.reuse(), None, "a folder written to while it waited is not given out");
        assert_eq!(std::fs::read_dir(work.join("recycled")).unwrap().count(), 0, "it is removed instead");

        // Nothing holds them: the same folders, empty, under new names.
        let free: Vec<PathBuf> = (0..LOOK_AFTER).map(|_| outputs.make().unwrap()).collect();
        let before: Vec<u64> = free.iter().map(|dir| inode(dir)).collect();
        for dir in &free {
            assert!(outputs.recycle(dir));
        }
        for _ in 0..LOOK_AFTER {
            let again = outputs.reuse().expect("a free folder is given out again");
            assert!(!free.contains(&again) && again.starts_with(work.join("home/outputs")));
            assert!(before.contains(&inode(&again)));
            assert_eq!(std::fs::read_dir(&again).unwrap().count(), 0);
        }
        assert_eq!(outputs.reuse(), None, "all given out");

        // Anything a call changed sends its folder to removal instead.
        let written = outputs.make().unwrap();
        std::fs::write(written.join("model.bin"), b"1").unwrap();
        assert!(!outputs.recycle(&written), "a folder with files");
        let opened_up = outputs.make().unwrap();
        std::fs::set_permissions(&opened_up, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        assert!(!outputs.recycle(&opened_up), "a folder whose mode changed");
        let tagged = outputs.make().unwrap();
        xattr::set(&tagged, "user.tag", b"1").expect("this file system takes user xattrs");
        assert!(!outputs.recycle(&tagged), "a folder with extended attributes");
        assert!(written.exists() && opened_up.exists() && tagged.exists(), "left for the caller to remove");
        std::fs::remove_dir_all(work).unwrap();
    }

    #[test]
    fn processes_are_looked_at_for_a_batch_of_folders_or_once_a_second() {
        let now = std::time::Instant::now();
        let just_now = Some(now);
        let a_second_ago = Some(now - std::time::Duration::from_secs(1));
        assert!(!look_due(0, None, now), "nothing waits");
        assert!(look_due(1, None, now), "the first look");
        assert!(!look_due(LOOK_AFTER - 1, just_now, now));
        assert!(look_due(LOOK_AFTER, just_now, now));
        assert!(look_due(1, a_second_ago, now));
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

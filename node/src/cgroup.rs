//! One cgroup (v2) per worker, where the node can make them: stopping a
//! worker kills every process in its cgroup, including ones that left the
//! worker's process group (`setsid`, daemonising double forks). A process
//! cannot move itself out of its cgroup without write access to another
//! one's `cgroup.procs`, so this holds for anything the call started.
//!
//! The node makes its subtree under its own cgroup (`rh-node-<pid>`); that
//! needs root or a delegated subtree (systemd `Delegate=yes`). Where it
//! cannot, workers are stopped by process group only, which a process that
//! calls `setsid` escapes; the README says so.

use std::path::{Path, PathBuf};

/// The node's cgroup subtree, if it could make one.
#[derive(Debug, Clone)]
pub struct Cgroups {
    root: Option<PathBuf>,
}

impl Cgroups {
    /// Makes `<own cgroup>/rh-node-<pid>` on the cgroup2 hierarchy, removing
    /// the subtrees of node daemons that are gone. `None` inside if not possible.
    pub fn for_this_node() -> Cgroups {
        let root = own_cgroup_dir().and_then(|dir| {
            remove_stale(&dir);
            let root = dir.join(format!("rh-node-{}", std::process::id()));
            match std::fs::create_dir_all(&root) {
                Ok(()) => Some(root),
                Err(err) => {
                    tracing::info!(error = %err, "no cgroup for workers; cancel stops process groups only");
                    None
                }
            }
        });
        Cgroups { root }
    }

    /// A new cgroup for one worker, with `pid` moved into it.
    pub fn place(&self, pid: u32) -> Option<WorkerCgroup> {
        let dir = self.root.as_ref()?.join(format!("w-{pid}"));
        std::fs::create_dir(&dir).ok()?;
        match std::fs::write(dir.join("cgroup.procs"), pid.to_string()) {
            Ok(()) => Some(WorkerCgroup { dir }),
            Err(err) => {
                tracing::warn!(error = %err, pid, "cannot move a worker into its cgroup");
                let _ = std::fs::remove_dir(&dir);
                None
            }
        }
    }

    /// Removes the node's subtree (at exit; its workers are gone by then).
    pub fn remove(&self) {
        if let Some(root) = &self.root {
            if let Ok(entries) = std::fs::read_dir(root) {
                for entry in entries.flatten().filter(|e| e.path().is_dir()) {
                    let worker = WorkerCgroup { dir: entry.path() };
                    worker.kill();
                    let _ = std::fs::remove_dir(entry.path());
                }
            }
            let _ = std::fs::remove_dir(root);
        }
    }
}

/// One worker's cgroup.
#[derive(Debug)]
pub struct WorkerCgroup {
    dir: PathBuf,
}

impl WorkerCgroup {
    /// SIGKILLs every process in the cgroup (`cgroup.kill`, or one by one on
    /// kernels before 5.14).
    pub fn kill(&self) {
        if std::fs::write(self.dir.join("cgroup.kill"), "1").is_ok() {
            return;
        }
        for _ in 0..10 {
            let pids = self.pids();
            if pids.is_empty() {
                return;
            }
            for pid in pids {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
            }
        }
    }

    /// True once no process is left in it.
    pub fn is_empty(&self) -> bool {
        self.pids().is_empty()
    }

    /// Removes the (empty) cgroup.
    pub fn remove(&self) {
        let _ = std::fs::remove_dir(&self.dir);
    }

    fn pids(&self) -> Vec<i32> {
        std::fs::read_to_string(self.dir.join("cgroup.procs"))
            .map(|text| text.lines().filter_map(|l| l.trim().parse().ok()).collect())
            .unwrap_or_default()
    }
}

/// This process's cgroup folder on the cgroup2 hierarchy, if one is mounted.
fn own_cgroup_dir() -> Option<PathBuf> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    // Fields: id parent major:minor root mount-point options ... - fstype source super-options
    let mount = mountinfo.lines().find_map(|line| {
        let (before, after) = line.split_once(" - ")?;
        (after.split_whitespace().next() == Some("cgroup2")).then(|| before.split_whitespace().nth(4))?
    })?;
    let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let path = own.lines().find_map(|line| line.strip_prefix("0::"))?;
    Some(Path::new(mount).join(path.trim_start_matches('/')))
}

/// Removes the subtrees of node daemons whose process is gone.
fn remove_stale(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.strip_prefix("rh-node-")).and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        Cgroups { root: Some(entry.path()) }.remove();
    }
}

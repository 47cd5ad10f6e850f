//! The `local` provider: `rh-node` processes on the gateway's own machine.
//!
//! Each instance gets a folder named by its instance key under the work
//! folder, holding the node's work files, its log and a pid file. The folder
//! is the instance's "tag": after a gateway restart the provider finds its
//! processes again by reading them, so nothing is started twice.

use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use uuid::Uuid;

use super::{Instance, InstanceRequest, Provider, ProviderError};
use crate::config::Settings;

/// Spawns and stops local node processes.
pub struct LocalProvider {
    binary: Option<PathBuf>,
    dir: PathBuf,
}

impl LocalProvider {
    /// Uses `compute.node_binary_path` (default: `rh-node` next to this
    /// executable) and a work folder named after the database's installation
    /// id: every replica of one installation on this machine shares it (and
    /// so sees the same nodes), and installations never see each other's.
    pub fn new(settings: &Settings, installation: Uuid) -> LocalProvider {
        let binary = node_binary_path(settings);
        let dir = settings
            .compute
            .local_work_dir
            .clone()
            .unwrap_or_else(|| std::env::temp_dir().join(format!("rh-local-nodes-{}", installation.simple())));
        LocalProvider { binary, dir }
    }

    fn instance_dir(&self, key: &str) -> PathBuf {
        self.dir.join(key)
    }
}

/// The `rh-node` binary this gateway runs locally and serves to machines.
pub fn node_binary_path(settings: &Settings) -> Option<PathBuf> {
    settings.compute.node_binary_path.clone().or_else(|| {
        let exe = std::env::current_exe().ok()?;
        Some(exe.parent()?.join("rh-node")).filter(|p| p.is_file())
    })
}

#[async_trait]
impl Provider for LocalProvider {
    async fn create(&self, request: &InstanceRequest) -> Result<String, ProviderError> {
        if let Some(found) = self.find(request).await? {
            return Ok(found.provider_id);
        }
        let binary = self.binary.as_ref().filter(|b| b.is_file()).ok_or_else(|| {
            ProviderError::Rejected(
                "the local provider needs rh-node next to rh-gateway (`cargo build -p node`) \
                 or compute.node_binary_path"
                    .into(),
            )
        })?;
        let dir = self.instance_dir(&request.instance_key);
        std::fs::create_dir_all(&dir).map_err(|e| unavailable("cannot create the node folder", e))?;
        std::fs::write(dir.join("cluster"), request.cluster_id.to_string())
            .map_err(|e| unavailable("cannot write the node folder", e))?;
        let log = std::fs::File::create(dir.join("node.log")).map_err(|e| unavailable("cannot create node.log", e))?;
        let log_err = log.try_clone().map_err(|e| unavailable("cannot open node.log", e))?;
        let mut command = tokio::process::Command::new(binary);
        command
            .args(["run", "--gateway", &request.bootstrap.gateway_url, "--instance-id", &request.instance_key])
            .arg("--work-dir")
            .arg(dir.join("work"))
            .env("RH_NODE_JOIN", &request.bootstrap.join_token)
            .env("RH_NODE_DIE_WITH_PARENT", "1")
            .env_remove("RH_NODE_TOKEN")
            .stdin(std::process::Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .process_group(0);
        let child = command.spawn().map_err(|e| unavailable("cannot start rh-node", e))?;
        let pid = child.id().ok_or_else(|| ProviderError::Unavailable("rh-node exited at once".into()))?;
        // Dropping the handle does not kill the process; tokio reaps it when it exits.
        drop(child);
        std::fs::write(dir.join("pid"), pid.to_string()).map_err(|e| unavailable("cannot write the pid file", e))?;
        Ok(pid.to_string())
    }

    async fn find(&self, request: &InstanceRequest) -> Result<Option<Instance>, ProviderError> {
        Ok(read_instance(&self.instance_dir(&request.instance_key), &request.instance_key))
    }

    async fn terminate(&self, provider_id: &str, _location: &str) -> Result<(), ProviderError> {
        let Ok(pid) = provider_id.parse::<i32>() else { return Ok(()) };
        // The node leads its own process group; its workers are in theirs and die with it.
        if killpg(Pid::from_raw(pid), Signal::SIGTERM).is_ok() {
            let dir = self.dir.clone();
            tokio::spawn(async move {
                // Up to 5 s to exit cleanly, then SIGKILL; once it is gone its folder
                // (work files, virtualenvs, log) goes too, so terminated nodes leave nothing.
                let gone = || process_state(pid).is_none_or(|state| state == "Z");
                let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
                while !gone() && tokio::time::Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                if !gone() {
                    let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
                }
                if let Some(folder) = folder_of_pid(&dir, pid) {
                    let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(folder)).await;
                }
            });
        }
        Ok(())
    }

    async fn list_managed(&self, _locations: &[String]) -> Result<Vec<Instance>, ProviderError> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else { return Ok(Vec::new()) };
        Ok(entries
            .flatten()
            .filter_map(|entry| {
                let key = entry.file_name().to_string_lossy().into_owned();
                read_instance(&entry.path(), &key)
            })
            .collect())
    }

    fn location(&self, _spec: &wire::ClusterSpec) -> String {
        String::new()
    }

    fn cheap_to_watch(&self) -> bool {
        true
    }
}

/// The live process recorded in `dir`, checked against `/proc` so a reused
/// pid is never mistaken for our node.
fn read_instance(dir: &Path, key: &str) -> Option<Instance> {
    let pid: u32 = std::fs::read_to_string(dir.join("pid")).ok()?.trim().parse().ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let state = process_state(pid as i32);
    if state.as_deref() == Some("Z") || !String::from_utf8_lossy(&cmdline).split('\0').any(|arg| arg == key) {
        return None;
    }
    let cluster_id = std::fs::read_to_string(dir.join("cluster")).ok().and_then(|s| s.trim().parse::<Uuid>().ok());
    Some(Instance {
        provider_id: pid.to_string(),
        cluster_id,
        instance_key: Some(key.to_owned()),
        location: String::new(),
    })
}

/// The state letter of process `pid` from `/proc` (`Z` for a zombie), if it exists.
fn process_state(pid: i32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    Some(stat.rsplit_once(')')?.1.split_whitespace().next()?.to_owned())
}

/// The instance folder whose pid file names `pid`.
fn folder_of_pid(dir: &Path, pid: i32) -> Option<PathBuf> {
    std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|entry| entry.path())
        .find(|path| std::fs::read_to_string(path.join("pid")).is_ok_and(|text| text.trim() == pid.to_string()))
}

fn unavailable(what: &str, err: std::io::Error) -> ProviderError {
    ProviderError::Unavailable(format!("{what}: {err}"))
}

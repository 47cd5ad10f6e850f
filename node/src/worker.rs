//! Worker processes, seen from the daemon: spawning, running one call while
//! reading its output, killing, and a pool that keeps them warm.
//!
//! A worker runs one call at a time; the node runs several calls at once by
//! holding several workers. Each worker leads its own process group and, where
//! the node can make one, has its own cgroup, so a cancel or timeout kills
//! exactly that call's work, children and `setsid` grandchildren included,
//! without touching other calls.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Mutex;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use std::os::fd::AsRawFd;
use tokio::io::AsyncReadExt;

use tokio::net::UnixStream;
use tokio::process::{Child, ChildStderr, ChildStdout, Command};
use tokio::sync::mpsc;
use tokio_util::codec::{Framed, LengthDelimitedCodec};

use crate::cgroup::{Cgroups, WorkerCgroup};
use crate::protocol::{CallRequest, CallResponse, HostEvent, HostRequest, Ready, MAX_FRAME};
use crate::sandbox::WorkerUser;

/// The descriptor a worker reads its calls from and answers on.
pub const WORKER_FD: i32 = 3;

/// Time between SIGTERM and SIGKILL when a worker is stopped.
pub const KILL_GRACE: Duration = Duration::from_millis(300);

/// The size of each output pipe's read buffer.
const READ_BUF: usize = 16 * 1024;

/// What makes two workers interchangeable: the same import paths.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EnvKey {
    /// The unpacked bundle (also the working directory), if any.
    pub bundle_dir: Option<PathBuf>,
    /// A requirements environment (pip `--target` folder), if any.
    pub site_dir: Option<PathBuf>,
}

/// One chunk of a call's output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    pub stream: wire::LogStream,
    pub text: String,
}

/// Why a worker could not finish a call.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot start a worker: {0}")]
    Spawn(String),
    /// The process died mid-call (segfault, `os._exit`, OOM kill, ...).
    #[error("{0}")]
    Died(String),
}

/// A running worker process.
pub struct Worker {
    key: EnvKey,
    pid: u32,
    /// Its interpreter's `sys.version`.
    python: String,
    /// The names of the environment variables it runs with.
    env_names: Vec<String>,
    child: Option<Child>,
    /// Length-prefixed frames. `next()` keeps a partly read frame in the
    /// codec's buffer, so racing it against the output pipes in a `select!`
    /// never loses a frame's place (a large result while output streams).
    conn: Framed<UnixStream, LengthDelimitedCodec>,
    stdout: ChildStdout,
    stderr: ChildStderr,
    /// Read buffers for `stdout` and `stderr`, made once per worker. Made
    /// per call (two of 16 KiB, one of 64 KiB to drain), they were 96 KiB
    /// of memory zeroed on every call, 40 times the bytes a no-op call
    /// exchanges with its worker.
    out_buf: Box<[u8]>,
    err_buf: Box<[u8]>,
    /// Its own cgroup, where the node can make one: stopping the worker
    /// kills everything in it, even processes that left its process group.
    cgroup: Option<WorkerCgroup>,
}

/// The prefix of the interpreter workers embed (`PYTHONHOME`, else the one the node was built with).
pub fn python_home() -> Option<PathBuf> {
    std::env::var_os("PYTHONHOME")
        .map(PathBuf::from)
        .or_else(|| (!env!("RH_PYTHON_HOME").is_empty()).then(|| PathBuf::from(env!("RH_PYTHON_HOME"))))
}

/// The codec of the daemon ↔ worker socket: a 4-byte big-endian length, then
/// the JSON body (what `protocol::write_frame` writes on the worker's side).
fn codec() -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder().length_field_length(4).big_endian().max_frame_length(MAX_FRAME).new_codec()
}

/// Environment variables no user code may see: the node's credentials and
/// settings, and the gateway's.
pub fn is_private_env(name: &std::ffi::OsStr) -> bool {
    name.to_str().is_some_and(|n| n.starts_with("RH_") || n == "DATABASE_URL")
}

impl Worker {
    /// Starts `rh-node worker` and waits until its interpreter is up. Under
    /// a root daemon with a worker user, the worker runs as that user in a
    /// sandbox that shows it only what it needs (see `sandbox`).
    pub async fn spawn(exe: &Path, key: EnvKey, cgroups: &Cgroups, user: Option<&WorkerUser>) -> Result<Worker, Error> {
        // The control channel is a socket pair handed over as fd 3: no socket
        // file another process could connect to, and nothing to clean up.
        let (ours, theirs) = std::os::unix::net::UnixStream::pair().map_err(|e| Error::Spawn(e.to_string()))?;
        ours.set_nonblocking(true).map_err(|e| Error::Spawn(e.to_string()))?;
        let conn = UnixStream::from_std(ours).map_err(|e| Error::Spawn(e.to_string()))?;
        let mut command = Command::new(exe);
        command.arg("worker").arg("--fd").arg(WORKER_FD.to_string());
        let mut env_names: std::collections::BTreeSet<String> = std::env::vars_os()
            .filter(|(name, _)| !is_private_env(name))
            .filter_map(|(name, _)| name.into_string().ok())
            .collect();
        env_names.extend(["PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE"].map(str::to_owned));
        for path in key.bundle_dir.iter().chain(key.site_dir.iter()) {
            command.arg("--path").arg(path);
        }
        if let Some(dir) = &key.bundle_dir {
            command.current_dir(dir);
        }
        let python_home = python_home();
        if let Some(home) = &python_home {
            command.env("PYTHONHOME", home);
            env_names.insert("PYTHONHOME".into());
        }
        for (name, _) in std::env::vars_os().filter(|(name, _)| is_private_env(name)) {
            command.env_remove(name);
        }
        command
            .env("PYTHONUNBUFFERED", "1")
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(false);
        let theirs_fd = theirs.as_raw_fd();
        #[allow(unsafe_code)]
        // SAFETY: dup2 and fcntl only, on a descriptor that is open in the child.
        unsafe {
            command.pre_exec(move || {
                if theirs_fd == WORKER_FD {
                    nix::fcntl::fcntl(WORKER_FD, nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()))?;
                } else {
                    nix::unistd::dup2(theirs_fd, WORKER_FD)?;
                }
                Ok(())
            });
        }
        let _jail = match user {
            Some(user) => {
                let mut exposed: Vec<&Path> = vec![exe];
                exposed.extend(python_home.as_deref());
                exposed.extend(key.bundle_dir.as_deref());
                exposed.extend(key.site_dir.as_deref());
                let jail = std::sync::Arc::new(user.jail(&exposed).map_err(|e| Error::Spawn(format!("{e:#}")))?);
                command.envs(user.env());
                env_names.extend(user.env().into_iter().map(|(name, _)| name.to_string()));
                jail.apply(&mut command);
                Some(jail)
            }
            None => None,
        };
        let mut child = command.spawn().map_err(|e| Error::Spawn(format!("{}: {e}", exe.display())))?;
        drop(theirs);
        let pid = child.id().unwrap_or(0);
        // Before it runs any user code: it only starts Python until it is sent a call.
        let cgroup = cgroups.place(pid);
        let mut conn = Framed::new(conn, codec());
        let ready = tokio::time::timeout(Duration::from_secs(30), conn.next()).await;
        let python = match ready {
            Ok(Some(Ok(frame))) => {
                serde_json::from_slice::<Ready>(&frame).map_err(|e| Error::Spawn(e.to_string()))?.python
            }
            _ => {
                let _ = child.start_kill();
                let output = child.wait_with_output().await.ok();
                let stderr = output.map(|o| String::from_utf8_lossy(&o.stderr).into_owned()).unwrap_or_default();
                return Err(Error::Spawn(format!("the worker did not start: {}", stderr.trim())));
            }
        };
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        let env_names = env_names.into_iter().collect();
        let (out_buf, err_buf) = (vec![0u8; READ_BUF].into_boxed_slice(), vec![0u8; READ_BUF].into_boxed_slice());
        Ok(Worker { key, pid, python, env_names, child: Some(child), conn, stdout, stderr, out_buf, err_buf, cgroup })
    }

    /// The worker's pid (also its process group id).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Its interpreter's `sys.version`.
    pub fn python(&self) -> &str {
        &self.python
    }

    /// The names of the environment variables it runs with.
    pub fn env_names(&self) -> &[String] {
        &self.env_names
    }

    /// Runs one call, sending its output to `output` as it appears.
    pub async fn call(&mut self, request: &CallRequest, output: &mpsc::Sender<Output>) -> Result<CallResponse, Error> {
        self.drain_idle_output();
        let body = serde_json::to_vec(request).map_err(|e| Error::Died(format!("cannot encode the call: {e}")))?;
        self.conn.send(axum::body::Bytes::from(body)).await.map_err(|_| self.death())?;
        let mut out_text = Utf8Chunks::default();
        let mut err_text = Utf8Chunks::default();
        let mut out_open = true;
        let mut err_open = true;
        let response = loop {
            tokio::select! {
                frame = self.conn.next() => match frame.map(|f| f.map(|bytes| serde_json::from_slice::<CallResponse>(&bytes))) {
                    Some(Ok(Ok(response))) => break response,
                    _ => {
                        // Collect its last words before reporting the death.
                        self.drain_ready(&mut out_text, &mut err_text, output).await;
                        return Err(self.death_after_exit().await);
                    }
                },
                read = self.stdout.read(&mut self.out_buf), if out_open => match read {
                    Ok(0) | Err(_) => out_open = false,
                    Ok(n) => send(output, wire::LogStream::Stdout, out_text.push(&self.out_buf[..n])).await,
                },
                read = self.stderr.read(&mut self.err_buf), if err_open => match read {
                    Ok(0) | Err(_) => err_open = false,
                    Ok(n) => send(output, wire::LogStream::Stderr, err_text.push(&self.err_buf[..n])).await,
                },
            }
        };
        // The worker flushed before answering, so the rest of its output is already in the pipes.
        self.drain_ready(&mut out_text, &mut err_text, output).await;
        Ok(response)
    }

    /// Makes this worker the host of an instance: sends the constructor
    /// (`construct`, with `host` set), then relays [`HostRequest`]s from
    /// `requests` and routes what the worker sends to the calls in `calls`,
    /// until `requests` closes (the instance is stopped: the worker is
    /// killed as it drops) or the worker dies. Calls still waiting then get
    /// the worker's death.
    pub async fn host(
        mut self,
        construct: &CallRequest,
        mut requests: mpsc::Receiver<HostRequest>,
        calls: HostedCalls,
    ) {
        let body = serde_json::to_vec(construct).expect("a call request serializes");
        let ended = if self.conn.send(axum::body::Bytes::from(body)).await.is_err() {
            self.death()
        } else {
            let (mut out_open, mut err_open) = (true, true);
            loop {
                tokio::select! {
                    frame = self.conn.next() => match frame.map(|f| f.map(|bytes| serde_json::from_slice::<HostEvent>(&bytes))) {
                        Some(Ok(Ok(event))) => calls.deliver(event).await,
                        Some(Ok(Err(err))) => tracing::warn!(error = %err, "an instance worker sent an unreadable frame"),
                        _ => break self.death_after_exit().await,
                    },
                    request = requests.recv() => match request {
                        Some(request) => {
                            let body = serde_json::to_vec(&request).expect("a host request serializes");
                            if self.conn.send(axum::body::Bytes::from(body)).await.is_err() {
                                break self.death_after_exit().await;
                            }
                        }
                        // Stopped: dropping the worker kills it.
                        None => break Error::Died("the instance was stopped".into()),
                    },
                    // Output of threads no call owns: the node's log, not a dispatch's.
                    read = self.stdout.read(&mut self.out_buf), if out_open => match read {
                        Ok(0) | Err(_) => out_open = false,
                        Ok(n) => tracing::info!(pid = self.pid, "instance output: {}", String::from_utf8_lossy(&self.out_buf[..n]).trim_end()),
                    },
                    read = self.stderr.read(&mut self.err_buf), if err_open => match read {
                        Ok(0) | Err(_) => err_open = false,
                        Ok(n) => tracing::info!(pid = self.pid, "instance stderr: {}", String::from_utf8_lossy(&self.err_buf[..n]).trim_end()),
                    },
                }
            }
        };
        calls.fail_all(&ended);
    }

    /// True if the process is still alive.
    pub fn is_alive(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    async fn drain_ready(
        &mut self,
        out_text: &mut Utf8Chunks,
        err_text: &mut Utf8Chunks,
        output: &mpsc::Sender<Output>,
    ) {
        while let Some(n) = read_now(&self.stdout, &mut self.out_buf) {
            send(output, wire::LogStream::Stdout, out_text.push(&self.out_buf[..n])).await;
        }
        while let Some(n) = read_now(&self.stderr, &mut self.err_buf) {
            send(output, wire::LogStream::Stderr, err_text.push(&self.err_buf[..n])).await;
        }
        send(output, wire::LogStream::Stdout, out_text.finish()).await;
        send(output, wire::LogStream::Stderr, err_text.finish()).await;
    }

    /// Discards output written between calls (by threads a previous call left behind).
    fn drain_idle_output(&mut self) {
        while read_now(&self.stdout, &mut self.out_buf).is_some() {}
        while read_now(&self.stderr, &mut self.err_buf).is_some() {}
    }

    fn death(&self) -> Error {
        Error::Died("the worker process died".into())
    }

    async fn death_after_exit(&mut self) -> Error {
        let Some(child) = self.child.as_mut() else { return self.death() };
        let status = tokio::time::timeout(Duration::from_secs(2), child.wait()).await;
        let message = match status {
            Ok(Ok(status)) => {
                use std::os::unix::process::ExitStatusExt;
                match (status.signal(), status.code()) {
                    (Some(9), _) => {
                        "the worker process was killed (SIGKILL; often the out-of-memory killer)".to_owned()
                    }
                    (Some(signal), _) => format!(
                        "the worker process died from signal {signal} ({})",
                        Signal::try_from(signal).map(|s| s.as_str()).unwrap_or("unknown")
                    ),
                    (None, Some(code)) => format!(
                        "the worker process exited with status {code} mid-call (os._exit or sys.exit in a thread?)"
                    ),
                    (None, None) => "the worker process died".to_owned(),
                }
            }
            _ => "the worker process stopped answering".to_owned(),
        };
        Error::Died(message)
    }
}

impl Drop for Worker {
    /// Stops the whole process group (SIGTERM, then SIGKILL after a short
    /// grace), then everything left in the worker's cgroup.
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        let cgroup = self.cgroup.take();
        let group = Pid::from_raw(self.pid as i32);
        let exited = matches!(child.try_wait(), Ok(Some(_)));
        if !exited {
            let _ = killpg(group, Signal::SIGTERM);
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            let _ = killpg(group, Signal::SIGKILL);
            if let Some(cgroup) = &cgroup {
                cgroup.kill();
            }
            return;
        };
        runtime.spawn(async move {
            if !exited && tokio::time::timeout(KILL_GRACE, child.wait()).await.is_err() {
                let _ = killpg(group, Signal::SIGKILL);
                let _ = child.wait().await;
            } else {
                // The leader is gone; make sure nothing it started lingers.
                let _ = killpg(group, Signal::SIGKILL);
            }
            if let Some(cgroup) = cgroup {
                cgroup.kill();
                for _ in 0..50 {
                    if cgroup.is_empty() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                cgroup.remove();
            }
        });
    }
}

/// Reads whatever is already in the pipe, without waiting; `None` if nothing is.
///
/// This reads the fd directly (it is non-blocking) rather than polling the
/// tokio handle, whose readiness flag may lag behind data already in the pipe.
fn read_now<R: std::os::fd::AsRawFd>(reader: &R, buf: &mut [u8]) -> Option<usize> {
    match nix::unistd::read(reader.as_raw_fd(), buf) {
        Ok(n) if n > 0 => Some(n),
        _ => None,
    }
}

async fn send(output: &mpsc::Sender<Output>, stream: wire::LogStream, text: String) {
    if !text.is_empty() {
        let _ = output.send(Output { stream, text }).await;
    }
}

/// Turns byte chunks into text without splitting a UTF-8 character.
#[derive(Default)]
struct Utf8Chunks {
    pending: Vec<u8>,
}

impl Utf8Chunks {
    fn push(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        let valid = match std::str::from_utf8(&self.pending) {
            Ok(_) => self.pending.len(),
            Err(err) if err.error_len().is_none() => err.valid_up_to(),
            Err(_) => self.pending.len(), // invalid bytes: pass through lossily
        };
        let rest = self.pending.split_off(valid);
        let text = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending = rest;
        text
    }

    fn finish(&mut self) -> String {
        String::from_utf8_lossy(&std::mem::take(&mut self.pending)).into_owned()
    }
}

/// The calls an instance worker is running, by call id: where each one's
/// output goes and who waits for its end.
#[derive(Clone, Default)]
pub struct HostedCalls(std::sync::Arc<Mutex<HashMap<String, HostedCall>>>);

/// One call of an instance worker.
pub struct HostedCall {
    pub output: mpsc::Sender<Output>,
    pub done: tokio::sync::oneshot::Sender<Result<CallResponse, Error>>,
}

impl HostedCalls {
    /// Expects `call`: its output and end go to `call`'s channels.
    pub fn expect(&self, id: String, call: HostedCall) {
        self.0.lock().expect("hosted calls lock poisoned").insert(id, call);
    }

    /// Stops expecting `id`: whatever it still sends is dropped.
    pub fn forget(&self, id: &str) {
        self.0.lock().expect("hosted calls lock poisoned").remove(id);
    }

    async fn deliver(&self, event: HostEvent) {
        match event {
            HostEvent::Output { call, stream, text } => {
                let output = self.0.lock().expect("hosted calls lock poisoned").get(&call).map(|c| c.output.clone());
                if let Some(output) = output {
                    let stream = if stream == "stderr" { wire::LogStream::Stderr } else { wire::LogStream::Stdout };
                    let _ = output.send(Output { stream, text }).await;
                }
            }
            HostEvent::Done { call, ok, payload } => {
                let Some(waiter) = self.0.lock().expect("hosted calls lock poisoned").remove(&call) else { return };
                let response = if ok {
                    Ok(CallResponse::Returned { result: payload })
                } else {
                    match serde_json::from_str::<wire::DispatchFailure>(&payload) {
                        Ok(f) => Ok(CallResponse::Failed(f)),
                        Err(err) => Err(Error::Died(format!("the instance worker sent an unreadable outcome: {err}"))),
                    }
                };
                let _ = waiter.done.send(response);
            }
        }
    }

    fn fail_all(&self, why: &Error) {
        let calls: Vec<HostedCall> =
            self.0.lock().expect("hosted calls lock poisoned").drain().map(|(_, call)| call).collect();
        for call in calls {
            let _ = call.done.send(Err(Error::Died(why.to_string())));
        }
    }
}

/// Idle workers, kept warm per environment.
pub struct Pool {
    exe: PathBuf,
    user: Option<WorkerUser>,
    cgroups: Cgroups,
    max_idle: usize,
    idle: Mutex<HashMap<EnvKey, Vec<Worker>>>,
}

impl Pool {
    /// A pool that starts workers with `exe` (the `rh-node` binary).
    pub fn new(exe: PathBuf, cgroups: Cgroups, user: Option<WorkerUser>, max_idle: usize) -> Pool {
        Pool { exe, cgroups, user, max_idle, idle: Mutex::new(HashMap::new()) }
    }

    /// A warm worker for `key`, or a new one.
    pub async fn acquire(&self, key: &EnvKey) -> Result<Worker, Error> {
        loop {
            let candidate = self.idle.lock().expect("pool lock poisoned").get_mut(key).and_then(Vec::pop);
            match candidate {
                Some(mut worker) => {
                    if worker.is_alive() {
                        return Ok(worker);
                    }
                    // Died while idle; dropping it reaps it.
                }
                None => break,
            }
        }
        Worker::spawn(&self.exe, key.clone(), &self.cgroups, self.user.as_ref()).await
    }

    /// Returns a healthy worker to the pool; beyond the idle limit, the
    /// longest-idle worker of another environment is stopped first.
    pub fn release(&self, worker: Worker) {
        let mut idle = self.idle.lock().expect("pool lock poisoned");
        let total: usize = idle.values().map(Vec::len).sum();
        if total >= self.max_idle {
            let victim = idle.iter().filter(|(k, v)| **k != worker.key && !v.is_empty()).map(|(k, _)| k.clone()).next();
            match victim {
                Some(key) => drop(idle.get_mut(&key).and_then(|v| (!v.is_empty()).then(|| v.remove(0)))),
                None => return, // drop `worker`: this environment alone fills the pool
            }
        }
        idle.entry(worker.key.clone()).or_default().push(worker);
    }

    /// How many idle workers are kept warm, over every environment.
    pub fn idle_count(&self) -> usize {
        self.idle.lock().expect("pool lock poisoned").values().map(Vec::len).sum()
    }

    /// A worker of its own for `key`, never taken from or given back to the
    /// pool (an instance lives in it).
    pub async fn dedicated(&self, key: &EnvKey) -> Result<Worker, Error> {
        Worker::spawn(&self.exe, key.clone(), &self.cgroups, self.user.as_ref()).await
    }

    /// Starts one idle worker for `key` ahead of demand.
    pub async fn prewarm(&self, key: EnvKey) -> Result<(), Error> {
        let worker = Worker::spawn(&self.exe, key, &self.cgroups, self.user.as_ref()).await?;
        self.release(worker);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::Utf8Chunks;

    #[test]
    fn a_character_split_across_chunks_is_kept_whole() {
        let bytes = "héllo".as_bytes();
        let mut chunks = Utf8Chunks::default();
        let first = chunks.push(&bytes[..2]);
        let second = chunks.push(&bytes[2..]);
        assert_eq!(first, "h");
        assert_eq!(second, "éllo");
        assert_eq!(chunks.finish(), "");
    }
}

//! The calls a node runs: admission up to the concurrency limit, execution in
//! a worker, cancel and timeout, log shipping, and the final report.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::bundles::BundleCache;
use crate::envs::EnvCache;
use crate::gateway::GatewayClient;
use crate::outputs::{self, Outputs};
use crate::protocol::{CallRequest, CallResponse, HostRequest};
use crate::worker::{self, EnvKey, HostedCall, HostedCalls, Output, Pool};

/// Output is shipped at least this often while a call runs.
const LOG_FLUSH: Duration = Duration::from_millis(50);
/// ... or as soon as this much is buffered.
const LOG_BATCH_BYTES: usize = 64 * 1024;
/// How long a cancelled method call of an instance has to stop before its
/// thread is left behind (it is blocked outside Python) and it is reported
/// cancelled anyway.
pub const METHOD_CANCEL_GRACE: Duration = Duration::from_millis(500);

/// Why a call was not admitted.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("the node is running its maximum of {0} calls")]
    Full(usize),
    #[error("{0}")]
    BadFunction(String),
}

/// How a call ended, before it is reported.
enum Ending {
    Finished(Result<CallResponse, worker::Error>),
    Prepared(String, String),
    Cancelled,
    TimedOut(u32),
    /// A method call that did not stop when cancelled (true) or at its
    /// timeout (false): its thread runs on, its result is discarded.
    Abandoned {
        cancelled: bool,
        timeout_s: u32,
    },
}

/// What a call runs.
enum Work {
    Function {
        module: String,
        qualname: String,
    },
    /// A script, shell command or notebook, run as a child of a worker.
    Program {
        kind: &'static str,
        target: String,
    },
    /// Construct `module:qualname` as instance `id` and host it.
    Construct {
        id: uuid::Uuid,
        module: String,
        qualname: String,
    },
    Method {
        id: uuid::Uuid,
        method: String,
    },
}

/// An instance this node hosts: its worker's request channel (dropping it
/// stops the worker), its calls, and the node slot it holds while it lives.
struct Hosted {
    requests: mpsc::Sender<HostRequest>,
    calls: HostedCalls,
    pid: u32,
    /// What its calls run with (their run records).
    run: Arc<wire::NodeRunInfo>,
    _slot: OwnedSemaphorePermit,
}

struct Entry {
    cancel: CancellationToken,
    started_at: DateTime<Utc>,
    pid: Arc<AtomicU32>,
}

/// Everything the node runs, shared by the API and the heartbeat.
#[derive(Clone)]
pub struct Calls {
    entries: Arc<Mutex<HashMap<wire::DispatchId, Entry>>>,
    slots: Arc<Semaphore>,
    max: usize,
    pool: Arc<Pool>,
    bundles: Arc<BundleCache>,
    envs: Arc<EnvCache>,
    gateway: GatewayClient,
    /// The largest result the gateway stores (learned at registration).
    max_result_bytes: Arc<AtomicUsize>,
    /// Instances hosted here, by id.
    instances: Arc<Mutex<HashMap<uuid::Uuid, Hosted>>>,
    /// Where run records go, batched, when calls start (`None`: not sent).
    records: Arc<Mutex<Option<RecordSender>>>,
    /// What calls of each environment run with, worked out once.
    run_infos: Arc<Mutex<HashMap<EnvKey, Arc<wire::NodeRunInfo>>>>,
    /// Calls' `$RH_OUTPUTS` folders, kept as artifacts when they end.
    outputs: Arc<Outputs>,
}

/// What a node assumes the gateway stores until it says otherwise.
const DEFAULT_MAX_RESULT_BYTES: usize = 1024 * 1024;

impl Calls {
    /// Calls run in workers from `pool`, at most `max` at once.
    pub fn new(
        max: usize,
        pool: Arc<Pool>,
        bundles: Arc<BundleCache>,
        envs: Arc<EnvCache>,
        gateway: GatewayClient,
        outputs: Arc<Outputs>,
    ) -> Calls {
        Calls {
            entries: Arc::default(),
            slots: Arc::new(Semaphore::new(max)),
            max,
            pool,
            bundles,
            envs,
            gateway,
            max_result_bytes: Arc::new(AtomicUsize::new(DEFAULT_MAX_RESULT_BYTES)),
            instances: Arc::default(),
            records: Arc::default(),
            run_infos: Arc::default(),
            outputs,
        }
    }

    /// What calls may keep, as the gateway announced at registration.
    pub fn set_artifact_limits(&self, limits: wire::ArtifactLimits) {
        self.outputs.set_limits(limits);
    }

    /// Sends run records (batched: at most every [`RECORD_FLUSH`]) from now on, or stops.
    pub fn set_run_records(&self, on: bool) {
        let sender = on.then(|| {
            let (sender, receiver) = mpsc::unbounded_channel();
            tokio::spawn(ship_records(self.gateway.clone(), receiver));
            sender
        });
        *self.records.lock().expect("records lock poisoned") = sender;
    }

    /// What a call in `worker` (of environment `key`) runs with; the same for every call of the environment.
    fn run_info(&self, worker: &worker::Worker, key: &EnvKey) -> Arc<wire::NodeRunInfo> {
        if let Some(info) = self.run_infos.lock().expect("run infos lock poisoned").get(key) {
            return info.clone();
        }
        let info = Arc::new(self.read_run_info(worker, key));
        self.run_infos.lock().expect("run infos lock poisoned").insert(key.clone(), info.clone());
        info
    }

    fn read_run_info(&self, worker: &worker::Worker, key: &EnvKey) -> wire::NodeRunInfo {
        let version: Vec<&str> = worker.python().split(['.', ' ']).take(2).collect();
        let base =
            worker::python_home().map(|home| home.join(format!("lib/python{}/site-packages", version.join("."))));
        let uname = nix::sys::utsname::uname().ok();
        let platform = uname.map_or_else(
            || std::env::consts::OS.to_owned(),
            |u| format!("{} {} {}", std::env::consts::OS, u.release().to_string_lossy(), u.machine().to_string_lossy()),
        );
        wire::NodeRunInfo {
            python: worker.python().to_owned(),
            platform,
            packages: key.site_dir.as_deref().map(installed).unwrap_or_default(),
            base_packages: base.as_deref().map(installed).unwrap_or_default(),
            env_names: worker.env_names().to_vec(),
        }
    }

    /// Queues a call's run record for the shipper (it never delays the call).
    fn send_record(&self, id: wire::DispatchId, info: Arc<wire::NodeRunInfo>) {
        if let Some(records) = self.records.lock().expect("records lock poisoned").as_ref() {
            let _ = records.send((id, info));
        }
    }

    fn records_on(&self) -> bool {
        self.records.lock().expect("records lock poisoned").is_some()
    }

    /// Results larger than this (bytes of JSON) fail with `result_too_large`.
    pub fn set_max_result_bytes(&self, max: usize) {
        self.max_result_bytes.store(max, Ordering::Relaxed);
    }

    /// Admits and starts a call. Starting a call the node already has is a no-op.
    pub fn start(&self, call: wire::StartCall) -> Result<(), StartError> {
        let work = match &call.instance {
            Some(wire::InstanceCall { instance_id, method: Some(method) }) => {
                Work::Method { id: *instance_id, method: method.clone() }
            }
            instance => match (wire::EntryPoint::parse(&call.function), instance) {
                (Ok(wire::EntryPoint::Function { module, qualname }), instance) => {
                    let (module, qualname) = (module.to_owned(), qualname.to_owned());
                    match instance {
                        Some(instance) => Work::Construct { id: instance.instance_id, module, qualname },
                        None => Work::Function { module, qualname },
                    }
                }
                (Ok(entry), None) => {
                    let (kind, target) = entry.program().expect("not a function");
                    Work::Program { kind, target: target.to_owned() }
                }
                (Ok(_), Some(_)) => {
                    return Err(StartError::BadFunction(format!(
                        "`{}`: only a class can be an instance",
                        call.function
                    )))
                }
                (Err(message), _) => return Err(StartError::BadFunction(message)),
            },
        };
        let mut entries = self.entries.lock().expect("calls lock poisoned");
        if entries.contains_key(&call.dispatch_id) {
            return Ok(());
        }
        // A method call runs in its instance's worker, on the slot the instance holds.
        let permit = match work {
            Work::Method { .. } => None,
            _ => Some(self.slots.clone().try_acquire_owned().map_err(|_| StartError::Full(self.max))?),
        };
        let entry = Entry { cancel: CancellationToken::new(), started_at: Utc::now(), pid: Arc::default() };
        let (cancel, pid) = (entry.cancel.clone(), entry.pid.clone());
        entries.insert(call.dispatch_id, entry);
        drop(entries);
        let calls = self.clone();
        tokio::spawn(async move {
            let id = call.dispatch_id;
            calls.run(call, work, cancel, pid, permit).await;
            calls.entries.lock().expect("calls lock poisoned").remove(&id);
        });
        Ok(())
    }

    /// The instances hosted here.
    /// Warm Python workers: idle in the pool, running a call, or hosting an instance.
    pub fn warm_workers(&self) -> u32 {
        let busy = self.entries.lock().expect("calls lock poisoned").len();
        let hosted = self.instances.lock().expect("instances lock poisoned").len();
        (self.pool.idle_count() + busy + hosted) as u32
    }

    pub fn instances(&self) -> Vec<uuid::Uuid> {
        self.instances.lock().expect("instances lock poisoned").keys().copied().collect()
    }

    /// Stops an instance: its worker is killed and its node slot freed. False if not hosted here.
    pub fn stop_instance(&self, id: uuid::Uuid) -> bool {
        let hosted = self.instances.lock().expect("instances lock poisoned").remove(&id);
        if let Some(hosted) = &hosted {
            tracing::info!(instance_id = %id, pid = hosted.pid, "stopping instance");
        }
        hosted.is_some()
    }

    /// Stops a call: its worker gets SIGTERM, then SIGKILL. False if unknown.
    pub fn cancel(&self, id: wire::DispatchId) -> bool {
        match self.entries.lock().expect("calls lock poisoned").get(&id) {
            Some(entry) => {
                entry.cancel.cancel();
                true
            }
            None => false,
        }
    }

    /// The calls running or still reporting.
    pub fn running(&self) -> Vec<wire::RunningCall> {
        let entries = self.entries.lock().expect("calls lock poisoned");
        entries
            .iter()
            .map(|(id, e)| wire::RunningCall {
                dispatch_id: *id,
                started_at: e.started_at,
                pid: Some(e.pid.load(Ordering::Relaxed)).filter(|p| *p != 0),
            })
            .collect()
    }

    async fn run(
        &self,
        call: wire::StartCall,
        work: Work,
        cancel: CancellationToken,
        pid: Arc<AtomicU32>,
        mut permit: Option<OwnedSemaphorePermit>,
    ) {
        let id = call.dispatch_id;
        let (output_tx, output_rx) = mpsc::channel::<Output>(1024);
        let deadline = call.timeout_s.map(|s| tokio::time::Instant::now() + Duration::from_secs(s.into()));
        let timeout = async {
            match deadline {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        let started = std::time::Instant::now();
        let timeout_s = call.timeout_s.unwrap_or(0);
        let constructed = match &work {
            Work::Construct { id, .. } => Some(*id),
            _ => None,
        };
        let outputs_dir = match self.outputs.take() {
            Ok(dir) => Some(dir),
            Err(err) => {
                tracing::warn!(dispatch_id = %id, error = %err, "cannot make the call's output folder");
                None
            }
        };
        let outputs = outputs_dir.as_ref().map(|d| d.display().to_string());
        let finished = async {
            let ending = match work {
                Work::Function { module, qualname } => {
                    let execute = self.execute(&call, module, qualname, None, outputs, &output_tx, &pid);
                    // Dropping `execute` on cancel or timeout drops its worker, which kills the process group.
                    tokio::select! {
                        ending = execute => ending,
                        _ = cancel.cancelled() => Ending::Cancelled,
                        _ = timeout => Ending::TimedOut(timeout_s),
                    }
                }
                Work::Program { kind, target } => {
                    // The program is a child of the worker, in its process group: dropping the worker kills its tree.
                    let execute = self.execute(&call, String::new(), target, Some(kind), outputs, &output_tx, &pid);
                    tokio::select! {
                        ending = execute => ending,
                        _ = cancel.cancelled() => Ending::Cancelled,
                        _ = timeout => Ending::TimedOut(timeout_s),
                    }
                }
                Work::Construct { id, module, qualname } => {
                    let slot = permit.take().expect("a constructor holds a node slot");
                    // Dropping `construct` on cancel or timeout stops the worker and frees the slot.
                    tokio::select! {
                        ending = self.construct(&call, id, module, qualname, outputs, &output_tx, &pid, slot) => ending,
                        _ = cancel.cancelled() => Ending::Cancelled,
                        _ = timeout => Ending::TimedOut(timeout_s),
                    }
                }
                Work::Method { id, method } => {
                    self.call_method(&call, id, method, outputs, &output_tx, &pid, &cancel, timeout).await
                }
            };
            // The worker is back in the pool (or gone): the slot is free while the report travels.
            drop(permit);
            let executed = started.elapsed();
            // A call that ran to its end (returned or raised) keeps what it wrote.
            let kept = match (&ending, &outputs_dir) {
                (Ending::Finished(Ok(_)), Some(dir)) => Some(self.keep_outputs(id, dir).await),
                _ => None,
            };
            // The log shipper returns once the output channel closes.
            drop(output_tx);
            (ending, executed, kept)
        };
        // The call and its log shipper run side by side in this one task: a
        // shipper task of its own would be spawned, woken and joined (often
        // from another thread) on every call, output or not. Output shipped
        // while the call ran is stored; what is left goes with the report, in
        // the same commit, so the outcome never overtakes it.
        let ((ending, executed, kept), (mut tail, last_seq)) =
            tokio::join!(finished, ship_logs(self.gateway.clone(), id, output_rx));
        let mut report = report_for(ending, self.max_result_bytes.load(Ordering::Relaxed));
        let note = match kept {
            Some(Ok(files)) if !files.is_empty() => {
                let names: Vec<String> =
                    files.iter().map(|f| format!("{} ({})", f.path, outputs::human_bytes(f.size))).collect();
                Some(format!("kept {} artifact(s): {}\n", files.len(), names.join(", ")))
            }
            Some(Err(refusal)) if report.kind == wire::ReportKind::Succeeded => {
                if let Some(instance) = constructed {
                    self.stop_instance(instance);
                }
                report = failure_report(refusal.code, refusal.message);
                None
            }
            Some(Err(refusal)) => Some(format!("artifacts not kept: {}\n", refusal.message)),
            _ => None,
        };
        if let Some(text) = note {
            let seq = tail.last().map_or(last_seq, |e| e.seq) + 1;
            tail.push(wire::LogEntry { seq, stream: wire::LogStream::System, text, at: None });
        }
        report.logs = tail;
        if let Err(refusal) = self.gateway.report_until_acked(id, &report).await {
            // The outcome must still reach the gateway, or the dispatch would
            // stay running: send one it cannot refuse, saying why.
            let mut message = format!("the gateway refused this call's outcome: {refusal}");
            message.truncate(2048);
            let fallback = failure_report("report_rejected", message);
            if let Err(err) = self.gateway.report_until_acked(id, &fallback).await {
                tracing::error!(dispatch_id = %id, error = %err, "the gateway refused the fallback report too");
            }
        }
        let reported = started.elapsed();
        // Off the call's path: after the outcome is stored, not beside the
        // report on its way (see `outputs`).
        if let Some(dir) = outputs_dir {
            self.outputs.remove_later(dir);
        }
        tracing::debug!(dispatch_id = %id, ?executed, ?reported, "call done");
    }

    /// Uploads what a call left in its output folder; the files kept, or why none were.
    async fn keep_outputs(
        &self,
        id: wire::DispatchId,
        dir: &std::path::Path,
    ) -> Result<Vec<outputs::Kept>, outputs::Refusal> {
        let kept = self.outputs.collect(dir)?;
        outputs::upload(&self.gateway, id, &kept).await?;
        Ok(kept)
    }

    /// The environment a call runs in: its bundle unpacked, its requirements installed.
    async fn env_key(&self, call: &wire::StartCall) -> Result<EnvKey, Ending> {
        let bundle_dir = match &call.bundle {
            None => None,
            Some(sha) => match self.bundles.ensure(sha).await {
                Ok(dir) => Some(dir),
                Err(message) => return Err(Ending::Prepared("bundle_unavailable".into(), message)),
            },
        };
        let site_dir = match self.envs.ensure(&call.requirements).await {
            Ok(dir) => dir,
            Err(message) => return Err(Ending::Prepared("requirements_failed".into(), message)),
        };
        Ok(EnvKey { bundle_dir, site_dir })
    }

    /// Constructs an instance in a worker of its own. If the constructor
    /// returns, the worker stays, hosting the instance, and keeps `slot`.
    #[allow(clippy::too_many_arguments)]
    async fn construct(
        &self,
        call: &wire::StartCall,
        id: uuid::Uuid,
        module: String,
        qualname: String,
        outputs: Option<String>,
        output: &mpsc::Sender<Output>,
        pid: &AtomicU32,
        slot: OwnedSemaphorePermit,
    ) -> Ending {
        let key = match self.env_key(call).await {
            Ok(key) => key,
            Err(ending) => return ending,
        };
        let worker = match self.pool.dedicated(&key).await {
            Ok(worker) => worker,
            Err(err) => return Ending::Prepared("worker_start_failed".into(), err.to_string()),
        };
        let worker_pid = worker.pid();
        pid.store(worker_pid, Ordering::Relaxed);
        let run = self.run_info(&worker, &key);
        self.send_record(call.dispatch_id, run.clone());
        let call_id = call.dispatch_id.to_string();
        let calls = HostedCalls::default();
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        calls.expect(call_id.clone(), HostedCall { output: output.clone(), done: done_tx });
        let (requests, requests_rx) = mpsc::channel(256);
        let request = CallRequest {
            module,
            qualname,
            args: serde_json::to_string(&call.args).expect("args serialize"),
            kwargs: serde_json::to_string(&call.kwargs).expect("kwargs serialize"),
            host: Some(call_id),
            program: None,
            outputs,
        };
        let instances = self.instances.clone();
        let host_calls = calls.clone();
        tokio::spawn(async move {
            worker.host(&request, requests_rx, host_calls).await;
            // The worker is gone: this node no longer hosts the instance.
            let mut instances = instances.lock().expect("instances lock poisoned");
            if instances.get(&id).is_some_and(|h| h.pid == worker_pid) {
                instances.remove(&id);
                tracing::warn!(instance_id = %id, pid = worker_pid, "an instance's worker exited");
            }
        });
        let outcome = done_rx.await.unwrap_or_else(|_| Err(worker::Error::Died("the instance worker exited".into())));
        if let Ok(CallResponse::Returned { .. }) = &outcome {
            let hosted = Hosted { requests, calls, pid: worker_pid, run, _slot: slot };
            // An older worker of this instance (a restart placed here again) stops as it drops.
            self.instances.lock().expect("instances lock poisoned").insert(id, hosted);
            tracing::info!(instance_id = %id, pid = worker_pid, "instance ready");
        }
        Ending::Finished(outcome)
    }

    /// Calls a method of an instance hosted here, on a thread of its worker.
    /// A cancel or timeout raises `DispatchCancelled` in that thread; if the
    /// call does not stop within [`METHOD_CANCEL_GRACE`], it is left to
    /// finish and reported cancelled (or timed out) now, marked abandoned.
    #[allow(clippy::too_many_arguments)]
    async fn call_method(
        &self,
        call: &wire::StartCall,
        id: uuid::Uuid,
        method: String,
        outputs: Option<String>,
        output: &mpsc::Sender<Output>,
        pid: &AtomicU32,
        cancel: &CancellationToken,
        timeout: impl std::future::Future<Output = ()>,
    ) -> Ending {
        let lost = || {
            Ending::Prepared(
                "instance_lost".into(),
                format!("this node no longer hosts instance {id} (its worker exited, or the node restarted)"),
            )
        };
        let hosted = self
            .instances
            .lock()
            .expect("instances lock poisoned")
            .get(&id)
            .map(|h| (h.requests.clone(), h.calls.clone(), h.pid, h.run.clone()));
        let Some((requests, calls, worker_pid, run)) = hosted else { return lost() };
        pid.store(worker_pid, Ordering::Relaxed);
        self.send_record(call.dispatch_id, run);
        let call_id = call.dispatch_id.to_string();
        let (done_tx, mut done_rx) = tokio::sync::oneshot::channel();
        calls.expect(call_id.clone(), HostedCall { output: output.clone(), done: done_tx });
        let request = HostRequest::Method {
            call: call_id.clone(),
            method,
            args: serde_json::to_string(&call.args).expect("args serialize"),
            kwargs: serde_json::to_string(&call.kwargs).expect("kwargs serialize"),
            outputs,
        };
        if requests.send(request).await.is_err() {
            calls.forget(&call_id);
            return lost();
        }
        let finished = |done: Result<Result<CallResponse, worker::Error>, _>| {
            Ending::Finished(done.unwrap_or_else(|_| Err(worker::Error::Died("the instance worker exited".into()))))
        };
        tokio::pin!(timeout);
        let cancelled = tokio::select! {
            done = &mut done_rx => return finished(done),
            _ = cancel.cancelled() => true,
            _ = &mut timeout => false,
        };
        let _ = requests.send(HostRequest::Cancel { call: call_id.clone() }).await;
        let timeout_s = call.timeout_s.unwrap_or(0);
        match tokio::time::timeout(METHOD_CANCEL_GRACE, &mut done_rx).await {
            // It stopped (or ended anyway): the cancel or timeout stands.
            Ok(_) if cancelled => Ending::Cancelled,
            Ok(_) => Ending::TimedOut(timeout_s),
            Err(_) => {
                calls.forget(&call_id);
                tracing::warn!(dispatch_id = %call.dispatch_id, instance_id = %id, "a method call did not stop; its thread is left to finish");
                Ending::Abandoned { cancelled, timeout_s }
            }
        }
    }

    /// Runs a function (or, with `program`, a script, command or notebook
    /// named by `qualname`) in a pooled worker.
    #[allow(clippy::too_many_arguments)]
    async fn execute(
        &self,
        call: &wire::StartCall,
        module: String,
        qualname: String,
        program: Option<&'static str>,
        outputs: Option<String>,
        output: &mpsc::Sender<Output>,
        pid: &AtomicU32,
    ) -> Ending {
        let key = match self.env_key(call).await {
            Ok(key) => key,
            Err(ending) => return ending,
        };
        let mut worker = match self.pool.acquire(&key).await {
            Ok(worker) => worker,
            Err(err) => return Ending::Prepared("worker_start_failed".into(), err.to_string()),
        };
        pid.store(worker.pid(), Ordering::Relaxed);
        if self.records_on() {
            self.send_record(call.dispatch_id, self.run_info(&worker, &key));
        }
        let request = CallRequest {
            module,
            qualname,
            args: serde_json::to_string(&call.args).expect("args serialize"),
            kwargs: serde_json::to_string(&call.kwargs).expect("kwargs serialize"),
            host: None,
            program: program.map(str::to_owned),
            outputs,
        };
        let result = worker.call(&request, output).await;
        if result.is_ok() {
            self.pool.release(worker);
        }
        Ending::Finished(result)
    }
}

/// A `failed` report with `code` and `message`.
fn failure_report(code: &str, message: String) -> wire::Report {
    wire::Report {
        kind: wire::ReportKind::Failed,
        expected_generation: None,
        result: None,
        failure: Some(wire::DispatchFailure::new(code, message)),
        reason: None,
        logs: Vec::new(),
        abandoned: false,
    }
}

fn report_for(ending: Ending, max_result_bytes: usize) -> wire::Report {
    let failed = |failure: wire::DispatchFailure| wire::Report {
        kind: wire::ReportKind::Failed,
        expected_generation: None,
        result: None,
        failure: Some(failure),
        reason: None,
        logs: Vec::new(),
        abandoned: false,
    };
    match ending {
        Ending::Finished(Ok(CallResponse::Returned { result })) if result.len() > max_result_bytes => failure_report(
            "result_too_large",
            format!(
                "the result is {} bytes of JSON, over the gateway's limit of {max_result_bytes} (results.max_bytes); \
                 return a path or URI to large data instead",
                result.len()
            ),
        ),
        Ending::Finished(Ok(CallResponse::Returned { result })) => match serde_json::from_str(&result) {
            Ok(value) => wire::Report {
                kind: wire::ReportKind::Succeeded,
                expected_generation: None,
                result: Some(value),
                failure: None,
                reason: None,
                logs: Vec::new(),
                abandoned: false,
            },
            // The worker checks results before sending them; this is the last guard, never a silent null.
            Err(err) => failure_report("result_not_json", format!("the result could not be read back as JSON: {err}")),
        },
        Ending::Finished(Ok(CallResponse::Failed(failure))) => failed(failure),
        Ending::Finished(Err(worker::Error::Died(message))) => failure_report("worker_crashed", message),
        Ending::Finished(Err(err @ worker::Error::Spawn(_))) => failure_report("worker_start_failed", err.to_string()),
        Ending::Prepared(code, message) => failure_report(&code, message),
        Ending::Cancelled => wire::Report {
            kind: wire::ReportKind::CancelConfirmed,
            expected_generation: None,
            result: None,
            failure: None,
            reason: Some("the node stopped the call".into()),
            logs: Vec::new(),
            abandoned: false,
        },
        Ending::TimedOut(seconds) => wire::Report {
            kind: wire::ReportKind::TimedOut,
            expected_generation: None,
            result: None,
            failure: Some(wire::DispatchFailure::new(
                "timed_out",
                format!("the call ran longer than its timeout_s of {seconds}s and was stopped"),
            )),
            reason: None,
            logs: Vec::new(),
            abandoned: false,
        },
        Ending::Abandoned { cancelled: true, .. } => wire::Report {
            kind: wire::ReportKind::CancelConfirmed,
            expected_generation: None,
            result: None,
            failure: None,
            reason: Some(format!(
                "the method did not stop within {} ms of the cancel (it is blocked outside Python, in C code or a \
                 system call); its thread was left to finish and its result will be discarded",
                METHOD_CANCEL_GRACE.as_millis()
            )),
            logs: Vec::new(),
            abandoned: true,
        },
        Ending::Abandoned { timeout_s, .. } => wire::Report {
            kind: wire::ReportKind::TimedOut,
            expected_generation: None,
            result: None,
            failure: Some(wire::DispatchFailure::new(
                "timed_out",
                format!(
                    "the call ran longer than its timeout_s of {timeout_s}s and did not stop (it is blocked outside \
                     Python); its thread was left to finish and its result will be discarded"
                ),
            )),
            reason: None,
            logs: Vec::new(),
            abandoned: true,
        },
    }
}

/// Batches a call's output and ships it, in order, while the call runs.
/// When the channel closes, returns the entries not shipped yet (they travel
/// with the report) and the last sequence number used.
async fn ship_logs(
    gateway: GatewayClient,
    id: wire::DispatchId,
    mut output: mpsc::Receiver<Output>,
) -> (Vec<wire::LogEntry>, i64) {
    let mut seq = 0i64;
    let mut batch: Vec<wire::LogEntry> = Vec::new();
    let mut bytes = 0usize;
    loop {
        let flush_at = tokio::time::Instant::now() + LOG_FLUSH;
        while bytes < LOG_BATCH_BYTES {
            tokio::select! {
                chunk = output.recv() => match chunk {
                    Some(chunk) => {
                        // Merge consecutive chunks of one stream into one entry.
                        match batch.last_mut() {
                            Some(last) if last.stream == chunk.stream && last.text.len() < 8192 => last.text.push_str(&chunk.text),
                            _ => {
                                seq += 1;
                                batch.push(wire::LogEntry { seq, stream: chunk.stream, text: String::new(), at: None });
                                batch.last_mut().expect("just pushed").text.push_str(&chunk.text);
                            }
                        }
                        bytes += chunk.text.len();
                    }
                    None => return (batch, seq),
                },
                _ = tokio::time::sleep_until(flush_at), if !batch.is_empty() => break,
            }
        }
        if !batch.is_empty() {
            let entries = std::mem::take(&mut batch);
            bytes = 0;
            gateway.logs_until_acked(id, &wire::LogBatch { entries }).await;
        }
    }
}

/// Where calls put their run records for the shipper.
type RecordSender = mpsc::UnboundedSender<(wire::DispatchId, Arc<wire::NodeRunInfo>)>;

/// Run records wait at most this long to be sent with others.
const RECORD_FLUSH: Duration = Duration::from_millis(100);
/// ... and at most this many go in one request (the gateway takes 1,000).
const RECORD_BATCH: usize = 256;

/// Sends run records in batches: one request and one commit for every
/// [`RECORD_FLUSH`] of starts, not one per call, and each environment the
/// batch's calls ran in once, however many of them ran there. The records of
/// calls that start during the wait stay in the channel until it ends:
/// receiving each as it came would wake this task, beside the call's worker,
/// on every call.
async fn ship_records(
    gateway: GatewayClient,
    mut records: mpsc::UnboundedReceiver<(wire::DispatchId, Arc<wire::NodeRunInfo>)>,
) {
    #[derive(serde::Serialize)]
    struct Item {
        dispatch_id: wire::DispatchId,
        environment: usize,
    }
    #[derive(serde::Serialize)]
    struct Batch<'a> {
        environments: Vec<&'a wire::NodeRunInfo>,
        items: Vec<Item>,
    }
    while let Some(first) = records.recv().await {
        tokio::time::sleep(RECORD_FLUSH).await;
        let mut pending = vec![first];
        while let Ok(next) = records.try_recv() {
            pending.push(next);
        }
        for chunk in pending.chunks(RECORD_BATCH) {
            // Calls of one environment share its info (`Calls::run_info`).
            let mut shared: Vec<&Arc<wire::NodeRunInfo>> = Vec::new();
            let items = chunk
                .iter()
                .map(|(dispatch_id, run)| {
                    let environment = shared.iter().position(|e| Arc::ptr_eq(e, run)).unwrap_or_else(|| {
                        shared.push(run);
                        shared.len() - 1
                    });
                    Item { dispatch_id: *dispatch_id, environment }
                })
                .collect();
            let environments = shared.into_iter().map(|e| e.as_ref()).collect();
            gateway.records_until_acked(&Batch { environments, items }).await;
        }
    }
}

/// The distributions installed in a site folder, from their `*.dist-info/METADATA`.
fn installed(dir: &std::path::Path) -> Vec<wire::Package> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut packages: Vec<wire::Package> = entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".dist-info"))
        .filter_map(|e| {
            let metadata = std::fs::read_to_string(e.path().join("METADATA")).ok()?;
            let field = |key: &str| {
                metadata
                    .lines()
                    .take_while(|l| !l.is_empty())
                    .find_map(|l| l.strip_prefix(key))
                    .map(|v| v.trim().to_owned())
            };
            Some(wire::Package { name: field("Name:")?, version: field("Version:")? })
        })
        .collect();
    packages.sort();
    packages
}

//! `runhouse_gateway._native`: the Rust client exposed to Python. Requests
//! and answers cross as JSON text, so the Python layer stays small and every
//! HTTP call, retry and token lives in Rust. Blocking calls release the GIL
//! and check for Ctrl-C every 100 ms.

use std::future::Future;
use std::pin::Pin;
use std::sync::OnceLock;
use std::time::Duration;

use futures::{Stream, StreamExt};
use pyo3::exceptions::{PyConnectionError, PyRuntimeError, PyStopIteration, PyValueError};
use pyo3::prelude::*;
use runhouse_gateway::{package, Client, Error, Followed};
use wire::DispatchId;

pyo3::create_exception!(_native, GatewayError, pyo3::exceptions::PyException, "The gateway refused a request.");

/// One runtime for the module's lifetime: the client's connection pool lives on it.
fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("tokio runtime")
    })
}

fn to_py(err: Error) -> PyErr {
    match err {
        Error::Api { status, body } => {
            GatewayError::new_err((status.as_u16(), body.code, body.message, body.request_id))
        }
        Error::Unreachable { .. } => PyConnectionError::new_err(err.to_string()),
        Error::Config(message) => PyValueError::new_err(message),
        Error::Decode(message) => PyRuntimeError::new_err(message),
    }
}

/// Runs `future` without the GIL, waking every 100 ms to let Ctrl-C through.
fn block_on<T: Send>(py: Python<'_>, future: impl Future<Output = Result<T, Error>> + Send) -> PyResult<T> {
    let mut future = Box::pin(future);
    loop {
        // The timer must be made inside the runtime, so it is built in the async block.
        let step = py.detach(|| {
            runtime().block_on(async { tokio::time::timeout(Duration::from_millis(100), &mut future).await })
        });
        match step {
            Ok(result) => return result.map_err(to_py),
            Err(_) => py.check_signals()?,
        }
    }
}

fn to_json<T: serde::Serialize>(value: &T) -> PyResult<String> {
    serde_json::to_string(value).map_err(|e| PyRuntimeError::new_err(e.to_string()))
}

fn from_json<T: serde::de::DeserializeOwned>(text: &str, what: &str) -> PyResult<T> {
    serde_json::from_str(text).map_err(|e| PyValueError::new_err(format!("invalid {what}: {e}")))
}

fn dispatch_id(id: &str) -> PyResult<DispatchId> {
    id.parse().map_err(|_| PyValueError::new_err(format!("`{id}` is not a dispatch id")))
}

/// A gateway client.
#[pyclass(module = "runhouse_gateway._native")]
struct NativeClient {
    client: Client,
}

#[pymethods]
impl NativeClient {
    #[new]
    fn new(url: &str, token: &str) -> PyResult<Self> {
        Ok(NativeClient { client: Client::new(url, token).map_err(to_py)? })
    }

    /// Creates a dispatch from a `CreateDispatch` JSON body; returns the dispatch JSON.
    fn create(&self, py: Python<'_>, request: &str) -> PyResult<String> {
        let request = from_json(request, "dispatch request")?;
        to_json(&block_on(py, self.client.dispatch_create(request))?)
    }

    fn get(&self, py: Python<'_>, id: &str) -> PyResult<String> {
        to_json(&block_on(py, self.client.dispatch_get(dispatch_id(id)?))?)
    }

    #[pyo3(signature = (id, reason=None))]
    fn cancel(&self, py: Python<'_>, id: &str, reason: Option<String>) -> PyResult<String> {
        to_json(&block_on(py, self.client.dispatch_cancel(dispatch_id(id)?, reason))?)
    }

    fn events(&self, py: Python<'_>, id: &str) -> PyResult<String> {
        to_json(&block_on(py, self.client.dispatch_events(dispatch_id(id)?))?)
    }

    /// Lists dispatches; `query` is a `ListDispatches` JSON object.
    fn list(&self, py: Python<'_>, query: &str) -> PyResult<String> {
        let query = from_json(query, "list query")?;
        to_json(&block_on(py, async { self.client.dispatch_list(&query).await })?)
    }

    /// Waits until terminal (or `timeout_s`); returns the dispatch JSON.
    #[pyo3(signature = (id, timeout_s=None))]
    fn wait(&self, py: Python<'_>, id: &str, timeout_s: Option<f64>) -> PyResult<String> {
        let timeout = timeout_s.map(Duration::from_secs_f64);
        to_json(&block_on(py, self.client.dispatch_wait(dispatch_id(id)?, timeout))?)
    }

    fn logs(&self, py: Python<'_>, id: &str, offset: i64) -> PyResult<String> {
        to_json(&block_on(py, self.client.logs(dispatch_id(id)?, offset))?)
    }

    /// Creates a schedule from a `CreateSchedule` JSON body; returns the schedule JSON.
    fn schedule_create(&self, py: Python<'_>, request: &str) -> PyResult<String> {
        let request = from_json(request, "schedule request")?;
        to_json(&block_on(py, async { self.client.schedule_create(&request).await })?)
    }

    fn schedule_get(&self, py: Python<'_>, name: &str) -> PyResult<String> {
        to_json(&block_on(py, self.client.schedule_get(name))?)
    }

    fn schedule_list(&self, py: Python<'_>) -> PyResult<String> {
        to_json(&block_on(py, self.client.schedule_list())?)
    }

    /// Changes a schedule with an `UpdateSchedule` JSON body; returns the schedule JSON.
    fn schedule_update(&self, py: Python<'_>, name: &str, change: &str) -> PyResult<String> {
        let change = from_json(change, "schedule change")?;
        to_json(&block_on(py, async { self.client.schedule_update(name, &change).await })?)
    }

    fn schedule_delete(&self, py: Python<'_>, name: &str) -> PyResult<()> {
        block_on(py, self.client.schedule_delete(name))
    }

    /// A page of the schedule's dispatches; `query` is a `ListDispatches` JSON object.
    fn schedule_runs(&self, py: Python<'_>, name: &str, query: &str) -> PyResult<String> {
        let query = from_json(query, "list query")?;
        to_json(&block_on(py, async { self.client.schedule_runs(name, &query).await })?)
    }

    /// Creates an instance from a `CreateInstance` JSON body (or attaches to
    /// the live one of that name and fields); returns the instance JSON.
    fn instance_create(&self, py: Python<'_>, request: &str) -> PyResult<String> {
        let request = from_json(request, "instance request")?;
        to_json(&block_on(py, async { self.client.instance_create(&request).await })?)
    }

    fn instance_get(&self, py: Python<'_>, name: &str) -> PyResult<String> {
        to_json(&block_on(py, self.client.instance_get(name))?)
    }

    fn instance_list(&self, py: Python<'_>, all: bool) -> PyResult<String> {
        to_json(&block_on(py, self.client.instance_list(all))?)
    }

    fn instance_delete(&self, py: Python<'_>, name: &str) -> PyResult<String> {
        to_json(&block_on(py, self.client.instance_delete(name))?)
    }

    /// The files a dispatch kept (an `ArtifactList`, JSON).
    fn artifacts(&self, py: Python<'_>, id: &str) -> PyResult<String> {
        to_json(&block_on(py, self.client.dispatch_artifacts(dispatch_id(id)?))?)
    }

    /// Downloads a dispatch's artifacts (all, or `path`) into `dir`; returns the files written.
    #[pyo3(signature = (id, dir, path=None))]
    fn artifacts_download(&self, py: Python<'_>, id: &str, dir: String, path: Option<String>) -> PyResult<Vec<String>> {
        let id = dispatch_id(id)?;
        let written = block_on(py, self.client.artifacts_download(id, path.as_deref(), std::path::Path::new(&dir)))?;
        Ok(written.into_iter().map(|p| p.display().to_string()).collect())
    }

    /// A dispatch's run record (JSON).
    fn record(&self, py: Python<'_>, id: &str) -> PyResult<String> {
        to_json(&block_on(py, self.client.dispatch_record(dispatch_id(id)?))?)
    }

    /// Sets a dispatch up to run here (see `runhouse_gateway::reproduce`): returns
    /// `(python, src, call_file, outcome_file, runner)`.
    #[pyo3(signature = (id, dir=None, install=true))]
    fn reproduce_prepare(
        &self,
        py: Python<'_>,
        id: &str,
        dir: Option<String>,
        install: bool,
    ) -> PyResult<(String, String, String, String, String)> {
        use runhouse_gateway::reproduce::{prepare, ReproduceError, RUNNER};
        let id = dispatch_id(id)?;
        let prepared = py
            .detach(|| runtime().block_on(prepare(&self.client, id, dir.map(Into::into), install)))
            .map_err(|err| match err {
                ReproduceError::Client(err) => to_py(err),
                other => PyRuntimeError::new_err(other.to_string()),
            })?;
        let text = |p: &std::path::Path| p.display().to_string();
        Ok((
            text(&prepared.python),
            text(&prepared.src),
            text(&prepared.call_file),
            text(&prepared.outcome_file),
            RUNNER.to_owned(),
        ))
    }

    /// An iterator of log entries (JSON) that follows the output live until
    /// the dispatch ends; then `ended()` holds the dispatch JSON it ended as.
    fn follow(&self, id: &str, offset: i64) -> PyResult<LogFollower> {
        let stream = Box::pin(self.client.logs_follow_to_end(dispatch_id(id)?, offset));
        Ok(LogFollower { stream: tokio::sync::Mutex::new(stream), ended: std::sync::Mutex::new(None) })
    }

    /// Packs the project folder holding `path` and uploads it unless the
    /// gateway has it. Returns (sha256, uploaded, project root, module of `path`).
    fn deploy(&self, py: Python<'_>, path: &str) -> PyResult<(String, bool, String, Option<String>)> {
        let path = std::path::PathBuf::from(path);
        let root = package::project_root(&path).ok_or_else(|| {
            PyValueError::new_err(format!(
                "no project folder above {}: add a pyproject.toml, setup.py, requirements.txt or .git",
                path.display()
            ))
        })?;
        let module = package::module_name(&root, &path);
        let packed = py
            .detach(|| package::pack(&root))
            .map_err(|e| PyRuntimeError::new_err(format!("cannot pack {}: {e}", root.display())))?;
        let uploaded = block_on(py, async {
            if self.client.bundle_exists(&packed.sha256).await? {
                return Ok(false);
            }
            self.client.bundle_upload(packed.data.clone(), &packed.source).await.map(|_| true)
        })?;
        Ok((packed.sha256, uploaded, root.display().to_string(), module))
    }

    /// Registers a named function from a `RegisterFunction` JSON body.
    fn register(&self, py: Python<'_>, request: &str) -> PyResult<String> {
        let request = from_json(request, "function registration")?;
        to_json(&block_on(py, async { self.client.function_register(&request).await })?)
    }
}

type LogStream = Pin<Box<dyn Stream<Item = Result<Followed, Error>> + Send>>;

/// Log entries as they arrive.
#[pyclass(module = "runhouse_gateway._native")]
struct LogFollower {
    stream: tokio::sync::Mutex<LogStream>,
    /// The dispatch JSON the stream ended with.
    ended: std::sync::Mutex<Option<String>>,
}

#[pymethods]
impl LogFollower {
    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__(&self, py: Python<'_>) -> PyResult<String> {
        let next = block_on(py, async { Ok(self.stream.lock().await.next().await) })?;
        match next {
            Some(Ok(Followed::Log(entry))) => to_json(&entry),
            Some(Ok(Followed::End(dispatch))) => {
                if let Some(dispatch) = dispatch {
                    *self.ended.lock().expect("follower lock poisoned") = Some(to_json(&dispatch)?);
                }
                Err(PyStopIteration::new_err(()))
            }
            Some(Err(err)) => Err(to_py(err)),
            None => Err(PyStopIteration::new_err(())),
        }
    }

    /// The dispatch JSON the stream ended with, once it has.
    fn ended(&self) -> Option<String> {
        self.ended.lock().expect("follower lock poisoned").clone()
    }
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<NativeClient>()?;
    m.add_class::<LogFollower>()?;
    m.add("GatewayError", m.py().get_type::<GatewayError>())?;
    Ok(())
}

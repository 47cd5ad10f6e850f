//! The worker process: `rh-node worker --fd 3`. It hosts one embedded
//! CPython (pyo3), imports the user's `module:qualname` from the code bundle
//! it was started in, and runs calls one at a time for as long as it lives,
//! so repeated calls reuse the warm interpreter and its imports.

use std::ffi::CString;
use std::os::unix::net::UnixStream;

use pyo3::prelude::*;
use pyo3::types::PyModule;

use crate::protocol::{read_frame, write_frame, CallRequest, CallResponse, Ready};

/// Python that resolves and calls the function, and shapes the outcome.
const RUNNER: &str = r#"
import importlib, json, sys, traceback

def _type_name(t):
    return t.__qualname__ if t.__module__ == "builtins" else f"{t.__module__}.{t.__qualname__}"

def _failure(code, exc, message=None):
    # Drop this runner's own frame: the traceback starts in the user's code.
    tb = exc.__traceback__.tb_next if exc.__traceback__ is not None else None
    return json.dumps({
        "code": code,
        "remote_type": _type_name(type(exc)),
        "message": message if message is not None else str(exc),
        "traceback": "".join(traceback.format_exception(type(exc), exc, tb)),
    })

def _flush():
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass

_INT_MIN, _INT_MAX = -(2 ** 63), 2 ** 64 - 1
_MAX_DEPTH = 100

def _unfaithful(value):
    """Why `value` would not come back the same from JSON, or None.

    json.dumps silently turns int keys into strings and sends ints the
    gateway would read as floats; a result must survive the trip unchanged.
    """
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (list, tuple, dict)) and depth > _MAX_DEPTH:
            return f"it is nested deeper than {_MAX_DEPTH} levels"
        if isinstance(item, bool) or item is None or isinstance(item, (str, float)):
            continue
        if isinstance(item, int):
            if not _INT_MIN <= item <= _INT_MAX:
                return f"it holds the integer {item}, outside the 64-bit range JSON numbers keep exactly"
        elif isinstance(item, (list, tuple)):
            stack.extend((child, depth + 1) for child in item)
        elif isinstance(item, dict):
            for key, child in item.items():
                if not isinstance(key, str):
                    return f"it has a dict key {key!r} of type {_type_name(type(key))}; JSON keys are strings"
                stack.append((child, depth + 1))
    return None

def call(module, qualname, args_json, kwargs_json):
    try:
        target = importlib.import_module(module)
        for part in qualname.split("."):
            target = getattr(target, part)
    except BaseException as exc:
        _flush()
        return False, _failure("entrypoint_not_found", exc, f"cannot load {module}:{qualname}: {_type_name(type(exc))}: {exc}")
    try:
        result = target(*json.loads(args_json), **json.loads(kwargs_json))
    except BaseException as exc:
        return False, _failure("user_exception", exc)
    finally:
        _flush()
    try:
        why = None if isinstance(result, str) else _unfaithful(result)
        if why is None:
            return True, json.dumps(result, allow_nan=False)
    except (TypeError, ValueError, RecursionError) as exc:
        why = f"it is not JSON-serialisable ({exc})"
    kind = _type_name(type(result))
    return False, json.dumps({
        "code": "result_not_json",
        "remote_type": kind,
        "message": f"the function returned a {kind} that JSON cannot carry faithfully: {why}; "
                   "return lists, dicts with string keys, strings, numbers, booleans or None",
        "traceback": None,
    })
"#;

/// Runs the worker until the daemon closes the socket. Extra import paths
/// (the code bundle, a requirements environment) come first on `sys.path`.
pub fn worker_main(fd: i32, paths: &[String]) -> anyhow::Result<()> {
    // SAFETY: the daemon hands the worker its end of a socket pair as `fd`,
    // and nothing else in this process owns that descriptor.
    #[allow(unsafe_code)]
    let mut stream = unsafe { <UnixStream as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    // Processes the user's code starts do not inherit the control channel.
    nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC))?;
    let runner: Py<PyAny> = Python::attach(|py| -> PyResult<Py<PyAny>> {
        let sys = py.import("sys")?;
        let sys_path = sys.getattr("path")?;
        for path in paths.iter().rev() {
            sys_path.call_method1("insert", (0, path))?;
        }
        // Programs run as `python file.py` see argv[0]; give them something sane.
        sys.setattr("argv", vec!["rh-worker"])?;
        let code = CString::new(RUNNER).expect("runner has no NUL");
        let module = PyModule::from_code(py, &code, c"rh_runner.py", c"rh_runner")?;
        Ok(module.getattr("call")?.unbind())
    })?;
    let python = Python::attach(|py| py.version().to_owned());
    write_frame(&mut stream, &Ready { pid: std::process::id(), python })?;
    while let Some(request) = read_frame::<_, CallRequest>(&mut stream)? {
        let response = Python::attach(|py| -> PyResult<CallResponse> {
            let (ok, payload): (bool, String) =
                runner.call1(py, (request.module, request.qualname, request.args, request.kwargs))?.extract(py)?;
            if ok {
                return Ok(CallResponse::Returned { result: payload });
            }
            let failure: wire::DispatchFailure =
                serde_json::from_str(&payload).map_err(|e| pyo3::exceptions::PyValueError::new_err(e.to_string()))?;
            Ok(CallResponse::Failed {
                code: failure.code,
                message: failure.message,
                remote_type: failure.remote_type,
                traceback: failure.traceback,
            })
        })
        .unwrap_or_else(|err| CallResponse::Failed {
            code: "worker_error".into(),
            message: format!("the worker could not run the call: {err}"),
            remote_type: None,
            traceback: None,
        });
        write_frame(&mut stream, &response)?;
    }
    Ok(())
}

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

def _resolve(module, qualname):
    # importlib.import_module's four Python frames only for a module not
    # loaded yet (or still loading): a warm worker's calls import nothing.
    target = sys.modules.get(module)
    if target is None or getattr(getattr(target, "__spec__", None), "_initializing", False):
        target = importlib.import_module(module)
    for part in qualname.split("."):
        target = getattr(target, part)
    return target

# json.dumps(result, allow_nan=False) would build an encoder on every call.
_RESULT_ENCODER = json.JSONEncoder(allow_nan=False)

def _encode(result):
    try:
        why = None if isinstance(result, str) else _unfaithful(result)
        if why is None:
            return True, _RESULT_ENCODER.encode(result)
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

import ctypes
import rh_artifacts

# `os.environ[k] = v` calls setenv(3), and glibc never frees a value it
# replaces (someone may still hold it): a new folder per call would leak
# ~115 bytes a call for the worker's life. The worker owns the one
# "RH_OUTPUTS=..." string the process environment points at instead (putenv
# keeps the caller's string), and frees the previous one once it is replaced;
# `os.environ` is kept in step without a second setenv.
_libc = ctypes.CDLL(None)
_outputs_entry = None

def _outputs(path):
    """Points $RH_OUTPUTS (a worker runs one call at a time) and rh_artifacts at `path`."""
    global _outputs_entry
    key = os.environ.encodekey("RH_OUTPUTS")
    if path is None:
        os.environ._data.pop(key, None)
        _libc.unsetenv(b"RH_OUTPUTS")
        _outputs_entry = None
    else:
        entry = ctypes.create_string_buffer(b"RH_OUTPUTS=" + os.fsencode(path))
        if _libc.putenv(entry) != 0:
            raise OSError(ctypes.get_errno(), "putenv RH_OUTPUTS")
        _outputs_entry = entry
        os.environ._data[key] = os.environ.encodevalue(path)
    rh_artifacts._set(path)

def call(module, qualname, args_json, kwargs_json, outputs=None):
    _outputs(outputs)
    try:
        try:
            target = _resolve(module, qualname)
        except BaseException as exc:
            _flush()
            return False, _failure("entrypoint_not_found", exc, f"cannot load {module}:{qualname}: {_type_name(type(exc))}: {exc}")
        try:
            # Most calls pass no keyword arguments: "{}" needs no parse.
            kwargs = {} if kwargs_json == "{}" else json.loads(kwargs_json)
            result = target(*json.loads(args_json), **kwargs)
        except BaseException as exc:
            return False, _failure("user_exception", exc)
        finally:
            _flush()
        return _encode(result)
    finally:
        _outputs(None)


# --- Programs ---------------------------------------------------------------
# A script, shell command or notebook runs as a child of this worker, in its
# process group (and cgroup): stopping the worker stops the whole tree. Its
# output goes straight to the worker's stdout and stderr, the call's log.

import signal, subprocess, tempfile

EXTRA_PATHS = []

def _python():
    for name in (f"python{sys.version_info[0]}.{sys.version_info[1]}", f"python{sys.version_info[0]}", "python"):
        path = os.path.join(sys.base_prefix, "bin", name)
        if os.access(path, os.X_OK):
            return path
    raise RuntimeError(f"no python executable under {sys.base_prefix}/bin")

def _program_failure(code, message, exit_code=None, remote_type=None, traceback_text=None):
    failure = {"code": code, "message": message, "remote_type": remote_type, "traceback": traceback_text}
    if exit_code is not None:
        failure["exit_code"] = exit_code
    return False, json.dumps(failure)

def run_program(kind, target, args_json, kwargs_json, outputs):
    args = json.loads(args_json)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(EXTRA_PATHS + [p for p in [env.get("PYTHONPATH")] if p])
    env["PYTHONUNBUFFERED"] = "1"
    if outputs is not None:
        env["RH_OUTPUTS"] = outputs
    failure_file = None
    try:
        if kind == "script":
            if not os.path.isfile(target):
                return _program_failure("entrypoint_not_found", f"there is no script `{target}` in the bundle")
            argv = [_python(), target, *args]
            shown = f"python {target}"
        elif kind == "shell":
            argv = ["/bin/sh", "-c", target, "sh", *args]
            shown = f"`{target}`"
        elif kind == "notebook":
            if not os.path.isfile(target):
                return _program_failure("entrypoint_not_found", f"there is no notebook `{target}` in the bundle")
            if outputs is None:
                return _program_failure("outputs_unavailable", "the node could not make an output folder for the executed notebook")
            fd, failure_file = tempfile.mkstemp(prefix="rh-notebook-", suffix=".json")
            os.close(fd)
            executed = os.path.join(outputs, os.path.basename(target))
            argv = [_python(), "-c", NOTEBOOK_RUNNER, target, kwargs_json, executed, failure_file]
            shown = f"notebook {target}"
        else:
            return _program_failure("worker_error", f"unknown program kind {kind!r}")
        _flush()
        try:
            code = subprocess.call(argv, env=env, stdin=subprocess.DEVNULL)
        except OSError as exc:
            return _program_failure("entrypoint_not_found", f"cannot start {shown}: {exc}")
        if code == 0:
            result = {"exit_code": 0}
            if kind == "notebook":
                result["notebook"] = os.path.basename(target)
            return True, json.dumps(result)
        if failure_file is not None and os.path.getsize(failure_file) > 0:
            with open(failure_file) as f:
                failure = json.load(f)
            failure["exit_code"] = code
            return False, json.dumps(failure)
        if code < 0:
            name = signal.Signals(-code).name if -code in signal.valid_signals() else str(-code)
            return _program_failure("program_failed", f"{shown} was killed by signal {name}", exit_code=code)
        return _program_failure("program_failed", f"{shown} exited with code {code}", exit_code=code)
    finally:
        if failure_file is not None:
            try:
                os.unlink(failure_file)
            except OSError:
                pass


# --- Instance hosting -------------------------------------------------------
# A worker that constructs a class keeps the object and serves its methods,
# each call on its own thread. It owns the control socket from then on:
# frames in are {"kind": "method" | "cancel", ...}; frames out are
# {"kind": "output", "call", "stream", "text"} and {"kind": "done", "call",
# "ok", "payload"} (payload as `call` returns it).

import ctypes, inspect, os, socket, struct, threading, time

class DispatchCancelled(BaseException):
    """Raised in a method call's thread when its dispatch is cancelled."""

_local = threading.local()
_real_sleep = time.sleep

def _sleep(seconds):
    """time.sleep of a hosting worker: a call's thread wakes when its call is cancelled."""
    cancelled = getattr(_local, "cancelled", None)
    if cancelled is None:
        return _real_sleep(seconds)
    if seconds < 0:
        raise ValueError("sleep length must be non-negative")
    if cancelled.wait(seconds):
        raise DispatchCancelled("the call was cancelled")

class _CallOutput:
    """sys.stdout/sys.stderr of a hosting worker: what a call's thread
    writes goes to that call's log; anything else to the worker's own fd."""

    def __init__(self, stream, fallback, send):
        self._stream = stream
        self._fallback = fallback
        self._send = send
        self.encoding = "utf-8"
        self.errors = "replace"

    def write(self, text):
        call = getattr(_local, "call", None)
        if call is None:
            return self._fallback.write(text)
        if text:
            self._send({"kind": "output", "call": call, "stream": self._stream, "text": str(text)})
        return len(text)

    def writelines(self, lines):
        for line in lines:
            self.write(line)

    def flush(self):
        if getattr(_local, "call", None) is None:
            self._fallback.flush()

    def isatty(self):
        return False

    def fileno(self):
        return self._fallback.fileno()

    @property
    def buffer(self):
        return self._fallback.buffer

def host(fd, call_id, module, qualname, args_json, kwargs_json, outputs=None):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM, fileno=os.dup(fd))
    lock = threading.Lock()

    def send(message):
        body = json.dumps(message).encode()
        with lock:
            sock.sendall(struct.pack(">I", len(body)) + body)

    def recv_exact(n):
        chunks = []
        while n:
            chunk = sock.recv(n)
            if not chunk:
                return None
            chunks.append(chunk)
            n -= len(chunk)
        return b"".join(chunks)

    def recv():
        header = recv_exact(4)
        if header is None:
            return None
        body = recv_exact(struct.unpack(">I", header)[0])
        return None if body is None else json.loads(body)

    def done(call, ok, payload):
        send({"kind": "done", "call": call, "ok": ok, "payload": payload})

    sys.stdout = _CallOutput("stdout", sys.__stdout__, send)
    sys.stderr = _CallOutput("stderr", sys.__stderr__, send)
    # Code imported from here on sleeps interruptibly (see _sleep).
    time.sleep = _sleep

    _local.call = call_id
    rh_artifacts._set(outputs)
    try:
        cls = _resolve(module, qualname)
    except BaseException as exc:
        _local.call = None
        return done(call_id, False, _failure("entrypoint_not_found", exc, f"cannot load {module}:{qualname}: {_type_name(type(exc))}: {exc}"))
    if not inspect.isclass(cls):
        _local.call = None
        return done(call_id, False, json.dumps({
            "code": "not_a_class", "remote_type": _type_name(type(cls)), "traceback": None,
            "message": f"{module}:{qualname} is a {_type_name(type(cls))}, not a class; call functions with a dispatch",
        }))
    try:
        obj = cls(*json.loads(args_json), **json.loads(kwargs_json))
    except BaseException as exc:
        _local.call = None
        return done(call_id, False, _failure("user_exception", exc))
    _local.call = None
    rh_artifacts._set(None)
    done(call_id, True, "null")

    threads = {}
    cancels = {}

    def run(call, method, args_json, kwargs_json, outputs):
        _local.call = call
        _local.cancelled = cancels[call]
        rh_artifacts._set(outputs)
        try:
            try:
                target = getattr(obj, method)
            except AttributeError as exc:
                ok, payload = False, _failure("method_not_found", exc, f"{_type_name(cls)} has no method `{method}`")
            else:
                if not callable(target):
                    ok, payload = False, json.dumps({
                        "code": "method_not_found", "remote_type": _type_name(type(target)), "traceback": None,
                        "message": f"`{method}` of {_type_name(cls)} is a {_type_name(type(target))}, not a method",
                    })
                else:
                    try:
                        result = target(*json.loads(args_json), **json.loads(kwargs_json))
                    except DispatchCancelled as exc:
                        ok, payload = False, _failure("cancelled", exc, "the call was cancelled")
                    except BaseException as exc:
                        ok, payload = False, _failure("user_exception", exc)
                    else:
                        ok, payload = _encode(result)
        except DispatchCancelled as exc:
            ok, payload = False, _failure("cancelled", exc, "the call was cancelled")
        finally:
            _local.call = None
            _local.cancelled = None
            rh_artifacts._set(None)
            threads.pop(call, None)
            cancels.pop(call, None)
        try:
            done(call, ok, payload)
        except OSError:
            pass

    while True:
        message = recv()
        if message is None:
            return
        if message["kind"] == "method":
            thread = threading.Thread(target=run, name=f"call-{message['call']}", daemon=True,
                                      args=(message["call"], message["method"], message["args"], message["kwargs"],
                                            message.get("outputs")))
            threads[message["call"]] = thread
            cancels[message["call"]] = threading.Event()
            thread.start()
        elif message["kind"] == "cancel":
            cancelled = cancels.get(message["call"])
            if cancelled is not None:
                cancelled.set()
            thread = threads.get(message["call"])
            if thread is not None and thread.ident is not None:
                ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread.ident), ctypes.py_object(DispatchCancelled))
"#;

/// `rh_artifacts`, importable by every call (its source is shared with `rh reproduce`).
pub const ARTIFACTS_MODULE: &str = include_str!("../python/rh_artifacts.py");
/// The notebook runner a notebook call's child interpreter runs.
pub const NOTEBOOK_RUNNER: &str = include_str!("../python/rh_notebook.py");

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
        let artifacts = CString::new(ARTIFACTS_MODULE).expect("module has no NUL");
        let artifacts = PyModule::from_code(py, &artifacts, c"rh_artifacts.py", c"rh_artifacts")?;
        sys.getattr("modules")?.set_item("rh_artifacts", artifacts)?;
        let code = CString::new(RUNNER).expect("runner has no NUL");
        let module = PyModule::from_code(py, &code, c"rh_runner.py", c"rh_runner")?;
        module.setattr("NOTEBOOK_RUNNER", NOTEBOOK_RUNNER)?;
        module.setattr("EXTRA_PATHS", paths.to_vec())?;
        Ok(module.unbind().into_any())
    })?;
    // Looked up once: a call goes straight to its runner function.
    let (call, run_program) =
        Python::attach(|py| -> PyResult<_> { Ok((runner.getattr(py, "call")?, runner.getattr(py, "run_program")?)) })?;
    let python = Python::attach(|py| py.version().to_owned());
    write_frame(&mut stream, &Ready { pid: std::process::id(), python })?;
    while let Some(request) = read_frame::<_, CallRequest>(&mut stream)? {
        if let Some(call_id) = request.host {
            // From here on the Python side owns the socket; it returns when the daemon closes it.
            Python::attach(|py| {
                let host = runner.getattr(py, "host")?;
                host.call1(
                    py,
                    (fd, call_id, request.module, request.qualname, request.args, request.kwargs, request.outputs),
                )
                .map(drop)
            })?;
            return Ok(());
        }
        let response = Python::attach(|py| -> PyResult<CallResponse> {
            let (ok, payload): (bool, String) = match request.program {
                Some(kind) => run_program
                    .call1(py, (kind, request.qualname, request.args, request.kwargs, request.outputs))?
                    .extract(py)?,
                None => call
                    .call1(py, (request.module, request.qualname, request.args, request.kwargs, request.outputs))?
                    .extract(py)?,
            };
            if ok {
                return Ok(CallResponse::Returned { result: payload });
            }
            let failure: wire::DispatchFailure =
                serde_json::from_str(&payload).map_err(|e| pyo3::exceptions::PyValueError::new_err(e.to_string()))?;
            Ok(CallResponse::Failed(failure))
        })
        .unwrap_or_else(|err| {
            CallResponse::Failed(wire::DispatchFailure::new(
                "worker_error",
                format!("the worker could not run the call: {err}"),
            ))
        });
        write_frame(&mut stream, &response)?;
    }
    Ok(())
}

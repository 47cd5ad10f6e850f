"""Run ordinary Python functions on remote compute through a Runhouse Gateway.

    from runhouse_gateway import Gateway
    gw = Gateway()                                  # RH_GATEWAY_URL, RH_TOKEN
    train = gw.function(my_module.train).to("gpu")  # packs and uploads the project if it changed
    result = train(0.01, epochs=3)                  # runs remotely, streams its output here

    Trainer = gw.cls(my_module.Trainer).to("gpu")  # a class: constructed once, remotely
    t = Trainer(lr=0.01, name="bert-ft")            # or gw.instance("bert-ft") from anywhere else
    t.train_epoch(0)                                # each method call is a dispatch

Every HTTP call, retry and token is handled by the Rust client underneath
(``runhouse_gateway._native``); blocking calls release the GIL, so threads
can drive several remote calls at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import os
import sys
from typing import Any, Callable, Dict, Iterator, List, Optional, Union

from ._native import GatewayError as _NativeGatewayError
from ._native import NativeClient

__all__ = [
    "ACTIVE_STATES",
    "TERMINAL_STATES",
    "RemoteLogWriter",
    "Gateway",
    "RemoteFunction",
    "RemoteClass",
    "RemoteInstance",
    "Schedule",
    "Dispatch",
    "GatewayError",
    "RemoteError",
    "DispatchCancelled",
    "DispatchTimedOut",
]


#: States a dispatch can still leave by itself: a retrying orchestrator task re-attaches to these.
ACTIVE_STATES = frozenset({"queued", "running"})
#: States that never change.
TERMINAL_STATES = frozenset({"succeeded", "failed", "cancelled", "timed_out"})


class GatewayError(Exception):
    """The gateway refused a request (bad token, unknown dispatch, invalid input...)."""

    def __init__(self, status: int, code: str, message: str, request_id: str = "") -> None:
        super().__init__(f"{code} ({status}): {message}")
        self.status = status
        self.code = code
        self.message = message
        self.request_id = request_id


class RemoteError(Exception):
    """The remote function raised. Carries the remote type, message and traceback."""

    def __init__(self, remote_type: str, message: str, remote_traceback: str, dispatch_id: str = "") -> None:
        super().__init__(message)
        self.remote_type = remote_type
        self.message = message
        self.remote_traceback = remote_traceback
        self.dispatch_id = dispatch_id

    def __str__(self) -> str:
        return f"{self.remote_type}: {self.message}\n\nRemote traceback:\n{self.remote_traceback}"


class DispatchCancelled(Exception):
    """The dispatch was cancelled; ``by`` and ``reason`` say who and why."""

    def __init__(self, dispatch_id: str, by: str, reason: Optional[str]) -> None:
        super().__init__(f"dispatch {dispatch_id} was cancelled by {by}" + (f": {reason}" if reason else ""))
        self.dispatch_id = dispatch_id
        self.by = by
        self.reason = reason


class DispatchTimedOut(Exception):
    """The dispatch ran past its timeout and was stopped."""

    def __init__(self, dispatch_id: str, message: str) -> None:
        super().__init__(f"dispatch {dispatch_id} timed out: {message}")
        self.dispatch_id = dispatch_id


def _call(method: Callable[..., str], *args: Any) -> Any:
    try:
        return json.loads(method(*args))
    except _NativeGatewayError as err:
        raise GatewayError(*err.args) from None


class Dispatch:
    """A handle on one remote call."""

    def __init__(self, gateway: "Gateway", data: Dict[str, Any]) -> None:
        self._gateway = gateway
        self._data = data
        self.id: str = data["id"]

    def __repr__(self) -> str:
        return f"<Dispatch {self.id} {self._data['state']}>"

    @property
    def data(self) -> Dict[str, Any]:
        """The dispatch as last read from the gateway."""
        return self._data

    def status(self) -> str:
        """The current state: queued, running, cancelling, succeeded, failed, cancelled or timed_out."""
        self._data = _call(self._gateway._native.get, self.id)
        return self._data["state"]

    def wait(self, timeout: Optional[float] = None) -> Dict[str, Any]:
        """Blocks until the dispatch ends (or ``timeout`` seconds); returns it.

        Ctrl-C cancels the remote run (unless the Gateway was made with
        ``cancel_on_interrupt=False``) and re-raises KeyboardInterrupt.
        """
        with self._cancel_on_interrupt():
            self._data = _call(self._gateway._native.wait, self.id, timeout)
        return self._data

    @contextlib.contextmanager
    def _cancel_on_interrupt(self) -> Iterator[None]:
        try:
            yield
        except KeyboardInterrupt:
            if self._gateway.cancel_on_interrupt:
                self.cancel(reason="interrupted (KeyboardInterrupt)")
            raise

    def result(self, timeout: Optional[float] = None) -> Any:
        """The function's return value; raises RemoteError, DispatchCancelled or DispatchTimedOut."""
        return self._outcome(self.wait(timeout))

    def _echo_output(self) -> Optional[Dict[str, Any]]:
        """Writes the remote output here as it arrives; returns the dispatch as it ended, if the gateway said."""
        follower = self._gateway._native.follow(self.id, 0)
        try:
            for entry in follower:
                entry = json.loads(entry)
                stream = sys.stderr if entry["stream"] != "stdout" else sys.stdout
                stream.write(entry["text"])
                stream.flush()
        except _NativeGatewayError as err:
            raise GatewayError(*err.args) from None
        ended = follower.ended()
        return json.loads(ended) if ended is not None else None

    def _outcome(self, data: Dict[str, Any]) -> Any:
        state = data["state"]
        if state == "succeeded":
            return data["result"]
        failure = data.get("failure") or {}
        if state == "failed":
            if failure.get("code") == "user_exception":
                raise RemoteError(failure.get("remote_type") or "Exception", failure.get("message", ""),
                                  failure.get("traceback") or "", self.id)
            raise RemoteError(failure.get("code", "failed"), failure.get("message", ""), failure.get("traceback") or "",
                              self.id)
        if state == "cancelled":
            cancellation = data.get("cancellation") or {}
            raise DispatchCancelled(self.id, cancellation.get("by", "unknown"), cancellation.get("reason"))
        if state == "timed_out":
            raise DispatchTimedOut(self.id, failure.get("message", ""))
        raise TimeoutError(f"dispatch {self.id} is still {state}")

    def cancel(self, reason: Optional[str] = None) -> None:
        """Asks the gateway to stop the call (idempotent)."""
        self._data = _call(self._gateway._native.cancel, self.id, reason)

    def logs(self, follow: bool = False, offset: int = 0) -> Iterator[Dict[str, Any]]:
        """Output entries (``{"seq", "stream", "text"}``); with ``follow`` they arrive live until the run ends.

        ``offset`` skips the entries up to and including that ``seq`` (pass the last ``seq`` you saw
        to read on from there).
        """
        if follow:
            try:
                for entry in self._gateway._native.follow(self.id, offset):
                    yield json.loads(entry)
            except _NativeGatewayError as err:
                raise GatewayError(*err.args) from None
            return
        while True:
            page = _call(self._gateway._native.logs, self.id, offset)
            yield from page["entries"]
            if not page["entries"]:
                return
            offset = page["next_offset"]

    def events(self) -> List[Dict[str, Any]]:
        """Every state transition, with actor and reason."""
        return _call(self._gateway._native.events, self.id)["items"]

    async def await_result(self, timeout: Optional[float] = None) -> Any:
        """``result()`` without blocking the event loop."""
        return await asyncio.to_thread(self.result, timeout)

    def record(self) -> Dict[str, Any]:
        """The run record: code, arguments, resolved packages, interpreter and place the call ran with."""
        return _call(self._gateway._native.record, self.id)

    def artifacts(self) -> List[Dict[str, Any]]:
        """The files the call kept (what it wrote under ``$RH_OUTPUTS``): path, size, sha256, type."""
        return _call(self._gateway._native.artifacts, self.id)["items"]

    def download_artifacts(self, dir: str = ".", path: Optional[str] = None) -> List[str]:
        """Downloads the call's artifacts (all, or the one at ``path``) into ``dir``; returns the files written."""
        try:
            return self._gateway._native.artifacts_download(self.id, dir, path)
        except _NativeGatewayError as err:
            raise GatewayError(*err.args) from None

    def artifact(self, path: str) -> bytes:
        """The bytes of one artifact."""
        import tempfile

        with tempfile.TemporaryDirectory(prefix="rh-artifact-") as tmp:
            (written,) = self.download_artifacts(tmp, path)
            with open(written, "rb") as f:
                return f.read()

    def reproduce(self, dir: Optional[str] = None, install: bool = True) -> Any:
        """Runs this dispatch again here, from its run record, and returns its result.

        The bundle is unpacked under ``dir`` (default: a folder in the temp dir). With ``install``,
        the recorded packages are installed into a virtualenv cached by that set and the call runs in
        a subprocess: its output is printed, and an exception raises ``RemoteError`` with the local
        type, message and traceback. With ``install=False`` it runs in this interpreter (the bundle
        goes first on ``sys.path``) and raises the exception itself.
        """
        import subprocess

        try:
            python, src, call_file, outcome_file, runner = self._gateway._native.reproduce_prepare(
                self.id, dir, install)
        except _NativeGatewayError as err:
            raise GatewayError(*err.args) from None
        with open(call_file) as f:
            spec = json.load(f)
        if not install and spec["program"] is None:
            import importlib

            if src not in sys.path:
                sys.path.insert(0, src)
            target: Any = importlib.import_module(spec["module"])
            for part in spec["qualname"].split("."):
                target = getattr(target, part)
            return target(*spec["args"], **spec["kwargs"])
        code = subprocess.call([python, "-c", runner, call_file], cwd=src)
        try:
            with open(outcome_file) as f:
                outcome = json.load(f)
        except (OSError, ValueError):
            raise RuntimeError(f"the local run of dispatch {self.id} exited with status {code} before the call "
                               f"ended") from None
        if outcome["ok"]:
            return outcome["result"]
        raise RemoteError(outcome["type"], outcome["message"], outcome["traceback"], self.id)


class RemoteLogWriter:
    """Turns a dispatch's output entries into one log line per remote line, as they arrive.

    For orchestrator integrations that copy remote output into their own task logs.
    """

    def __init__(self, log: Any) -> None:
        self._log = log
        self._partial: Dict[str, str] = {}
        #: The ``seq`` of the last entry written (to read on from after a reconnect).
        self.last_seq = 0

    def write(self, entry: Dict[str, Any]) -> None:
        """Writes the complete lines of one entry; keeps an unfinished last line until its end arrives."""
        self.last_seq = max(self.last_seq, int(entry.get("seq", 0)))
        stream = entry.get("stream", "stdout")
        if stream == "system":
            self._log.warning("[gateway] %s", entry.get("text", "").rstrip())
            return
        text = self._partial.pop(stream, "") + entry.get("text", "")
        *lines, rest = text.split("\n")
        for line in lines:
            self._emit(stream, line)
        if rest:
            self._partial[stream] = rest

    def flush(self) -> None:
        """Writes any unfinished last lines."""
        for stream, rest in sorted(self._partial.items()):
            self._emit(stream, rest)
        self._partial.clear()

    def _emit(self, stream: str, line: str) -> None:
        if stream == "stderr":
            self._log.info("[remote stderr] %s", line)
        else:
            self._log.info("[remote] %s", line)


class RemoteFunction:
    """A function bound to a cluster. Call it like the local function."""

    def __init__(self, gateway: "Gateway", spec: Dict[str, Any], cluster: Optional[str]) -> None:
        self._gateway = gateway
        self._spec = spec
        self.cluster = cluster

    def __repr__(self) -> str:
        if "instance" in self._spec:
            return f"<RemoteMethod {self._spec['method']} of instance {self._spec['instance']}>"
        return f"<RemoteFunction {self._spec.get('function') or self._spec.get('function_name')} on {self.cluster}>"

    def dispatch(self, *args: Any, labels: Optional[Dict[str, str]] = None, timeout: Optional[int] = None,
                 idempotency_key: Optional[str] = None, **kwargs: Any) -> Dispatch:
        """Starts a remote call and returns its handle at once."""
        return self.submit(list(args), kwargs, labels=labels, timeout=timeout, idempotency_key=idempotency_key)

    def submit(self, args: Optional[List[Any]] = None, kwargs: Optional[Dict[str, Any]] = None, *,
               labels: Optional[Dict[str, str]] = None, timeout: Optional[int] = None,
               idempotency_key: Optional[str] = None, request: Optional[Dict[str, Any]] = None) -> Dispatch:
        """``dispatch()`` for callers that hold the arguments as data (orchestrators): the function's own
        keyword arguments travel in ``kwargs``, so one named ``labels`` or ``timeout`` reaches it intact.
        ``request`` holds further fields of the create request (``POST /v1/dispatches``) as the API
        names them, so a field the gateway gains reaches it without a new parameter here."""
        body = dict(request or {})
        body.update(self._spec, args=list(args or []), kwargs=dict(kwargs or {}), cluster=self.cluster,
                    labels=labels or {})
        if timeout is not None:
            body["timeout_s"] = timeout
        if idempotency_key is not None:
            body["idempotency_key"] = idempotency_key
        return Dispatch(self._gateway, _call(self._gateway._native.create, json.dumps(body)))

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Runs remotely, streaming remote stdout/stderr here, and returns the result.

        Ctrl-C cancels the remote run (unless the Gateway was made with
        ``cancel_on_interrupt=False``) and re-raises KeyboardInterrupt.
        """
        handle = self.dispatch(*args, **kwargs)
        with handle._cancel_on_interrupt():
            ended = handle._echo_output()
        if ended is None:
            return handle.result()
        handle._data = ended
        return handle._outcome(ended)

    async def acall(self, *args: Any, **kwargs: Any) -> Any:
        """``__call__`` without blocking the event loop."""
        return await asyncio.to_thread(self.__call__, *args, **kwargs)

    #: The same as ``acall`` (the name instance methods are usually reached by: ``t.embed.async_(...)``).
    async_ = acall


class _FunctionSpec:
    def __init__(self, gateway: "Gateway", target: Union[Callable[..., Any], str], name: Optional[str],
                 requirements: Optional[List[str]], cache: bool = False) -> None:
        self._gateway = gateway
        self._target = target
        self._name = name
        self._requirements = list(requirements or [])
        self._cache = cache

    def to(self, cluster: str) -> RemoteFunction:
        """Packs the function's project (uploading it only if the gateway lacks it) and binds it to ``cluster``."""
        entrypoint, sha = self._pack()
        spec: Dict[str, Any] = {"function": entrypoint, "bundle": sha, "requirements": self._requirements}
        if self._name:
            _call(self._gateway._native.register, json.dumps(
                {"name": self._name, "function": entrypoint, "bundle": sha, "requirements": self._requirements,
                 "cluster": cluster}))
            spec = {"function_name": self._name}
        if self._cache:
            spec["cache"] = True
        return RemoteFunction(self._gateway, spec, cluster)

    def _pack(self) -> "tuple[str, str]":
        """Packs the target's project (uploading it only if the gateway lacks it); returns its
        ``module:qualname`` and the bundle's sha256."""
        if isinstance(self._target, str):
            entrypoint, source = self._target, os.getcwd()
            if ":" not in entrypoint and " " not in entrypoint:
                raise ValueError(f"expected 'module:qualname', 'python <script.py>', 'shell <command>' or "
                                 f"'notebook <file.ipynb>', got {entrypoint!r}")
        else:
            source = inspect.getsourcefile(self._target) or ""
            if not source:
                raise ValueError(f"cannot find the source file of {self._target!r}")
            entrypoint = None
        sha, uploaded, root, module = self._gateway._native.deploy(os.path.abspath(source))
        #: The project folder that was packed, and the file's module name within it
        #: (``None`` if the file is not importable from there), as of the last ``to()``.
        self.root: str = root
        self.module: Optional[str] = module
        if entrypoint is None:
            fn = self._target
            module_name = fn.__module__
            if module_name == "__main__" or not module_name:
                if module is None:
                    raise ValueError(f"{source} is not a module under {root}")
                module_name = module
            entrypoint = f"{module_name}:{fn.__qualname__}"
        self.uploaded = uploaded
        return entrypoint, sha


class RemoteInstance:
    """A live remote object. Its methods are called like local ones; each call is a dispatch.

    ``t.method(...)`` runs remotely, streaming output here, and returns the result (remote
    exceptions raise RemoteError); ``t.method.dispatch(...)`` returns a Dispatch at once;
    ``await t.method.acall(...)`` (or ``.async_``) does not block the event loop. Any number of
    threads, processes and pipelines may call one instance at once.
    """

    def __init__(self, gateway: "Gateway", data: Dict[str, Any]) -> None:
        self._gateway = gateway
        self._data = data
        self.name: str = data["name"]

    def __repr__(self) -> str:
        return f"<RemoteInstance {self.name} of {self._data['class']} {self._data['state']}>"

    def __getattr__(self, method: str) -> RemoteFunction:
        if method.startswith("__"):
            raise AttributeError(method)
        return RemoteFunction(self._gateway, {"instance": self.name, "method": method}, None)

    def method(self, name: str) -> RemoteFunction:
        """The method ``name``, for names that ``t.<name>`` cannot reach."""
        return RemoteFunction(self._gateway, {"instance": self.name, "method": name}, None)

    @property
    def data(self) -> Dict[str, Any]:
        """The instance as last read: state, node, constructor dispatch, restarts, events..."""
        return self._data

    def refresh(self) -> "RemoteInstance":
        self._data = _call(self._gateway._native.instance_get, self.name)
        return self

    def state(self) -> str:
        """starting, ready, failed, lost or deleted."""
        return self.refresh()._data["state"]

    def events(self) -> List[Dict[str, Any]]:
        """Its latest events: constructed, lost, restarted, calls abandoned..."""
        return self.refresh()._data.get("events", [])

    def wait_ready(self, echo: bool = True) -> "RemoteInstance":
        """Waits for the constructor (echoing its output with ``echo``); raises RemoteError if it failed."""
        constructor = self._data.get("constructor_id")
        if constructor and self._data["state"] == "starting":
            handle = Dispatch(self._gateway, {"id": constructor, "state": "queued"})
            with handle._cancel_on_interrupt():
                ended = handle._echo_output() if echo else None
            handle._outcome(ended or handle.wait())
        self.refresh()
        if self._data["state"] == "failed":
            failure = self._data.get("failure") or {}
            raise RemoteError(failure.get("remote_type") or failure.get("code", "failed"), failure.get("message", ""),
                              failure.get("traceback") or "", constructor or "")
        return self

    def delete(self) -> None:
        """Deletes it: its calls are cancelled and its worker stopped."""
        self._data = _call(self._gateway._native.instance_delete, self.name)


class RemoteClass:
    """A class bound to a cluster. Calling it constructs an instance there, once."""

    def __init__(self, gateway: "Gateway", spec: Dict[str, Any], cluster: str) -> None:
        self._gateway = gateway
        self._spec = spec
        self.cluster = cluster

    def __repr__(self) -> str:
        return f"<RemoteClass {self._spec['class']} on {self.cluster}>"

    def __call__(self, *args: Any, name: Optional[str] = None, **kwargs: Any) -> RemoteInstance:
        """Constructs ``cls(*args, **kwargs)`` remotely as instance ``name`` (default: the class name
        in lower case) and waits for the constructor, echoing its output. If a live instance of that
        name exists with the same arguments, attaches to it instead; with other arguments, GatewayError 409."""
        return self.new(name or self._spec["class"].rsplit(".", 1)[-1].rsplit(":", 1)[-1].lower(),
                        list(args), kwargs)

    def new(self, name: str, args: Optional[List[Any]] = None, kwargs: Optional[Dict[str, Any]] = None, *,
            max_concurrency: Optional[int] = None, idle_stop_minutes: Optional[float] = None,
            restart: str = "never", wait: bool = True) -> RemoteInstance:
        """``__call__`` for callers that hold the constructor's arguments as data (a constructor
        parameter called ``name`` goes in ``kwargs``), with the instance's options:
        ``max_concurrency`` (method calls at once, default 8), ``idle_stop_minutes``, and
        ``restart`` (``never`` or ``on_lost``: construct it again when its node is lost)."""
        body: Dict[str, Any] = dict(self._spec, name=name, args=list(args or []), kwargs=dict(kwargs or {}),
                                    cluster=self.cluster, restart=restart)
        if max_concurrency is not None:
            body["max_concurrency"] = max_concurrency
        if idle_stop_minutes is not None:
            body["idle_stop_minutes"] = idle_stop_minutes
        instance = RemoteInstance(self._gateway, _call(self._gateway._native.instance_create, json.dumps(body)))
        return instance.wait_ready() if wait else instance


class _ClassSpec(_FunctionSpec):
    def to(self, cluster: str) -> RemoteClass:  # type: ignore[override]
        """Packs the class's project (uploading it only if the gateway lacks it) and binds it to ``cluster``."""
        entrypoint, sha = self._pack()
        return RemoteClass(self._gateway, {"class": entrypoint, "bundle": sha, "requirements": self._requirements},
                           cluster)


class Schedule:
    """A cron schedule on the gateway: it creates a dispatch at every instant its expression names."""

    def __init__(self, gateway: "Gateway", data: Dict[str, Any]) -> None:
        self._gateway = gateway
        self._data = data
        self.name: str = data["name"]

    def __repr__(self) -> str:
        state = "paused" if self._data["paused"] else f"next {self._data.get('next_fire_at')}"
        return f"<Schedule {self.name} {self._data['cron']!r} {state}>"

    @property
    def data(self) -> Dict[str, Any]:
        """The schedule as last read: cron, timezone, dispatch template, policies, ``upcoming`` fire times."""
        return self._data

    def refresh(self) -> "Schedule":
        self._data = _call(self._gateway._native.schedule_get, self.name)
        return self

    def update(self, **changes: Any) -> "Schedule":
        """Changes fields (``cron``, ``timezone``, ``overlap``, ``catchup``, ``paused``...)."""
        self._data = _call(self._gateway._native.schedule_update, self.name, json.dumps(changes, default=str))
        return self

    def pause(self) -> "Schedule":
        return self.update(paused=True)

    def resume(self) -> "Schedule":
        """Fires again, from the next instant after now."""
        return self.update(paused=False)

    def runs(self, state: Optional[Union[str, List[str]]] = None, limit: int = 50) -> List[Dispatch]:
        """Its dispatches, newest first."""
        states = [state] if isinstance(state, str) else list(state or [])
        page = _call(self._gateway._native.schedule_runs, self.name, json.dumps({"state": states, "limit": limit}))
        return [Dispatch(self._gateway, d) for d in page["items"]]

    def delete(self) -> None:
        """Deletes it; the dispatches it made stay."""
        try:
            self._gateway._native.schedule_delete(self.name)
        except _NativeGatewayError as err:
            raise GatewayError(*err.args) from None


class Gateway:
    """A connection to a Runhouse Gateway."""

    def __init__(self, url: Optional[str] = None, token: Optional[str] = None, cancel_on_interrupt: bool = True) -> None:
        url = url or os.environ.get("RH_GATEWAY_URL", "http://127.0.0.1:8080")
        token = token or os.environ.get("RH_TOKEN", "")
        if not token:
            raise ValueError("no gateway token: pass token=... or set RH_TOKEN")
        self.url = url
        self.cancel_on_interrupt = cancel_on_interrupt
        self._native = NativeClient(url, token)

    def function(self, fn: Union[Callable[..., Any], str], name: Optional[str] = None,
                 requirements: Optional[List[str]] = None, cache: bool = False) -> _FunctionSpec:
        """A function (or ``"module:qualname"``) to run remotely; follow with ``.to(cluster)``.

        A program in the current project runs the same way: ``"python scripts/train.py"`` (positional
        arguments are its command line), ``"shell ./prepare.sh"`` or ``"notebook eda.ipynb"`` (keyword
        arguments are injected into its ``parameters`` cell; the executed notebook is kept as an artifact).

        With ``cache=True``, a call identical to an earlier succeeded one (same code, arguments and
        requirements) returns that result without running; one identical to a call still running
        waits for it. ``Dispatch.data["cached_from"]`` names the dispatch that answered."""
        return _FunctionSpec(self, fn, name, requirements, cache)

    def cls(self, cls: Union[type, str], requirements: Optional[List[str]] = None) -> _ClassSpec:
        """A class (or ``"module:Qualname"``) to construct remotely; follow with ``.to(cluster)``."""
        return _ClassSpec(self, cls, None, requirements)

    def instance(self, name: str) -> RemoteInstance:
        """Attaches to the live instance ``name`` (made by any client, process or pipeline)."""
        return RemoteInstance(self, _call(self._native.instance_get, name))

    def method(self, instance: str, method: str) -> RemoteFunction:
        """Method ``method`` of instance ``instance``, without reading the instance first."""
        return RemoteFunction(self, {"instance": instance, "method": method}, None)

    def instances(self, all: bool = False) -> List[RemoteInstance]:
        """The project's live instances (``all``: deleted ones too), by name."""
        return [RemoteInstance(self, i) for i in _call(self._native.instance_list, all)["items"]]

    def registered(self, name: str, cluster: Optional[str] = None) -> RemoteFunction:
        """A function registered under ``name`` (``rh deploy`` or ``function(..., name=)``), bound to
        ``cluster``, or to its registered default cluster when ``cluster`` is None. Nothing is packed
        or uploaded: the registration already names the code."""
        return RemoteFunction(self, {"function_name": name}, cluster)

    def dispatches(self, state: Optional[Union[str, List[str]]] = None, labels: Optional[Dict[str, str]] = None,
                   cluster: Optional[str] = None, limit: int = 50) -> List[Dispatch]:
        """Dispatches of the token's project, newest first."""
        states = [state] if isinstance(state, str) else list(state or [])
        query = {"state": states, "label": [f"{k}={v}" for k, v in (labels or {}).items()], "limit": limit}
        if cluster:
            query["cluster"] = cluster
        return [Dispatch(self, d) for d in _call(self._native.list, json.dumps(query))["items"]]

    def dispatch(self, id: str) -> Dispatch:
        """Re-attaches to a dispatch by id."""
        return Dispatch(self, _call(self._native.get, id))

    def schedule(self, name: str, cron: str, fn_or_remote: Union["RemoteFunction", Callable[..., Any], str],
                 *args: Any, cluster: Optional[str] = None, timezone: str = "UTC", overlap: str = "allow",
                 catchup: str = "latest", max_catchup: int = 10, paused: bool = False,
                 start_at: Optional[str] = None, end_at: Optional[str] = None,
                 labels: Optional[Dict[str, str]] = None, timeout: Optional[int] = None,
                 **kwargs: Any) -> Schedule:
        """Runs ``fn_or_remote(*args, **kwargs)`` at every instant of ``cron`` (in ``timezone``).

        ``fn_or_remote`` is a RemoteFunction (``gw.function(f).to("cpu")``), a function (packed and
        uploaded as ``.to(cluster)`` does; give ``cluster``), or a registered function's name.
        ``overlap``: allow, skip, cancel_previous or queue; ``catchup``: none, latest or all.
        """
        if isinstance(fn_or_remote, RemoteFunction):
            remote = fn_or_remote
        elif isinstance(fn_or_remote, str):
            remote = self.registered(fn_or_remote, cluster)
        elif callable(fn_or_remote):
            if not cluster:
                raise ValueError("scheduling a function needs cluster=...")
            remote = self.function(fn_or_remote).to(cluster)
        else:
            raise TypeError("expected a RemoteFunction, a function or a registered function's name")
        template = dict(remote._spec, args=list(args), kwargs=kwargs, labels=labels or {})
        if remote.cluster or cluster:
            template["cluster"] = remote.cluster or cluster
        if timeout is not None:
            template["timeout_s"] = timeout
        body: Dict[str, Any] = {"name": name, "cron": cron, "timezone": timezone, "dispatch": template,
                                "overlap": overlap, "catchup": catchup, "max_catchup": max_catchup,
                                "paused": paused}
        if start_at is not None:
            body["start_at"] = start_at
        if end_at is not None:
            body["end_at"] = end_at
        return Schedule(self, _call(self._native.schedule_create, json.dumps(body)))

    def schedules(self) -> List[Schedule]:
        """The project's schedules, by name."""
        return [Schedule(self, s) for s in _call(self._native.schedule_list)["items"]]

"""What the Prefect tasks do, around the parameters `_generated.py` declares.

The lifecycle promises:
- every dispatch is labelled with the flow and task run it belongs to;
- the remote output streams into the task run's log as it arrives;
- a retry of a task run re-attaches to its previous attempt's dispatch while
  that still runs (and takes its result if it succeeded) instead of starting
  a second one;
- cancellation goes both ways. Prefect reaches a waiting task by different
  roads depending on how the flow runs (SIGTERM in the main thread,
  ``CancelledError`` in async code, nothing at all for a ``.submit()``ed
  thread or a plain ``python flow.py`` run), so three layers are used
  together: ``except BaseException`` around the wait, a check of the flow
  run's state between long-polls, and the flow hook
  :func:`cancel_flow_run_dispatches` as the backstop. A dispatch cancelled at
  the gateway fails its task with ``DispatchCancelled`` and is not retried.

All gateway traffic goes through the ``runhouse_gateway`` SDK.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from prefect import get_run_logger
from prefect.context import FlowRunContext, TaskRunContext
from runhouse_gateway import (
    ACTIVE_STATES,
    TERMINAL_STATES,
    Dispatch,
    DispatchCancelled,
    Gateway,
    RemoteLogWriter,
)

from prefect_runhouse.credentials import RunhouseCredentials

#: Flow run states in which a task's remote work must stop.
STOPPING_FLOW_STATES = frozenset({"CANCELLING", "CANCELLED"})


class FlowRunCancelled(Exception):
    """The task's flow run was cancelled in Prefect; the dispatch was cancelled with it."""


@dataclass
class RemoteCall:
    """One task's parameters, as the generated task functions hand them over."""

    fn_or_name: Any = None
    #: A method call: the instance and its method (instead of ``fn_or_name``).
    instance: Optional[str] = None
    method: Optional[str] = None
    #: ``create_instance``: the class, the instance's name and options.
    cls: Any = None
    name: Optional[str] = None
    max_concurrency: Optional[int] = None
    idle_stop_minutes: Optional[float] = None
    restart: str = "never"
    dispatch_id: Optional[str] = None
    args: list[Any] = field(default_factory=list)
    kwargs: dict[str, Any] = field(default_factory=dict)
    cluster: Optional[str] = None
    requirements: Any = None
    labels: Optional[dict[str, str]] = None
    request: dict[str, Any] = field(default_factory=dict)
    poll_interval: float = 1.0
    stream_logs: bool = True
    wait_timeout: Optional[float] = None
    cancel_on_kill: bool = False
    credentials: Optional[RunhouseCredentials] = None
    #: The dispatch, once created or found (for a cancel from outside the waiting thread).
    handle: Optional[Dispatch] = None

    def credentials_or_env(self) -> RunhouseCredentials:
        return self.credentials if self.credentials is not None else RunhouseCredentials.from_env()


def prefect_labels() -> dict[str, str]:
    """The labels of the current flow and task run, so a dispatch can be found from either side."""
    labels: dict[str, str] = {}
    flow_ctx = FlowRunContext.get()
    if flow_ctx is not None and flow_ctx.flow_run is not None:
        labels["flow_run_id"] = str(flow_ctx.flow_run.id)
        labels["flow_name"] = flow_ctx.flow.name
    task_ctx = TaskRunContext.get()
    if task_ctx is not None:
        run = task_ctx.task_run
        labels["task_run_id"] = str(run.id)
        labels["task_name"] = task_ctx.task.name
        labels["task_key"] = run.task_key
        labels["attempt"] = str(max(run.run_count, 1))
        if run.flow_run_id is not None:
            labels.setdefault("flow_run_id", str(run.flow_run_id))
        labels["task_index"] = str(_task_index(labels.get("flow_run_id", ""), run.task_key, str(run.id)))
    return labels


_TASK_INDEXES: dict[tuple[str, str], dict[str, int]] = {}
_TASK_INDEXES_LOCK = threading.Lock()


def _task_index(flow_run_id: str, task_key: str, task_run_id: str) -> int:
    """Which run of this task within the flow run this is (0, 1, ...), in the order they start.

    Prefect's task run ids and dynamic keys are new on every execution of a flow run, so a re-run
    (after its process was killed) is matched to its earlier dispatches by (flow run, task key,
    this index). A retry keeps its task run id, and so its index.
    """
    with _TASK_INDEXES_LOCK:
        runs = _TASK_INDEXES.setdefault((flow_run_id, task_key), {})
        return runs.setdefault(task_run_id, len(runs))


def retry_condition(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect's retry policy applies to remote failures, never to a cancel made at the gateway."""
    error = getattr(state, "data", None)
    return not isinstance(error, (DispatchCancelled, FlowRunCancelled))


# -- trigger -------------------------------------------------------------------------------------------------


def _submit(call: RemoteCall, gw: Gateway, creds: RunhouseCredentials) -> Dispatch:
    labels = {**(call.labels or {}), **prefect_labels()}
    previous = _previous_attempt(gw, labels)
    if previous is not None:
        call.handle = previous
        return previous
    cluster = call.cluster or creds.default_cluster
    target = call.fn_or_name
    if call.instance is not None or call.method is not None:
        if target is not None or not call.instance or not call.method:
            raise ValueError("a method call gives instance= and method=, and no function")
        if call.cluster or call.requirements:
            raise ValueError("a method call runs where its instance lives: no cluster= or requirements=")
        remote = gw.method(call.instance, call.method)
    elif isinstance(target, str):
        if call.requirements:
            raise ValueError("requirements belong to the registered function; pass them when registering it")
        remote = gw.registered(target, cluster)
    elif callable(target):
        if not cluster:
            raise ValueError("no cluster: pass cluster= or set the credentials' default_cluster")
        remote = gw.function(target, requirements=list(call.requirements or [])).to(cluster)
    else:
        raise TypeError(f"expected a function or a registered function's name, got {type(target).__name__}")
    key = None
    if "task_run_id" in labels:
        key = f"prefect:{labels['task_run_id']}:{labels['attempt']}"
    handle = remote.submit(call.args, call.kwargs, labels=labels, idempotency_key=key, request=call.request)
    call.handle = handle
    get_run_logger().info("Dispatch %s created on cluster %s: %s/ui/runs/%s", handle.id,
                          handle.data.get("cluster"), creds.url.rstrip("/"), handle.id)
    return handle


def _previous_attempt(gw: Gateway, labels: dict[str, str]) -> Optional[Dispatch]:
    """This task's earlier dispatch in the same flow run that still runs or already succeeded.

    A task is the same across its retries and across a re-run of its flow run (after the process
    running it was killed, say) by (flow run, task key, task index); the task run id changes
    with a flow-run re-run, so it is not the key. Tasks started concurrently (`.submit()`, `.map()`)
    are indexed in the order they start, which a re-run may not repeat.
    """
    if not {"flow_run_id", "task_key", "task_index"} <= labels.keys():
        return None
    flow_ctx = FlowRunContext.get()
    rerun = flow_ctx is not None and flow_ctx.flow_run is not None and flow_ctx.flow_run.run_count > 1
    if labels.get("attempt") == "1" and not rerun:
        return None  # the first attempt in the first execution of the flow run: nothing to find
    same_task = {k: labels[k] for k in ("flow_run_id", "task_key", "task_index")}
    for handle in gw.dispatches(labels=same_task, limit=20):
        state = handle.data["state"]
        if state in ACTIVE_STATES or state == "succeeded":
            get_run_logger().info("Re-attaching to dispatch %s from attempt %s of this task (%s)", handle.id,
                                  handle.data["labels"].get("attempt"), state)
            return handle
    return None


def trigger(call: RemoteCall) -> str:
    creds = call.credentials_or_env()
    return _submit(call, creds.get_client(), creds).id


async def trigger_async(call: RemoteCall) -> str:
    return await _in_thread(trigger, call)


# -- wait ----------------------------------------------------------------------------------------------------


class _FlowRunWatch:
    """Reads the flow run's state between polls (the layer that reaches threads and plain runs)."""

    def __init__(self) -> None:
        labels = prefect_labels()
        self.flow_run_id = labels.get("flow_run_id")
        self._client: Any = None

    def stopping(self) -> Optional[str]:
        if self.flow_run_id is None:
            return None
        try:
            if self._client is None:
                from prefect.client.orchestration import get_client

                self._client = get_client(sync_client=True)
                self._client.__enter__()
            state = self._client.read_flow_run(self.flow_run_id).state
        except Exception:  # noqa: BLE001 - the API being briefly unreachable must not fail the task
            return None
        if state is not None and state.type.value in STOPPING_FLOW_STATES:
            return state.type.value
        return None

    def close(self) -> None:
        if self._client is not None:
            try:
                self._client.__exit__(None, None, None)
            except Exception:  # noqa: BLE001
                pass


def _wait(handle: Dispatch, call: RemoteCall, owns: bool) -> Any:
    logger = get_run_logger()
    follower = _follow_logs(handle, logger) if call.stream_logs else None
    watch = _FlowRunWatch()
    deadline = time.monotonic() + call.wait_timeout if call.wait_timeout is not None else None
    try:
        while True:
            data = handle.wait(timeout=call.poll_interval)
            if data["state"] in TERMINAL_STATES:
                break
            stopping = watch.stopping()
            if stopping is not None:
                if owns:
                    _cancel(handle, f"Prefect flow run {watch.flow_run_id} is {stopping.lower()}", logger)
                raise FlowRunCancelled(f"flow run {watch.flow_run_id} is {stopping.lower()}; dispatch {handle.id} "
                                       + ("was cancelled" if owns else "keeps running (cancel_on_kill is off)"))
            if deadline is not None and time.monotonic() >= deadline:
                if owns:
                    _cancel(handle, f"the Prefect wait gave up after {call.wait_timeout} s", logger)
                raise TimeoutError(f"dispatch {handle.id} did not end within {call.wait_timeout} s")
    except BaseException as err:
        # SIGTERM (Prefect's TerminationSignal), CancelledError, KeyboardInterrupt, a lost connection...:
        # never leave remote work running with nobody waiting on it.
        if owns and handle.data.get("state") not in TERMINAL_STATES:
            _cancel(handle, f"the Prefect task stopped waiting: {type(err).__name__}", logger)
        raise
    finally:
        watch.close()
        if follower is not None:
            follower.join(timeout=5)
    if data["state"] == "failed" and (data.get("failure") or {}).get("traceback"):
        logger.error("Remote traceback of dispatch %s:\n%s", handle.id, data["failure"]["traceback"].rstrip())
    return handle.result()


def _follow_logs(handle: Dispatch, logger: Any) -> threading.Thread:
    def copy() -> None:
        writer = RemoteLogWriter(logger)
        try:
            for entry in handle.logs(follow=True):
                writer.write(entry)
        except Exception as err:  # noqa: BLE001 - the result matters more than the copy of its output
            logger.warning("The log stream of dispatch %s broke (%s); waiting without it", handle.id, err)
        finally:
            writer.flush()

    thread = threading.Thread(target=copy, name=f"runhouse-logs-{handle.id}", daemon=True)
    thread.start()
    return thread


def _cancel(handle: Dispatch, reason: str, logger: Any) -> None:
    logger.warning("Cancelling dispatch %s: %s", handle.id, reason)
    try:
        handle.cancel(reason=reason)
    except Exception as err:  # noqa: BLE001 - the task is going down anyway; say so
        logger.error("Could not cancel dispatch %s: %s", handle.id, err)


def run(call: RemoteCall) -> Any:
    creds = call.credentials_or_env()
    gw = creds.get_client()
    handle = _submit(call, gw, creds)
    return _wait(handle, call, owns=True)


async def run_async(call: RemoteCall) -> Any:
    return await _in_thread(run, call)


def wait(call: RemoteCall) -> Any:
    if not call.dispatch_id:
        raise ValueError("wait_for_dispatch needs a dispatch id (from trigger_dispatch)")
    creds = call.credentials_or_env()
    handle = creds.get_client().dispatch(call.dispatch_id)
    call.handle = handle
    return _wait(handle, call, owns=call.cancel_on_kill)


async def wait_async(call: RemoteCall) -> Any:
    return await _in_thread(wait, call)


async def _in_thread(fn: Callable[[RemoteCall], Any], call: RemoteCall) -> Any:
    """Runs a blocking step in a thread that carries the Prefect run context. If the awaiting task is
    cancelled (``CancelledError``), a dispatch the step owns is cancelled; the thread then sees it end."""
    context = contextvars.copy_context()
    try:
        return await asyncio.to_thread(context.run, fn, call)
    except asyncio.CancelledError:
        owned = call.handle if (fn is not wait or call.cancel_on_kill) else None
        if owned is not None:
            _cancel(owned, "the Prefect task was cancelled (CancelledError)", get_run_logger())
        raise


# -- instances -----------------------------------------------------------------------------------------------


def instance(call: RemoteCall) -> str:
    """Constructs the instance (or attaches to the live one), copying the constructor's output into the log."""
    creds = call.credentials_or_env()
    gw = creds.get_client()
    cluster = call.cluster or creds.default_cluster
    if not cluster:
        raise ValueError("no cluster: pass cluster= or set the credentials' default_cluster")
    if call.cls is None or not call.name:
        raise ValueError("create_instance needs the class and name=")
    remote_class = gw.cls(call.cls, requirements=list(call.requirements or [])).to(cluster)
    created = remote_class.new(call.name, call.args, call.kwargs, max_concurrency=call.max_concurrency,
                               idle_stop_minutes=call.idle_stop_minutes, restart=call.restart, wait=False)
    logger = get_run_logger()
    constructor = created.data.get("constructor_id")
    logger.info("Instance %s of %s on cluster %s is %s (constructor dispatch %s)", created.name,
                created.data["class"], created.data["cluster"], created.data["state"], constructor)
    if constructor and created.data["state"] == "starting":
        handle = gw.dispatch(constructor)
        call.handle = handle
        _wait(handle, call, owns=True)
    created.wait_ready(echo=False)
    return created.name


async def instance_async(call: RemoteCall) -> str:
    return await _in_thread(instance, call)


# -- the flow-level backstop ---------------------------------------------------------------------------------


def cancel_flow_run_dispatches(flow: Any, flow_run: Any, state: Any,
                               credentials: Optional[RunhouseCredentials] = None) -> int:
    """A flow ``on_cancellation`` (and ``on_crashed``) hook: cancels every dispatch the flow run started
    that is still queued or running. Returns how many were cancelled.

        @flow(on_cancellation=[cancel_flow_run_dispatches], on_crashed=[cancel_flow_run_dispatches])
        def pipeline(): ...
    """
    creds = credentials if credentials is not None else RunhouseCredentials.from_env()
    gw = creds.get_client()
    cancelled = 0
    for handle in gw.dispatches(state=sorted(ACTIVE_STATES), labels={"flow_run_id": str(flow_run.id)}, limit=500):
        try:
            handle.cancel(reason=f"Prefect flow run {flow_run.id} ended {getattr(state, 'name', state)}")
            cancelled += 1
        except Exception:  # noqa: BLE001 - cancel the rest
            pass
    return cancelled

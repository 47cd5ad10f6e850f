"""RunhouseOperator: run one Python function on remote compute as an Airflow task.

The operator is the bridge users meet first, so it carries the lifecycle
promises: the dispatch is labelled with the task's identity, the remote
output streams into the task log live, the result becomes the task's XCom,
a retry re-attaches to the run it lost instead of starting a duplicate, and
a kill on either side stops the other (Airflow → cancel at the gateway;
gateway cancel → task fails without retry).
"""

from __future__ import annotations

import time
from datetime import timedelta
from urllib.parse import quote
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowException, AirflowTaskTimeout
from runhouse_gateway import Dispatch, GatewayError

from runhouse_provider._generated import InstanceOperatorParameters, OperatorParameters
from runhouse_provider.hooks import UsesRunhouseHook, cancel_within_budget
from runhouse_provider.links import (XCOM_ARTIFACTS_URL, XCOM_DISPATCH_URL, RunhouseArtifactsLink,
                                     RunhouseDispatchLink)
from runhouse_provider.outcomes import ACTIVE_STATES, TERMINAL_STATES, RemoteLogWriter, result_or_raise
from runhouse_provider.triggers import DEADLINE_PASSED, RunhouseTrigger

if TYPE_CHECKING:
    from airflow.sdk import Context

#: The task-state-store key under which a try records its dispatch, for the next try to find.
STATE_KEY = "runhouse_dispatch"
#: XCom key of the dispatch id.
XCOM_DISPATCH_ID = "dispatch_id"


def airflow_labels(context: Context) -> dict[str, str]:
    """The labels every dispatch of a task carries, so it can be found from either side."""
    ti = context["ti"]
    return {
        "dag_id": ti.dag_id,
        "task_id": ti.task_id,
        "run_id": ti.run_id,
        "map_index": str(ti.map_index if ti.map_index is not None else -1),
        "try_number": str(ti.try_number),
    }


# The generated parameters come second: Airflow applies default_args only to an __init__ that
# differs from the first base's, and this class's __init__ is the generated one.
class RunhouseOperator(UsesRunhouseHook, OperatorParameters, BaseOperator):
    __doc__ = "Runs a Python function on a Runhouse Gateway cluster and returns its JSON result.\n" + (
        OperatorParameters.__doc__ or "").split("\n", 1)[1]

    template_fields_renderers = {"op_args": "json", "op_kwargs": "json", "labels": "json"}
    ui_color = "#e8f0fe"
    operator_extra_links = (RunhouseDispatchLink(), RunhouseArtifactsLink())

    def _check_parameters(self) -> None:
        given = [n for n in ("function", "python_callable", "instance") if getattr(self, n) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of function= (a registered name), python_callable=, "
                             "or instance= with method=")
        if (self.instance is None) != (self.method is None):
            raise ValueError("instance= and method= go together: the method of that instance is called")
        if self.instance is not None and (self.cluster is not None or self.requirements):
            raise ValueError("a method call runs where its instance lives: no cluster= or requirements=")
        if self.python_callable is not None and not callable(self.python_callable):
            raise ValueError("python_callable must be callable")
        op_args, op_kwargs = self.op_args, self.op_kwargs
        self.op_args = list(op_args or []) if not _is_lazy(op_args) else op_args
        self.op_kwargs = dict(op_kwargs or {}) if not _is_lazy(op_kwargs) else op_kwargs
        self.requirements = list(self.requirements or [])
        self.labels = dict(self.labels or {})
        self._handle: Dispatch | None = None
        self._killed = False

    def execute(self, context: Context) -> Any:
        """Starts (or re-attaches to) the dispatch, then waits for it unless told not to."""
        handle = self._resume_or_submit(context)
        self._handle = handle
        ti = context["ti"]
        ti.xcom_push(key=XCOM_DISPATCH_ID, value=handle.id)
        ti.xcom_push(key=XCOM_DISPATCH_URL, value=self.hook.dispatch_url(handle.id))
        if not self.wait_for_completion:
            self.log.info("Not waiting (wait_for_completion=False); dispatch %s is %s", handle.id,
                          handle.data["state"])
            return handle.id
        if self.deferrable and handle.data["state"] not in TERMINAL_STATES:
            self.defer(
                trigger=RunhouseTrigger(
                    dispatch_id=handle.id,
                    runhouse_conn_id=self.runhouse_conn_id,
                    poll_interval=self.poll_interval,
                    deadline=self._deadline(context),
                    owns_dispatch=True,
                    stream_logs=self.stream_logs,
                ),
                method_name="execute_complete",
            )
        return self._finish(context, self._wait(handle))

    def execute_complete(self, context: Context, event: dict[str, Any]) -> Any:
        """Back from the triggerer: turn the dispatch's end into the task's end."""
        dispatch_id = event["dispatch_id"]
        if event["status"] == DEADLINE_PASSED:
            raise AirflowTaskTimeout(f"execution_timeout passed while deferred; dispatch {dispatch_id} was cancelled")
        handle = self.hook.get_dispatch(dispatch_id)
        self._handle = handle
        return self._finish(context, handle.data)

    def on_kill(self) -> None:
        """Airflow is stopping the task (mark failed/success, execution_timeout, worker SIGTERM): cancel.

        Runs in the SIGTERM handler with SIGKILL 5 s away, so the cancel gets at most
        ``hooks.CANCEL_BUDGET_S``; the wait loop sees the dispatch end and returns by itself.
        """
        handle = self._handle
        if handle is None:
            return
        self._killed = True
        self._cancel_within_budget(handle, f"Airflow stopped task {self._task_ref()}")

    # -- internals ---------------------------------------------------------------------------------------

    def _resume_or_submit(self, context: Context) -> Dispatch:
        store = context.get("task_state_store") if self.durable else None
        record = store.get(STATE_KEY) if store is not None else None
        if isinstance(record, dict) and record.get("dispatch_id"):
            previous = self._previous(record["dispatch_id"])
            if previous is not None:
                state = previous.data["state"]
                if state in ACTIVE_STATES:
                    self.log.info("Re-attaching to dispatch %s from try %s (still %s)", previous.id,
                                  record.get("try_number"), state)
                    return previous
                if state == "succeeded":
                    self.log.info("Dispatch %s from try %s already succeeded; returning its result without "
                                  "re-running", previous.id, record.get("try_number"))
                    return previous
                self.log.info("Dispatch %s from try %s ended %s; starting a new one", previous.id,
                              record.get("try_number"), state)
        if self.instance is not None:
            remote = self.hook.get_conn().method(self.instance, self.method)
        else:
            remote = self.hook.remote_function(function=self.function, python_callable=self.python_callable,
                                               cluster=self.cluster, requirements=self.requirements)
        labels = {**self.labels, **airflow_labels(context)}
        handle = remote.submit(list(self.op_args), dict(self.op_kwargs), labels=labels,
                               idempotency_key=self._idempotency_key(context), request=self.create_fields())
        if store is not None:
            store.set(STATE_KEY, {"dispatch_id": handle.id, "try_number": context["ti"].try_number})
        self.log.info("Dispatch %s created on cluster %s: %s", handle.id, handle.data.get("cluster"),
                      self.hook.dispatch_url(handle.id))
        return handle

    def _previous(self, dispatch_id: str) -> Dispatch | None:
        try:
            return self.hook.get_dispatch(dispatch_id)
        except GatewayError as err:
            if err.status == 404:
                self.log.warning("Recorded dispatch %s is gone from the gateway; starting a new one", dispatch_id)
                return None
            raise

    @staticmethod
    def _idempotency_key(context: Context) -> str:
        # Unique per try (a retry never gets the previous try's dispatch back) and per task-instance row
        # (a deleted and re-created DAG run with the same run_id does not either).
        ti = context["ti"]
        return f"airflow:{ti.id}:{ti.try_number}"

    def _deadline(self, context: Context) -> float | None:
        if self.execution_timeout is None:
            return None
        start = getattr(context["ti"], "start_date", None)
        started = start.timestamp() if start is not None else time.time()
        timeout = self.execution_timeout
        seconds = timeout.total_seconds() if isinstance(timeout, timedelta) else float(timeout)
        return started + seconds

    def _wait(self, handle: Dispatch) -> dict[str, Any]:
        """Streams the output until the dispatch ends; returns it. Cancels if the wait is interrupted."""
        try:
            if self.stream_logs:
                writer = RemoteLogWriter(self.log)
                try:
                    for entry in handle.logs(follow=True):
                        writer.write(entry)
                except (GatewayError, ConnectionError) as err:
                    self.log.warning("The log stream of dispatch %s broke (%s); waiting without it", handle.id, err)
                finally:
                    writer.flush()
            return handle.wait()
        except BaseException as err:
            # execution_timeout (AirflowTaskTimeout), SIGINT, a lost connection...: do not leave the
            # remote run going with nobody waiting on it.
            if handle.data.get("state") not in TERMINAL_STATES and not self._killed:
                self._cancel_within_budget(handle, f"Airflow task {self._task_ref()} stopped waiting: "
                                                   f"{type(err).__name__}")
            raise

    def _finish(self, context: Context, data: dict[str, Any]) -> Any:
        if self._killed and data["state"] == "cancelled":
            raise AirflowException(f"dispatch {data['id']} cancelled because Airflow stopped the task")
        self._name_artifacts(context, data)
        result = result_or_raise(data, self.log)
        store = context.get("task_state_store") if self.durable else None
        if store is not None:
            # The try succeeded in Airflow: a later try of this task (a clear) must start afresh.
            store.delete(STATE_KEY)
        return result

    def _cancel_within_budget(self, handle: Dispatch, reason: str) -> None:
        cancel_within_budget(handle, reason, self.log)

    def _name_artifacts(self, context: Context, data: dict[str, Any]) -> None:
        """Names the files the call kept in the task log, and links them from the task."""
        if data["state"] not in ("succeeded", "failed"):
            return
        try:
            artifacts = self.hook.get_dispatch(data["id"]).artifacts()
        except GatewayError as err:
            self.log.warning("cannot list the artifacts of dispatch %s: %s", data["id"], err)
            return
        if not artifacts:
            return
        page = self.hook.dispatch_url(data["id"])
        context["ti"].xcom_push(key=XCOM_ARTIFACTS_URL, value=f"{page}#artifacts")
        for artifact in artifacts:
            self.log.info("artifact %s (%d bytes, %s): %s/%s", artifact["path"], artifact["size_bytes"],
                          artifact["content_type"], f"{page}/artifacts", quote(artifact["path"], safe=""))
        self.log.info("download them with: rh artifacts get %s", data["id"])

    def _task_ref(self) -> str:
        return f"{self.dag_id}.{self.task_id}"


class RunhouseInstanceOperator(UsesRunhouseHook, InstanceOperatorParameters, BaseOperator):
    __doc__ = ("Constructs a class once on a Runhouse Gateway cluster as a named instance, or attaches to the "
               "live one of that name, for `RunhouseOperator(instance=..., method=...)` tasks of this and other "
               "DAGs. Returns the instance's name (the task's XCom).\n"
               + (InstanceOperatorParameters.__doc__ or "").split("\n", 1)[1])

    template_fields_renderers = {"op_args": "json", "op_kwargs": "json"}
    ui_color = "#e6f4ea"

    def _check_parameters(self) -> None:
        if self.cls is None:
            raise ValueError("cls= is the class to construct (a class or 'module:Qualname')")
        op_args, op_kwargs = self.op_args, self.op_kwargs
        self.op_args = list(op_args or []) if not _is_lazy(op_args) else op_args
        self.op_kwargs = dict(op_kwargs or {}) if not _is_lazy(op_kwargs) else op_kwargs
        self.requirements = list(self.requirements or [])
        self._constructor: Dispatch | None = None

    def execute(self, context: Context) -> str:
        remote = self.hook.remote_class(cls=self.cls, cluster=self.cluster, requirements=self.requirements)
        created = remote.new(self.instance, list(self.op_args), dict(self.op_kwargs),
                             max_concurrency=self.max_concurrency, idle_stop_minutes=self.idle_stop_minutes,
                             restart=self.restart, wait=False)
        data = created.data
        constructor = data.get("constructor_id")
        self.log.info("Instance %s of %s on cluster %s is %s (constructor dispatch %s)", created.name,
                      data["class"], data["cluster"], data["state"], constructor)
        if constructor and data["state"] == "starting":
            handle = self.hook.get_dispatch(constructor)
            self._constructor = handle
            if self.stream_logs:
                writer = RemoteLogWriter(self.log)
                try:
                    for entry in handle.logs(follow=True):
                        writer.write(entry)
                finally:
                    writer.flush()
            handle.wait()
        created.wait_ready(echo=False)
        return created.name

    def on_kill(self) -> None:
        """Airflow is stopping the task while the constructor runs: cancel it (the instance fails)."""
        if self._constructor is not None:
            cancel_within_budget(self._constructor, f"Airflow stopped task {self.dag_id}.{self.task_id}", self.log)


def _is_lazy(value: Any) -> bool:
    """XComArgs and templates resolve later; keep them as given."""
    return value is not None and not isinstance(value, (list, tuple, dict))

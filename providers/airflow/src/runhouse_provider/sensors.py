"""RunhouseSensor: wait in a DAG for a dispatch that something else started.

Typically the dispatch comes from a RunhouseOperator with
``wait_for_completion=False`` (fire and forget), so the waiting can be done
cheaply: in ``reschedule`` mode between pokes, or deferred in the triggerer
on the gateway's long-poll.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseSensorOperator, PokeReturnValue, conf
from airflow.sdk.exceptions import AirflowSensorTimeout
from runhouse_gateway import Dispatch

from runhouse_provider.hooks import RunhouseHook, UsesRunhouseHook
from runhouse_provider.links import XCOM_DISPATCH_URL, RunhouseDispatchLink
from runhouse_provider.outcomes import TERMINAL_STATES, RemoteLogWriter, result_or_raise
from runhouse_provider.triggers import DEADLINE_PASSED, RunhouseTrigger

if TYPE_CHECKING:
    from airflow.sdk import Context


class RunhouseSensor(UsesRunhouseHook, BaseSensorOperator):
    """Waits until the dispatch ``dispatch_id`` ends; its JSON result becomes the sensor's return XCom.

    A failed dispatch fails the sensor (retries apply); a cancelled one raises ``AirflowFailException``.
    The sensor never cancels the dispatch: it watches, it does not own.

    :param dispatch_id: the dispatch to wait on. Templated, e.g.
        ``"{{ ti.xcom_pull(task_ids='train', key='dispatch_id') }}"``.
    :param deferrable: wait in the triggerer (long-polling the gateway) instead of poking.
    :param stream_logs: copy the dispatch's output into the sensor's log (live when deferred, at the end
        when poking).
    :param runhouse_conn_id: the ``runhouse`` connection.

    ``mode`` (``poke``/``reschedule``), ``poke_interval`` and ``timeout`` work as for any sensor; when
    deferred, ``poke_interval`` is the longest single long-poll.
    """

    template_fields: Sequence[str] = ("dispatch_id",)
    ui_color = "#e8f0fe"
    operator_extra_links = (RunhouseDispatchLink(),)

    def __init__(self, *, dispatch_id: str, runhouse_conn_id: str = RunhouseHook.default_conn_name,
                 deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
                 stream_logs: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.dispatch_id = dispatch_id
        self.runhouse_conn_id = runhouse_conn_id
        self.deferrable = deferrable
        self.stream_logs = stream_logs

    def execute(self, context: Context) -> Any:
        """Pokes as usual, or checks once and then defers to the trigger."""
        if not self.dispatch_id:
            raise ValueError("dispatch_id rendered empty: is the upstream task's dispatch_id XCom there?")
        context["ti"].xcom_push(key=XCOM_DISPATCH_URL, value=self.hook.dispatch_url(self.dispatch_id))
        if not self.deferrable:
            return super().execute(context)
        handle = self.hook.get_dispatch(self.dispatch_id)
        if handle.data["state"] in TERMINAL_STATES:
            return self._outcome(handle)
        deadline = time.time() + float(self.timeout) if self.timeout else None
        self.defer(
            trigger=RunhouseTrigger(dispatch_id=self.dispatch_id, runhouse_conn_id=self.runhouse_conn_id,
                                    poll_interval=float(self.poke_interval), deadline=deadline,
                                    owns_dispatch=False, stream_logs=self.stream_logs),
            method_name="execute_complete",
        )

    def poke(self, context: Context) -> bool | PokeReturnValue:
        """One look at the dispatch: not done yet, its result, or the exception its end calls for."""
        handle = self.hook.get_dispatch(self.dispatch_id)
        state = handle.data["state"]
        if state not in TERMINAL_STATES:
            self.log.info("Dispatch %s is %s", self.dispatch_id, state)
            return False
        return PokeReturnValue(is_done=True, xcom_value=self._outcome(handle))

    def execute_complete(self, context: Context, event: dict[str, Any]) -> Any:
        """Back from the triggerer."""
        if event["status"] == DEADLINE_PASSED:
            raise AirflowSensorTimeout(f"dispatch {self.dispatch_id} did not end within the sensor's timeout")
        return result_or_raise(self.hook.get_dispatch(event["dispatch_id"]).data, self.log)

    def _outcome(self, handle: Dispatch) -> Any:
        """The result of an ended dispatch (its output copied into the log first), or its exception."""
        if self.stream_logs:
            writer = RemoteLogWriter(self.log)
            for entry in handle.logs():
                writer.write(entry)
            writer.flush()
        return result_or_raise(handle.data, self.log)

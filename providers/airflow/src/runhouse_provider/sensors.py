"""RunhouseSensor: wait in a DAG for a dispatch that something else started.

Typically the dispatch comes from a RunhouseOperator with
``wait_for_completion=False`` (fire and forget), so the waiting can be done
cheaply: in ``reschedule`` mode between pokes, or deferred in the triggerer
on the gateway's long-poll.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseSensorOperator, PokeReturnValue
from airflow.sdk.exceptions import AirflowSensorTimeout
from runhouse_gateway import Dispatch

from runhouse_provider._generated import SensorParameters
from runhouse_provider.hooks import UsesRunhouseHook, cancel_within_budget
from runhouse_provider.links import XCOM_DISPATCH_URL, RunhouseDispatchLink
from runhouse_provider.outcomes import TERMINAL_STATES, RemoteLogWriter, result_or_raise
from runhouse_provider.triggers import DEADLINE_PASSED, RunhouseTrigger

if TYPE_CHECKING:
    from airflow.sdk import Context


# The generated parameters come second: Airflow applies default_args only to an __init__ that
# differs from the first base's, and this class's __init__ is the generated one.
class RunhouseSensor(UsesRunhouseHook, SensorParameters, BaseSensorOperator):
    __doc__ = (
        "Waits until the dispatch ``dispatch_id`` ends; its JSON result becomes the sensor's return XCom.\n\n"
        "    A failed dispatch fails the sensor (retries apply); a cancelled one raises ``AirflowFailException``.\n"
        "    ``mode`` (``poke``/``reschedule``), ``poke_interval`` and ``timeout`` work as for any sensor; when\n"
        "    deferred, ``poke_interval`` is the longest single long-poll.\n"
        + (SensorParameters.__doc__ or "").split("\n", 1)[1]
    )

    ui_color = "#e8f0fe"
    operator_extra_links = (RunhouseDispatchLink(),)

    def _check_parameters(self) -> None:
        self._killed = False

    def on_kill(self) -> None:
        """The sensor is being stopped while poking: with ``cancel_on_kill``, stop the watched dispatch too."""
        if not self.cancel_on_kill or not self.dispatch_id:
            return
        self._killed = True
        cancel_within_budget(self.hook.get_dispatch(self.dispatch_id), f"Airflow stopped sensor "
                             f"{self.dag_id}.{self.task_id} (cancel_on_kill)", self.log)

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
                                    owns_dispatch=self.cancel_on_kill, stream_logs=self.stream_logs),
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

"""Waits on a dispatch in Airflow's triggerer, so a deferred task holds no worker slot.

It long-polls the gateway (one open request per ``poll_interval``, answered
at once when the dispatch ends), copies the remote output into the task log
between polls, enforces the task's ``execution_timeout`` (which Airflow does
not enforce while a task is deferred), and cancels the dispatch from
``on_kill`` when a user marks the task failed or success or clears it. It
never cancels from ``cleanup()``: that also runs when the triggerer merely
hands the trigger to another triggerer.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, AsyncIterator

from airflow.triggers.base import BaseTrigger, TriggerEvent

from runhouse_provider.hooks import RunhouseHook
from runhouse_provider.outcomes import TERMINAL_STATES, RemoteLogWriter

#: ``TriggerEvent`` status when the deadline passed before the dispatch ended.
DEADLINE_PASSED = "deadline_passed"


class RunhouseTrigger(BaseTrigger):
    """Fires once the dispatch ``dispatch_id`` is terminal, or once ``deadline`` (a UNIX time) passes.

    :param dispatch_id: the dispatch to wait on.
    :param runhouse_conn_id: the ``runhouse`` connection.
    :param poll_interval: longest single long-poll, in seconds; also how often output is copied.
    :param deadline: UNIX time after which it stops waiting (and cancels, if it owns the dispatch).
    :param owns_dispatch: True when the deferred task started the dispatch: killing the task (or its
        deadline) then cancels it. A sensor watching someone else's dispatch passes False.
    :param stream_logs: copy the remote output into the task log.
    :param log_offset: the ``seq`` of the last output entry already in the task log.
    """

    def __init__(self, dispatch_id: str, runhouse_conn_id: str = RunhouseHook.default_conn_name,
                 poll_interval: float = 5.0, deadline: float | None = None, owns_dispatch: bool = True,
                 stream_logs: bool = True, log_offset: int = 0) -> None:
        super().__init__()
        self.dispatch_id = dispatch_id
        self.runhouse_conn_id = runhouse_conn_id
        self.poll_interval = poll_interval
        self.deadline = deadline
        self.owns_dispatch = owns_dispatch
        self.stream_logs = stream_logs
        self.log_offset = log_offset

    def serialize(self) -> tuple[str, dict[str, Any]]:
        """The class path and the arguments that rebuild this trigger in the triggerer."""
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "dispatch_id": self.dispatch_id,
                "runhouse_conn_id": self.runhouse_conn_id,
                "poll_interval": self.poll_interval,
                "deadline": self.deadline,
                "owns_dispatch": self.owns_dispatch,
                "stream_logs": self.stream_logs,
                "log_offset": self.log_offset,
            },
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        """Long-polls until the dispatch ends or the deadline passes; yields exactly one event."""
        gw = await RunhouseHook(self.runhouse_conn_id).aget_conn()
        handle = await asyncio.to_thread(gw.dispatch, self.dispatch_id)
        writer = RemoteLogWriter(self.log)
        writer.last_seq = self.log_offset
        self.log.info("Waiting on dispatch %s (long-poll, up to %s s per request)", self.dispatch_id,
                      self.poll_interval)
        while True:
            timeout = self.poll_interval
            if self.deadline is not None:
                timeout = max(0.0, min(timeout, self.deadline - time.time()))
            if timeout >= 1:
                data = await asyncio.to_thread(handle.wait, timeout)
            else:
                await asyncio.sleep(timeout)
                data = await asyncio.to_thread(_refresh, handle)
            if self.stream_logs:
                await asyncio.to_thread(_copy_logs, handle, writer)
            if data["state"] in TERMINAL_STATES:
                writer.flush()
                yield TriggerEvent({"status": data["state"], "dispatch_id": self.dispatch_id})
                return
            if self.deadline is not None and time.time() >= self.deadline:
                writer.flush()
                if self.owns_dispatch:
                    self.log.error("Deadline passed; cancelling dispatch %s", self.dispatch_id)
                    await asyncio.to_thread(handle.cancel, "Airflow: execution_timeout passed while deferred")
                yield TriggerEvent({"status": DEADLINE_PASSED, "dispatch_id": self.dispatch_id})
                return

    async def on_kill(self) -> None:
        """A user marked the deferred task failed or success, or cleared it: stop the remote run."""
        if not self.owns_dispatch:
            return
        gw = await RunhouseHook(self.runhouse_conn_id).aget_conn()
        handle = await asyncio.to_thread(gw.dispatch, self.dispatch_id)
        self.log.warning("Task killed while deferred; cancelling dispatch %s", self.dispatch_id)
        await asyncio.to_thread(handle.cancel, "Airflow: the deferred task was marked failed/success or cleared")


def _refresh(handle: Any) -> dict[str, Any]:
    handle.status()
    return handle.data


def _copy_logs(handle: Any, writer: RemoteLogWriter) -> None:
    for entry in handle.logs(offset=writer.last_seq):
        writer.write(entry)

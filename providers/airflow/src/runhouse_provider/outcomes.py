"""How a dispatch's end becomes an Airflow task's end, and its output a task log.

The operator (sync and deferred) and the sensor must agree exactly on which
outcomes retry, which fail for good and what the log says, so that mapping
lives here once.
"""

from __future__ import annotations

import logging
from typing import Any

from airflow.sdk.exceptions import AirflowException, AirflowFailException

#: States a dispatch can still leave by itself; a retry re-attaches to these.
ACTIVE_STATES = frozenset({"queued", "running"})
#: States that never change.
TERMINAL_STATES = frozenset({"succeeded", "failed", "cancelled", "timed_out"})


class RemoteFailure(AirflowException):
    """The remote call failed (an exception in the user's code, a crashed worker, a lost node...).

    An ordinary task failure: the task's retries apply.
    """

    def __init__(self, dispatch_id: str, code: str, message: str, remote_type: str | None = None,
                 remote_traceback: str | None = None) -> None:
        what = f"{remote_type}: {message}" if remote_type else f"{code}: {message}"
        super().__init__(f"dispatch {dispatch_id} failed: {what}")
        self.dispatch_id = dispatch_id
        self.code = code
        self.remote_type = remote_type
        self.remote_traceback = remote_traceback


class RemoteTimeout(AirflowException):
    """The dispatch ran past its ``timeout`` and the node stopped it. Retries apply."""


class DispatchCancelledAtGateway(AirflowFailException):
    """Someone cancelled the dispatch at the gateway (REST, CLI, another user): fail without retrying."""

    def __init__(self, dispatch_id: str, by: str, reason: str | None) -> None:
        super().__init__(
            f"dispatch {dispatch_id} was cancelled at the gateway by {by}" + (f": {reason}" if reason else "")
            + " (not retried: a cancel is a decision, not a fault)"
        )
        self.dispatch_id = dispatch_id
        self.by = by
        self.reason = reason


def result_or_raise(data: dict[str, Any], log: logging.Logger | Any) -> Any:
    """The result of a terminal dispatch, or the Airflow exception its end calls for."""
    dispatch_id, state = data["id"], data["state"]
    if state == "succeeded":
        return data.get("result")
    failure = data.get("failure") or {}
    if state == "failed":
        code = failure.get("code", "failed")
        if failure.get("traceback"):
            log.error("Remote traceback of dispatch %s:\n%s", dispatch_id, failure["traceback"].rstrip())
        raise RemoteFailure(dispatch_id, code, failure.get("message", ""), failure.get("remote_type"),
                            failure.get("traceback"))
    if state == "cancelled":
        cancellation = data.get("cancellation") or {}
        raise DispatchCancelledAtGateway(dispatch_id, cancellation.get("by", "unknown"), cancellation.get("reason"))
    if state == "timed_out":
        raise RemoteTimeout(f"dispatch {dispatch_id} timed out: {failure.get('message', '')}")
    raise AirflowException(f"dispatch {dispatch_id} is still {state}")


class RemoteLogWriter:
    """Turns the gateway's output chunks into one task-log line per remote line, as they arrive."""

    def __init__(self, log: logging.Logger | Any) -> None:
        self._log = log
        self._partial: dict[str, str] = {}
        #: The ``seq`` of the last entry written (to read on from after a reconnect).
        self.last_seq = 0

    def write(self, entry: dict[str, Any]) -> None:
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

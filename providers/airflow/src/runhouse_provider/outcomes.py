"""How a dispatch's end becomes an Airflow task's end.

The operator (sync and deferred) and the sensor must agree exactly on which
outcomes retry, which fail for good and what the log says, so that mapping
lives here once.
"""

from __future__ import annotations

import logging
from typing import Any

from airflow.sdk.exceptions import AirflowException, AirflowFailException
from runhouse_gateway import ACTIVE_STATES, TERMINAL_STATES, RemoteLogWriter

__all__ = ["ACTIVE_STATES", "TERMINAL_STATES", "RemoteLogWriter", "result_or_raise", "RemoteFailure", "RemoteTimeout",
           "DispatchCancelledAtGateway"]


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

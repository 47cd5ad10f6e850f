"""The "Runhouse dispatch" button on a task: opens the task's dispatch on the gateway.

The operator stores the dispatch's address in XCom when the gateway accepts
it, so the link works while the task still runs and after it ends.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperatorLink

if TYPE_CHECKING:
    from airflow.sdk import BaseOperator
    from airflow.sdk.types import TaskInstanceKey

#: XCom key holding the dispatch's address.
XCOM_DISPATCH_URL = "runhouse_dispatch_url"


class RunhouseDispatchLink(BaseOperatorLink):
    """Links a RunhouseOperator or RunhouseSensor task to its dispatch on the gateway."""

    name = "Runhouse dispatch"

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        """The address stored by the task, or an empty string before it has one."""
        from airflow.sdk.execution_time.xcom import XCom

        url: Any = XCom.get_value(ti_key=ti_key, key=XCOM_DISPATCH_URL)
        return str(url) if url else ""

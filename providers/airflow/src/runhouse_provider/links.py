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
#: XCom key holding the address of the dispatch's artifact list, once it kept files.
XCOM_ARTIFACTS_URL = "runhouse_artifacts_url"


class RunhouseDispatchLink(BaseOperatorLink):
    """Links a RunhouseOperator or RunhouseSensor task to its dispatch on the gateway."""

    name = "Runhouse dispatch"

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        """The address stored by the task, or an empty string before it has one."""
        from airflow.sdk.execution_time.xcom import XCom

        url: Any = XCom.get_value(ti_key=ti_key, key=XCOM_DISPATCH_URL)
        return str(url) if url else ""


class RunhouseArtifactsLink(BaseOperatorLink):
    """Links a RunhouseOperator task to the files its dispatch kept (empty until it kept some)."""

    name = "Runhouse artifacts"

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        """The address stored by the task, or an empty string if its call kept no files."""
        from airflow.sdk.execution_time.xcom import XCom

        url: Any = XCom.get_value(ti_key=ti_key, key=XCOM_ARTIFACTS_URL)
        return str(url) if url else ""

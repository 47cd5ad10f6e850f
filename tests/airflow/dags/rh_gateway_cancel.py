"""A long remote sleep with retries, for the test that cancels it at the gateway."""

from datetime import datetime, timedelta

import remote_jobs
from airflow.sdk import DAG

from runhouse_provider.operators import RunhouseOperator

with DAG("rh_gateway_cancel", schedule=None, start_date=datetime(2026, 1, 1), catchup=False):
    RunhouseOperator(task_id="sleep", python_callable=remote_jobs.sleepy, op_args=[600], retries=2,
                     retry_delay=timedelta(seconds=0))

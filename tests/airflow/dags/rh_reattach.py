"""A sync remote call with one retry, for the test that kills the task process mid-wait."""

from datetime import datetime, timedelta

import remote_jobs
from airflow.sdk import DAG

from runhouse_provider.operators import RunhouseOperator

with DAG("rh_reattach", schedule=None, start_date=datetime(2026, 1, 1), catchup=False):
    RunhouseOperator(task_id="wait", python_callable=remote_jobs.wait_for,
                     op_args=["{{ dag_run.conf['release'] }}"], retries=1, retry_delay=timedelta(seconds=0))

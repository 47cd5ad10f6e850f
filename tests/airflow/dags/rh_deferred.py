"""A deferred remote sleep, for the test that marks it failed through Airflow's REST API."""

from datetime import datetime

import remote_jobs
from airflow.sdk import DAG

from runhouse_provider.operators import RunhouseOperator

with DAG("rh_deferred", schedule=None, start_date=datetime(2026, 1, 1), catchup=False):
    RunhouseOperator(task_id="sleep", python_callable=remote_jobs.sleepy, op_args=[600], deferrable=True,
                     poll_interval=2)

"""A long remote sleep in a sync task, for the test that SIGTERMs the Airflow process."""

from datetime import datetime

import remote_jobs
from airflow.sdk import DAG

from runhouse_provider.operators import RunhouseOperator

with DAG("rh_sigterm", schedule=None, start_date=datetime(2026, 1, 1), catchup=False):
    RunhouseOperator(task_id="sleep", python_callable=remote_jobs.sleepy, op_args=[600])

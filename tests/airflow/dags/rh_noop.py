"""A no-op remote task and the same function as a PythonOperator, to compare their overhead."""

from datetime import datetime

import remote_jobs
from airflow.providers.standard.operators.python import PythonOperator
from airflow.sdk import DAG

from runhouse_provider.operators import RunhouseOperator

with DAG("rh_noop", schedule=None, start_date=datetime(2026, 1, 1), catchup=False):
    RunhouseOperator(task_id="remote_noop", python_callable=remote_jobs.noop)
    PythonOperator(task_id="local_noop", python_callable=remote_jobs.noop)

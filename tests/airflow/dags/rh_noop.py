"""A no-op remote task and the same function as a PythonOperator, to compare their overhead."""

from datetime import datetime

import remote_jobs
from airflow.providers.standard.operators.python import PythonOperator
from airflow.sdk import DAG

from runhouse_provider.operators import RunhouseOperator

with DAG("rh_noop", schedule=None, start_date=datetime(2026, 1, 1), catchup=False):
    # The first task of an `airflow dags test` run pays Airflow's one-off start-up (about 5 s here),
    # so a warm-up task goes first and the two measured tasks run after it, one at a time.
    warm_up = PythonOperator(task_id="warm_up", python_callable=remote_jobs.noop)
    remote = RunhouseOperator(task_id="remote_noop", python_callable=remote_jobs.noop)
    local = PythonOperator(task_id="local_noop", python_callable=remote_jobs.noop)
    warm_up >> remote >> local

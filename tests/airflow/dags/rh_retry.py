"""A remote call that fails on its first try and succeeds on the retry."""

from datetime import datetime, timedelta

import remote_jobs
from airflow.sdk import DAG

from runhouse_provider.operators import RunhouseOperator

with DAG("rh_retry", schedule=None, start_date=datetime(2026, 1, 1), catchup=False):
    RunhouseOperator(task_id="flaky", python_callable=remote_jobs.fail_on_first_call,
                     op_kwargs={"marker": "{{ dag_run.conf['marker'] }}"}, retries=1,
                     retry_delay=timedelta(seconds=0))

"""Fire and forget, then a deferred sensor that owns the watched run (cancel_on_kill), for the test that
marks the sensor failed through Airflow's REST API."""

from datetime import datetime

import remote_jobs
from airflow.sdk import DAG

from runhouse_provider.operators import RunhouseOperator
from runhouse_provider.sensors import RunhouseSensor

with DAG("rh_sense_cancel", schedule=None, start_date=datetime(2026, 1, 1), catchup=False):
    start = RunhouseOperator(task_id="start", python_callable=remote_jobs.sleepy, op_args=[600],
                             wait_for_completion=False)
    RunhouseSensor(task_id="sense", dispatch_id=start.output, deferrable=True, cancel_on_kill=True,
                   poke_interval=2)

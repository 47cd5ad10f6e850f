"""Fire and forget, then sense: start a remote call without holding a worker, and wait in the triggerer.

`start` returns as soon as the gateway accepts the dispatch (its id is the
task's XCom); `wait` defers on the gateway's long-poll and returns the
function's result.
"""

from datetime import datetime

import iris_steps
from airflow.sdk import DAG

from runhouse_provider.operators import RunhouseOperator
from runhouse_provider.sensors import RunhouseSensor

with DAG("trigger_and_sense", schedule=None, start_date=datetime(2026, 1, 1), catchup=False, tags=["runhouse"]):
    start = RunhouseOperator(task_id="start", python_callable=iris_steps.sweep, cluster="cpu",
                             requirements=["scikit-learn"], op_kwargs={"C_values": [0.01, 0.1, 1.0, 10.0, 100.0]},
                             wait_for_completion=False)
    wait = RunhouseSensor(task_id="wait", dispatch_id=start.output, deferrable=True, poke_interval=5)
    start >> wait

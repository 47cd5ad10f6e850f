"""What a remote no-op costs over running the same function in a PythonOperator.

Both tasks sit in one DAG (rh_noop), after a warm-up task that absorbs
Airflow's one-off start-up, and run under `airflow dags test`; each task's
duration is Airflow's own (end_date - start_date of its task instance). Set RH_AIRFLOW_TIMING_RUNS to repeat the run and print medians.
"""

from __future__ import annotations

import os
import statistics
from datetime import datetime

from conftest import TEST_DAGS


def _durations(airflow) -> dict[str, float]:
    rows = airflow.query(
        "select task_id, start_date, end_date from task_instance where dag_id = 'rh_noop' and run_id = ?",
        airflow.latest_run_id("rh_noop"))
    return {task: (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()
            for task, start, end in rows}


def test_a_remote_noop_task_succeeds_and_its_overhead_is_measured(airflow, gw):
    runs = []
    for _ in range(int(os.environ.get("RH_AIRFLOW_TIMING_RUNS", "1"))):
        result = airflow.dags_test("rh_noop", TEST_DAGS)
        assert airflow.task_states("rh_noop") == {t: ("success", 1) for t in ("warm_up", "remote_noop", "local_noop")}, \
            result.stdout[-5000:]
        runs.append(_durations(airflow))
    assert airflow.xcom("rh_noop", "remote_noop") is None
    remote = statistics.median(r["remote_noop"] for r in runs)
    local = statistics.median(r["local_noop"] for r in runs)
    print(f"\nno-op task under `airflow dags test`, median of {len(runs)}: RunhouseOperator {remote * 1000:.0f} ms, "
          f"PythonOperator {local * 1000:.0f} ms")

"""Cancellation both ways and retries, through `airflow dags test` against the live stack."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from typing import Any

from conftest import TEST_DAGS


def _running_dispatch(gw: Any, dag_id: str, process: subprocess.Popen, timeout: float = 60) -> Any:
    """The newest running dispatch of ``dag_id``, once it exists and has printed its pid."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert process.poll() is None, process.log_path.read_text()[-5000:]
        for handle in gw.dispatches(state="running", labels={"dag_id": dag_id}, limit=1):
            pid = next((e["text"].split()[1] for e in handle.logs() if e["text"].startswith("pid ")), None)
            if pid:
                return handle, int(pid)
        time.sleep(0.1)
    raise AssertionError(f"no running dispatch for {dag_id}: {process.log_path.read_text()[-5000:]}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_sigterm_to_a_running_sync_task_cancels_the_dispatch_and_kills_the_remote_process(airflow, gw):
    process = airflow.popen(*airflow.dags_test_args("rh_sigterm", TEST_DAGS))
    handle, pid = _running_dispatch(gw, "rh_sigterm", process)
    assert _alive(pid)
    process.send_signal(signal.SIGTERM)
    sent = time.monotonic()
    data = handle.wait(timeout=10)
    took = time.monotonic() - sent
    assert data["state"] == "cancelled", data
    assert took < 5, f"the dispatch took {took:.1f} s to be cancelled; Airflow sends SIGKILL after 5 s"
    assert "Airflow stopped task rh_sigterm.sleep" in data["cancellation"]["reason"]
    deadline = time.time() + 5
    while _alive(pid) and time.time() < deadline:
        time.sleep(0.05)
    assert not _alive(pid), "the remote worker is still running"
    process.wait(timeout=60)
    assert airflow.task_states("rh_sigterm")["sleep"][0] != "success"


def test_a_cancel_at_the_gateway_fails_the_task_without_retry_and_says_who_and_why(airflow, gw):
    process = airflow.popen(*airflow.dags_test_args("rh_gateway_cancel", TEST_DAGS))
    handle, _ = _running_dispatch(gw, "rh_gateway_cancel", process)
    handle.cancel(reason="superseded by a newer model")
    process.wait(timeout=60)
    log = process.log_path.read_text()
    assert airflow.task_states("rh_gateway_cancel") == {"sleep": ("failed", 1)}, log[-5000:]
    assert "was cancelled at the gateway by" in log and "superseded by a newer model" in log
    run_id = airflow.latest_run_id("rh_gateway_cancel")
    assert len(gw.dispatches(labels={"dag_id": "rh_gateway_cancel", "run_id": run_id})) == 1


def test_a_retry_after_a_remote_failure_starts_a_new_dispatch(airflow, gw, shared_tmp):
    marker = shared_tmp / "first-call-done"
    result = airflow.dags_test("rh_retry", TEST_DAGS, "-c", f'{{"marker": "{marker}"}}')
    assert airflow.task_states("rh_retry") == {"flaky": ("success", 2)}, result.stdout[-6000:]
    assert airflow.xcom("rh_retry", "flaky") == "recovered"
    assert "RuntimeError: first call fails on purpose" in result.stdout
    assert "Traceback" in result.stdout and "in fail_on_first_call" in result.stdout
    run_id = airflow.latest_run_id("rh_retry")
    dispatches = gw.dispatches(labels={"dag_id": "rh_retry", "run_id": run_id})
    by_try = {d.data["labels"]["try_number"]: d.data for d in dispatches}
    assert {t: d["state"] for t, d in by_try.items()} == {"1": "failed", "2": "succeeded"}
    assert by_try["2"]["labels"] == {"dag_id": "rh_retry", "task_id": "flaky", "run_id": run_id, "map_index": "-1",
                                     "try_number": "2"}

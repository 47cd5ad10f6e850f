"""What only a real Airflow deployment shows: a worker dying mid-wait, and a deferred task marked failed.

`airflow dags test` runs tasks in its own process and never calls a
trigger's on_kill, so these two tests run Airflow as deployed: api-server,
scheduler (LocalExecutor), dag-processor and triggerer, all on 127.0.0.1
(`--skip-serve-logs`, so nothing binds a public address), sharing the
session's SQLite home.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import pytest

from test_cancellation import _alive, _running_dispatch


class AirflowServices:
    """The running Airflow components and a tiny client for their REST API (the all-admins dev auth)."""

    def __init__(self, home: Any, port: int) -> None:
        self.home = home
        self.url = f"http://127.0.0.1:{port}"
        self.processes: list[subprocess.Popen] = []

    def api(self, method: str, path: str, body: Any = None) -> Any:
        """One REST call; the decoded JSON answer."""
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(f"{self.url}/api/v2{path}", data=data, method=method,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read().decode() or "null")

    def trigger(self, dag_id: str, conf: dict[str, Any] | None = None) -> str:
        """Starts a DAG run; its run id."""
        return self.api("POST", f"/dags/{dag_id}/dagRuns", {"logical_date": None, "conf": conf or {}})["dag_run_id"]

    def task(self, dag_id: str, run_id: str, task_id: str) -> dict[str, Any]:
        """The task instance as the REST API shows it."""
        return self.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}")

    def wait_task(self, dag_id: str, run_id: str, task_id: str, until: Any, timeout: float = 90) -> dict[str, Any]:
        """Polls the task instance until ``until(ti)`` holds."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            ti = self.task(dag_id, run_id, task_id)
            if until(ti):
                return ti
            time.sleep(0.2)
        raise AssertionError(f"{dag_id}.{task_id} never got there: {ti}\n{self.logs()}")

    def logs(self) -> str:
        """The tail of every component's output, for failure messages."""
        return "\n".join(f"== {p.log_path.name}\n{p.log_path.read_text()[-2500:]}" for p in self.processes)


def _task_log(services: AirflowServices, dag_id: str, run_id: str) -> str:
    return "\n".join(p.read_text()[-4000:] for p in services.home.root.glob(f"logs/dag_id={dag_id}/run_id={run_id}/**/*.log"))


def _wait_for_log(services: AirflowServices, dag_id: str, run_id: str, text: str, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while text not in _task_log(services, dag_id, run_id):
        assert time.time() < deadline, f"{text!r} never appeared in the task log:\n{services.logs()}"
        time.sleep(0.2)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _task_process(ti_id: str) -> int | None:
    """The pid of the process running task instance ``ti_id`` (its title is `airflow worker -- <ti id>`)."""
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if f"airflow worker -- {ti_id}" in (proc / "cmdline").read_bytes().decode(errors="replace"):
                    return int(proc.name)
            except OSError:
                continue
    return None


@pytest.fixture(scope="module")
def services(airflow: Any) -> Iterator[AirflowServices]:
    port = _free_port()
    running = AirflowServices(airflow, port)
    env = {
        **airflow.env,
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__PARALLELISM": "4",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{running.url}/execution/",
        "AIRFLOW__API__BASE_URL": running.url,
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_hex(32),
        "AIRFLOW__API__SECRET_KEY": secrets.token_hex(16),
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
        "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "1",
        "AIRFLOW__TRIGGERER__JOB_HEARTBEAT_SEC": "1",
    }
    original, airflow.env = airflow.env, env
    try:
        for command in (["api-server", "-H", "127.0.0.1", "-p", str(port), "-w", "1"],
                        ["scheduler", "--skip-serve-logs"], ["dag-processor", "-B", "tests"],
                        ["triggerer", "--skip-serve-logs"]):
            running.processes.append(airflow.popen(*command))
        deadline = time.time() + 120
        while True:
            try:
                health = running.api("GET", "/monitor/health")
                if all(health.get(c, {}).get("status") == "healthy" for c in ("scheduler", "triggerer", "dag_processor")):
                    for dag_id in ("rh_reattach", "rh_deferred", "rh_sense_cancel"):
                        # `airflow dags test` earlier in the session may have registered them paused.
                        running.api("PATCH", f"/dags/{dag_id}", {"is_paused": False})
                    break
            except Exception:
                pass
            assert time.time() < deadline, f"Airflow did not come up:\n{running.logs()}"
            assert all(p.poll() is None for p in running.processes), f"an Airflow component died:\n{running.logs()}"
            time.sleep(0.5)
        yield running
    finally:
        airflow.env = original
        for process in running.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in running.processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def test_a_retry_after_the_task_process_dies_mid_wait_reattaches_to_the_same_dispatch(services, gw, shared_tmp):
    release = shared_tmp / "release"
    run_id = services.trigger("rh_reattach", {"release": str(release)})
    handle, remote_pid = _running_dispatch(gw, "rh_reattach", services.processes[1])
    ti = services.wait_task("rh_reattach", run_id, "wait", lambda t: t["state"] == "running")
    task_pid = _task_process(ti["id"])
    assert task_pid, f"no process titled for task instance {ti['id']}"
    os.kill(task_pid, signal.SIGKILL)  # the worker dies: no on_kill, no cleanup
    services.wait_task("rh_reattach", run_id, "wait", lambda t: t["try_number"] == 2 and t["state"] == "running")
    # The second try found the first try's dispatch still running and waits on it.
    _wait_for_log(services, "rh_reattach", run_id, "Re-attaching to dispatch")
    assert handle.status() == "running" and _alive(remote_pid), "the remote call did not survive the worker's death"
    release.touch()
    ti = services.wait_task("rh_reattach", run_id, "wait", lambda t: t["state"] in ("success", "failed"))
    assert (ti["state"], ti["try_number"]) == ("success", 2), services.logs()
    dispatches = gw.dispatches(labels={"dag_id": "rh_reattach", "run_id": run_id, "task_id": "wait"})
    assert [d.id for d in dispatches] == [handle.id]
    assert dispatches[0].status() == "succeeded"
    xcom = services.api("GET", f"/dags/rh_reattach/dagRuns/{run_id}/taskInstances/wait/xcomEntries/return_value")
    assert xcom["value"] == "released"


def test_marking_a_deferred_task_failed_cancels_its_dispatch_from_the_trigger(services, gw):
    run_id = services.trigger("rh_deferred")
    handle, remote_pid = _running_dispatch(gw, "rh_deferred", services.processes[1])
    services.wait_task("rh_deferred", run_id, "sleep", lambda t: t["state"] == "deferred")
    # Only a trigger the triggerer is running can be killed: wait until it has picked this one up.
    _wait_for_log(services, "rh_deferred", run_id, "Waiting on dispatch")
    services.api("PATCH", f"/dags/rh_deferred/dagRuns/{run_id}/taskInstances/sleep", {"new_state": "failed"})
    data = handle.wait(timeout=30)
    assert data["state"] == "cancelled", f"{data['state']}\n{services.logs()}\n{_task_log(services, 'rh_deferred', run_id)}"
    assert "deferred task was marked failed" in data["cancellation"]["reason"]
    deadline = time.time() + 5
    while _alive(remote_pid) and time.time() < deadline:
        time.sleep(0.05)
    assert not _alive(remote_pid)
    assert services.task("rh_deferred", run_id, "sleep")["state"] == "failed"


def test_marking_a_cancel_on_kill_sensor_failed_cancels_the_dispatch_it_watches(services, gw):
    run_id = services.trigger("rh_sense_cancel")
    handle, remote_pid = _running_dispatch(gw, "rh_sense_cancel", services.processes[1])
    services.wait_task("rh_sense_cancel", run_id, "start", lambda t: t["state"] == "success")
    services.wait_task("rh_sense_cancel", run_id, "sense", lambda t: t["state"] == "deferred")
    _wait_for_log(services, "rh_sense_cancel", run_id, "Waiting on dispatch")
    services.api("PATCH", f"/dags/rh_sense_cancel/dagRuns/{run_id}/taskInstances/sense", {"new_state": "failed"})
    data = handle.wait(timeout=30)
    assert data["state"] == "cancelled", f"{data['state']}\n{services.logs()}"
    deadline = time.time() + 5
    while _alive(remote_pid) and time.time() < deadline:
        time.sleep(0.05)
    assert not _alive(remote_pid)

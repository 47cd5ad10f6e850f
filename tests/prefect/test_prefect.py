"""prefect-runhouse against a real Prefect server and a real local stack."""

from __future__ import annotations

import json
import os
import time
from typing import Any

import pytest
from conftest import REPO, http, wait_until

SHAPES_CANCELLED_FROM_PREFECT = ["plain", "submit", "async"]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _running_dispatch(gw: Any, flow_name: str, flow: Any) -> tuple[Any, int]:
    """The running dispatch of ``flow_name``'s newest flow run, once it has printed its pid."""

    def found() -> tuple[Any, int] | None:
        assert flow.process.poll() is None, flow.output()[-5000:]
        for handle in gw.dispatches(state="running", labels={"flow_name": flow_name}, limit=1):
            pid = next((e["text"].split()[1] for e in handle.logs() if e["text"].startswith("pid ")), None)
            if pid:
                return handle, int(pid)
        return None

    return wait_until(f"a running dispatch of {flow_name}", found, timeout=120)


@pytest.mark.parametrize("shape", SHAPES_CANCELLED_FROM_PREFECT)
def test_cancelling_the_flow_run_cancels_the_dispatch_and_kills_the_remote_process(shape, run_flow, gw,
                                                                                    prefect_server):
    flow = run_flow(shape, 600)
    handle, pid = _running_dispatch(gw, f"rh-{shape}", flow)
    labels = handle.data["labels"]
    assert {"flow_run_id", "flow_name", "task_run_id", "task_name", "task_key", "attempt"} <= labels.keys()
    assert labels["attempt"] == "1"
    sent = time.monotonic()
    http("POST", f"{prefect_server['api']}/flow_runs/{labels['flow_run_id']}/set_state",
         {"state": {"type": "CANCELLING", "name": "Cancelling"}, "force": True})
    data = handle.wait(timeout=30)
    took = time.monotonic() - sent
    assert data["state"] == "cancelled", data
    assert "Prefect" in data["cancellation"]["reason"], data
    wait_until("the remote process to be gone", lambda: not _alive(pid), timeout=10)
    print(f"\n[cancellation] {shape}: dispatch cancelled {took:.2f} s after the flow run was set CANCELLING; "
          f"remote pid gone")
    flow.wait(timeout=60)


def _cancel_and_check(gw: Any, api: str, flow_name: str, process: Any, shape: str) -> None:
    handle, pid = _running_dispatch(gw, flow_name, process)
    labels = handle.data["labels"]
    sent = time.monotonic()
    http("POST", f"{api}/flow_runs/{labels['flow_run_id']}/set_state",
         {"state": {"type": "CANCELLING", "name": "Cancelling"}, "force": True})
    data = handle.wait(timeout=30)
    took = time.monotonic() - sent
    assert data["state"] == "cancelled", data
    wait_until("the remote process to be gone", lambda: not _alive(pid), timeout=10)
    print(f"\n[cancellation] {shape}: dispatch cancelled {took:.2f} s after the flow run was set CANCELLING "
          f"({data['cancellation']['reason']}); remote pid gone")


def _create_run(api: str, flow_name: str, deployment: str, seconds: Any, process: Any,
                parameter: str = "seconds") -> str:
    def deployment_id() -> str | None:
        assert process.process.poll() is None, process.output()[-5000:]
        try:
            return http("GET", f"{api}/deployments/name/{flow_name}/{deployment}")["id"]
        except Exception:  # noqa: BLE001 - not registered yet
            return None

    found = wait_until(f"deployment {flow_name}/{deployment}", deployment_id, timeout=120, interval=0.2)
    return http("POST", f"{api}/deployments/{found}/create_flow_run", {"parameters": {parameter: seconds}})["id"]


def test_cancelling_a_served_flow_run_cancels_its_dispatch(run_flow, gw, prefect_server):
    runner = run_flow("serve", None)
    _create_run(prefect_server["api"], "rh-served", "rh-served", 600, runner)
    _cancel_and_check(gw, prefect_server["api"], "rh-served", runner, "flow.serve()")


def _flow_run_process(flow_run_id: str) -> int | None:
    """The process a runner started for ``flow_run_id`` (it carries the id in its environment)."""
    needle = f"PREFECT__FLOW_RUN_ID={flow_run_id}".encode()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/environ", "rb") as f:
                    if needle in f.read().split(b"\0"):
                        return int(entry)
            except OSError:
                continue
    return None


def test_a_flow_run_rerun_after_its_process_is_killed_reattaches_to_the_running_dispatch(
        run_flow, gw, prefect_server, shared_tmp):
    api = prefect_server["api"]
    release = shared_tmp / "release"
    runner = run_flow("serve", None)
    run_id = _create_run(api, "rh-reattach", "rh-reattach", str(release), runner, parameter="path")
    handle, remote_pid = _running_dispatch(gw, "rh-reattach", runner)
    victim = wait_until("the flow run's process", lambda: _flow_run_process(run_id), timeout=30)
    os.kill(victim, 9)  # no handler runs: nothing can cancel or clean up
    wait_until("the flow run to crash", lambda: http("GET", f"{api}/flow_runs/{run_id}")["state_type"] == "CRASHED",
               timeout=60, interval=0.2)
    assert handle.status() == "running" and _alive(remote_pid), "the remote call did not survive the kill"
    # Re-run the same flow run, as the UI's "Retry" does: the runner picks it up again.
    http("POST", f"{api}/flow_runs/{run_id}/set_state",
         {"state": {"type": "SCHEDULED", "name": "AwaitingRetry"}, "force": True})

    def reattached() -> bool:
        logs = http("POST", f"{api}/logs/filter", {"logs": {"flow_run_id": {"any_": [run_id]}}, "limit": 200})
        return any(f"Re-attaching to dispatch {handle.id}" in entry["message"] for entry in logs)

    try:
        wait_until("the re-run to re-attach", reattached, timeout=90, interval=0.2)
    except AssertionError as err:
        run = http("GET", f"{api}/flow_runs/{run_id}")
        seen = [(d.id, d.data["state"], d.data["labels"]) for d in gw.dispatches(labels={"flow_run_id": run_id})]
        raise AssertionError(f"{err}: run {run['state_type']} {run['run_count']}; dispatches {seen}; "
                             f"runner: {runner.output()[-3000:]}") from None
    release.touch()
    wait_until("the flow run to complete", lambda: http("GET", f"{api}/flow_runs/{run_id}")["state_type"]
               == "COMPLETED", timeout=60, interval=0.2)
    dispatches = gw.dispatches(labels={"flow_run_id": run_id})
    assert [d.id for d in dispatches] == [handle.id], "the re-run dispatched a second time"
    assert dispatches[0].status() == "succeeded"


def test_cancelling_a_process_worker_flow_run_cancels_its_dispatch(run_flow, gw, prefect_server, env, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    from conftest import FLOWS, FlowProcess

    prefect = str(Path(sys.executable).parent / "prefect")
    created = subprocess.run([prefect, "work-pool", "create", "rh-pool", "--type", "process", "--overwrite"],
                             env=env, capture_output=True, text=True, timeout=120)
    assert created.returncode == 0, created.stdout + created.stderr
    deployed = run_flow("deploy", "rh-pool")
    assert deployed.wait(timeout=120) == 0, deployed.output()[-5000:]
    worker = FlowProcess.command(env, [prefect, "worker", "start", "--pool", "rh-pool", "--type", "process"],
                                 tmp_path, cwd=FLOWS)
    try:
        _create_run(prefect_server["api"], "rh-worker", "rh-worker", 600, worker)
        _cancel_and_check(gw, prefect_server["api"], "rh-worker", worker, "process worker")
    finally:
        worker.kill()


def test_a_dispatch_cancelled_at_the_gateway_fails_the_task_without_retrying(run_flow, gw):
    flow = run_flow("reverse", 600)
    handle, _ = _running_dispatch(gw, "rh-reverse", flow)
    handle.cancel(reason="superseded by a newer model")
    assert flow.wait(timeout=60) != 0
    output = flow.output()
    assert "was cancelled by" in output and "superseded by a newer model" in output, output[-4000:]
    run_id = handle.data["labels"]["flow_run_id"]
    assert len(gw.dispatches(labels={"flow_run_id": run_id})) == 1, "a gateway cancel must not be retried"


def test_a_remote_failure_is_retried_and_the_retry_succeeds(run_flow, gw, shared_tmp):
    flow = run_flow("retry", str(shared_tmp / "first-call-done"))
    assert flow.wait(timeout=120) == 0, flow.output()[-5000:]
    output = flow.output()
    assert 'RESULT "recovered"' in output
    assert "RuntimeError: first call fails on purpose" in output and "Remote traceback" in output, output[-5000:]
    assert "[remote] second call succeeds" in output
    run = next(d for d in gw.dispatches(labels={"flow_name": "rh-retry"}, limit=5))
    dispatches = gw.dispatches(labels={"flow_run_id": run.data["labels"]["flow_run_id"]})
    by_attempt = {d.data["labels"]["attempt"]: d.data["state"] for d in dispatches}
    assert by_attempt == {"1": "failed", "2": "succeeded"}


def test_the_example_pipeline_runs_end_to_end_with_remote_output_in_the_prefect_logs(env, prefect_server, gw):
    import subprocess
    import sys

    result = subprocess.run([sys.executable, str(REPO / "examples" / "flows" / "ml_pipeline.py")], env=env,
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-5000:]
    assert "accuracy" in result.stdout, result.stdout[-3000:]
    runs = http("POST", f"{prefect_server['api']}/flow_runs/filter",
                {"flows": {"name": {"any_": ["ml_pipeline"]}}, "limit": 5, "sort": "START_TIME_DESC"})
    pipeline = [r for r in runs if r["state_type"] == "COMPLETED"]
    assert pipeline, runs
    logs = http("POST", f"{prefect_server['api']}/logs/filter",
                {"logs": {"flow_run_id": {"any_": [pipeline[0]["id"]]}}, "limit": 200})
    messages = [entry["message"] for entry in logs]
    assert any(m.startswith("[remote] loaded 150 samples") for m in messages), messages[:50]
    clusters = {d.data["cluster"] for d in gw.dispatches(labels={"flow_run_id": pipeline[0]["id"]}, limit=10)}
    assert clusters == {"cpu", "train"}


def _python(env: dict[str, str], code: str) -> Any:
    """Runs ``code`` in a fresh interpreter against the session's Prefect server (settings are read at
    import, so an in-process test would talk to Prefect's ephemeral server instead)."""
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=180)


def test_the_credentials_block_is_saved_loaded_and_registered(env, prefect_server, stack):
    import subprocess
    import sys
    from pathlib import Path

    register = subprocess.run([str(Path(sys.executable).parent / "prefect"), "block", "register", "-m",
                               "prefect_runhouse"], env=env, capture_output=True, text=True, timeout=120)
    assert register.returncode == 0, register.stdout + register.stderr
    assert "Runhouse Credentials" in register.stdout + register.stderr
    saved = _python(env, f"""
from prefect_runhouse import RunhouseCredentials
RunhouseCredentials(url={stack['url']!r}, token={stack['token']!r}, default_cluster="local").save("test-gw",
                                                                                              overwrite=True)
""")
    assert saved.returncode == 0, saved.stderr[-3000:]
    documents = http("POST", f"{prefect_server['api']}/block_documents/filter",
                     {"block_types": {"slug": {"any_": ["runhouse-credentials"]}}})
    assert [d["name"] for d in documents] == ["test-gw"]
    assert stack["token"] not in json.dumps(documents), "the token must be stored as a secret"
    loaded = _python(env, """
from prefect_runhouse import RunhouseCredentials
creds = RunhouseCredentials.load("test-gw")
print(creds.url, creds.default_cluster, creds.token.get_secret_value() == __import__("os").environ["RH_TOKEN"])
print(repr(creds))
print(len(creds.get_client().dispatches(limit=1)))
""")
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    first, shown, count = loaded.stdout.strip().splitlines()[-3:]
    assert first == f"{stack['url']} local True"
    assert stack["token"] not in shown
    assert int(count) >= 0


def test_a_bad_token_gives_a_clear_error(env, stack):
    result = _python(env, f"""
from prefect import flow
from runhouse_gateway import GatewayError
from prefect_runhouse import RunhouseCredentials, trigger_dispatch

bad = RunhouseCredentials(url={stack['url']!r}, token="not-a-token")

@flow(name="rh-bad-token")
def bad_token():
    return trigger_dispatch("pkg.jobs:hello", "x", cluster="local", credentials=bad)

try:
    bad_token()
except GatewayError as err:
    print("STATUS", err.status, err)
""")
    line = next((l for l in result.stdout.splitlines() if l.startswith("STATUS ")), None)
    assert line is not None, result.stdout[-3000:] + result.stderr[-3000:]
    assert line.startswith("STATUS 401") and "token" in line.lower(), line


def test_a_flow_constructs_an_instance_and_its_tasks_share_it(run_flow, gw):
    flow = run_flow("instance", 10)
    assert flow.wait(timeout=180) == 0, flow.output()[-5000:]
    output = flow.output()
    assert "RESULT 15" in output, output[-5000:]
    assert "[remote] counter starts at 10" in output and "[remote] count is 15" in output, output[-5000:]
    counter = gw.instance("prefect-counter")
    assert counter.data["state"] == "ready" and counter.data["restarts"] == 0
    calls = gw.dispatches(labels={"instance": "prefect-counter", "flow_name": "rh-instance"}, limit=10)
    assert len(calls) == 3, [c.data for c in calls]
    counter.delete()

"""prefect-runhouse against a real Prefect server and a real local stack."""

from __future__ import annotations

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


def test_the_credentials_block_is_saved_loaded_and_registered(prefect_server, stack, monkeypatch):
    import subprocess
    import sys
    from pathlib import Path

    for key, value in prefect_server["env"].items():
        monkeypatch.setenv(key, value)
    register = subprocess.run([str(Path(sys.executable).parent / "prefect"), "block", "register", "-m",
                               "prefect_runhouse"], env=prefect_server["env"], capture_output=True, text=True,
                              timeout=120)
    assert register.returncode == 0, register.stdout + register.stderr
    assert "Runhouse Credentials" in register.stdout + register.stderr
    from prefect_runhouse import RunhouseCredentials

    RunhouseCredentials(url=stack["url"], token=stack["token"], default_cluster="local").save("test-gw",
                                                                                             overwrite=True)
    loaded = RunhouseCredentials.load("test-gw")
    assert loaded.url == stack["url"] and loaded.default_cluster == "local"
    assert loaded.token.get_secret_value() == stack["token"]
    assert stack["token"] not in repr(loaded)
    assert loaded.get_client().dispatches(limit=1) is not None


def test_a_bad_token_gives_a_clear_error(prefect_server, stack, monkeypatch):
    from prefect import flow
    from runhouse_gateway import GatewayError

    for key, value in prefect_server["env"].items():
        monkeypatch.setenv(key, value)
    from prefect_runhouse import RunhouseCredentials, trigger_dispatch

    bad = RunhouseCredentials(url=stack["url"], token="not-a-token")

    @flow(name="rh-bad-token")
    def bad_token() -> Any:
        return trigger_dispatch("pkg.jobs:hello", "x", cluster="local", credentials=bad)

    with pytest.raises(GatewayError) as caught:
        bad_token()
    assert caught.value.status == 401, caught.value
    assert "token" in str(caught.value).lower()

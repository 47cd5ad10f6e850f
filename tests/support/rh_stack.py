"""A real Runhouse stack for the Python-driven suites (Airflow, the dashboard), one per pytest session.

Loaded as a plugin (`pytest -p rh_stack`, with `tests/support` on the path),
so every suite in one run shares one stack. The stack is `rh-gateway dev`
(private Postgres, gateway, node `local-1` in cluster `local`, and the `cpu`
and `train` clusters the examples use, which it brings up on demand) in a
temporary folder.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, token: str) -> Any:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.loads(response.read().decode())


def _bin(name: str) -> str:
    """A prebuilt binary; waits a little if another build is replacing it right now."""
    path = Path(os.environ["RH_BIN_DIR"]) / name
    deadline = time.time() + 120
    while not path.exists():
        if time.time() > deadline:
            raise RuntimeError(f"{path} is missing: build it first")
        time.sleep(2)
    return str(path)


def _ready_clusters(url: str, token: str) -> set[str]:
    return {n["cluster"] for n in _get(f"{url}/v1/nodes", token)["items"] if n["state"] == "ready"}


def _wait_for_clusters(url: str, token: str, clusters: set[str], process: subprocess.Popen, log: Path) -> None:
    deadline = time.time() + 90
    while True:
        try:
            if clusters <= _ready_clusters(url, token):
                return
        except Exception:
            pass
        if time.time() > deadline or process.poll() is not None:
            raise RuntimeError(f"the local stack did not come up: {log.read_text()[-3000:]}")
        time.sleep(0.1)


@pytest.fixture
def shared_tmp() -> Iterator[Path]:
    """A folder the remote code may write to as well: under a root test run,
    nodes run calls as their unprivileged worker user (README, "Security model")."""
    path = Path(tempfile.mkdtemp(prefix="rh-shared-"))
    os.chmod(path, 0o1777)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def stack() -> Iterator[dict[str, Any]]:
    """`rh-gateway dev` on 127.0.0.1: node `local-1` ready in cluster `local`; `cpu` and `train` come up
    on demand from its cluster profiles when the first dispatch asks for them."""
    work = Path(tempfile.mkdtemp(prefix="rh-airflow-"))
    os.chmod(work, 0o755)  # as root, the postgres user must reach ./.rh/pg
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env["RH_GATEWAY_COMPUTE__LOCAL_WORK_DIR"] = str(work / "nodes")  # removed with the work folder
    log_path = work / "dev.log"
    log = open(log_path, "w")
    process = subprocess.Popen([_bin("rh-gateway"), "dev", "--listen", f"127.0.0.1:{port}"], cwd=work, env=env,
                               stdout=log, stderr=log)
    try:
        token_file = work / ".rh" / "admin-token"
        deadline = time.time() + 90
        while not token_file.exists():
            if time.time() > deadline or process.poll() is not None:
                raise RuntimeError(f"the local stack did not come up: {log_path.read_text()[-3000:]}")
            time.sleep(0.1)
        token = token_file.read_text().strip()
        _wait_for_clusters(url, token, {"local"}, process, log_path)
        yield {"url": url, "token": token, "work": work}
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
        shutil.rmtree(work, ignore_errors=True)


@pytest.fixture(scope="session")
def gw(stack: dict[str, Any]) -> Any:
    """An SDK client on the stack, for looking at dispatches from the gateway's side."""
    from runhouse_gateway import Gateway

    return Gateway(stack["url"], stack["token"])


def mint_token(stack: dict[str, Any], project: str, scopes: str, sub: str = "tester") -> str:
    """A new token of the stack, minted the way an operator would (`rh-gateway token create`)."""
    result = subprocess.run([_bin("rh-gateway"), "token", "create", "--project", project, "--scopes", scopes,
                             "--sub", sub], cwd=stack["work"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()

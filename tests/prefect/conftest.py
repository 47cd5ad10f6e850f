"""One local Runhouse stack and one real Prefect server (SQLite, loopback, offline) for the whole run."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

REPO = Path(__file__).resolve().parents[2]
FLOWS = Path(__file__).resolve().parent / "flows"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(what: str, condition: Callable[[], Any], timeout: float = 60, interval: float = 0.05) -> Any:
    """Polls ``condition`` until it returns something truthy; fails naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def http(method: str, url: str, body: Any = None, token: str | None = None, retry_for: float = 30) -> Any:
    """One JSON request. A 503 is retried until ``retry_for`` seconds have passed.

    The Prefect server answers 503 when its SQLite database is busy (``is_client_retryable_exception``
    in ``prefect.server.api.server``) and its own client retries those; so does this helper, with a
    short backoff, instead of failing a test on a lock another writer held for a moment.
    """
    data = json.dumps(body).encode() if body is not None else None
    deadline = time.monotonic() + retry_for
    backoff = 0.05
    while True:
        request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                text = response.read().decode()
            return json.loads(text) if text else None
        except urllib.error.HTTPError as error:
            if error.code != 503 or time.monotonic() + backoff > deadline:
                raise
            time.sleep(backoff)  # retry backoff on the server's own "try again" answer, not synchronisation
            backoff = min(backoff * 2, 1.0)


@pytest.fixture(scope="session")
def stack() -> Iterator[dict[str, Any]]:
    """`rh-gateway dev` on 127.0.0.1 with node `local-1` ready in cluster `local`."""
    work = Path(tempfile.mkdtemp(prefix="rh-prefect-"))
    os.chmod(work, 0o755)  # as root, the postgres user must reach ./.rh/pg
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env["RH_GATEWAY_COMPUTE__LOCAL_WORK_DIR"] = str(work / "nodes")  # removed with the work folder
    log_path = work / "dev.log"
    log = open(log_path, "w")
    binary = Path(os.environ["RH_BIN_DIR"]) / "rh-gateway"
    process = subprocess.Popen([str(binary), "dev", "--listen", f"127.0.0.1:{port}"], cwd=work, env=env,
                               stdout=log, stderr=log)
    try:
        token_file = work / ".rh" / "admin-token"
        alive = lambda: process.poll() is None or (_ for _ in ()).throw(  # noqa: E731
            RuntimeError(f"the local stack exited: {log_path.read_text()[-3000:]}"))
        wait_until("the admin token", lambda: alive() and token_file.exists(), timeout=90)
        token = token_file.read_text().strip()

        def local_ready() -> bool:
            alive()
            try:
                nodes = http("GET", f"{url}/v1/nodes", token=token)["items"]
            except Exception:  # noqa: BLE001 - not up yet
                return False
            return any(n["cluster"] == "local" and n["state"] == "ready" for n in nodes)

        wait_until("node local-1", local_ready, timeout=90)
        yield {"url": url, "token": token, "work": work}
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
        shutil.rmtree(work, ignore_errors=True)


@pytest.fixture(scope="session")
def prefect_server() -> Iterator[dict[str, Any]]:
    """`prefect server start` on loopback, with its own home and SQLite database, analytics and UI off."""
    home = Path(tempfile.mkdtemp(prefix="prefect-home-"))
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "RH_"))},
        "PREFECT_HOME": str(home),
        "DO_NOT_TRACK": "1",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_ENABLED": "false",
        "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{home}/prefect.db",
        "PREFECT_LOGGING_LEVEL": "INFO",
        # Runners and workers look for new and cancelling runs every second, not every 10-15 s.
        "PREFECT_RUNNER_POLL_FREQUENCY": "1",
        "PREFECT_WORKER_QUERY_SECONDS": "1",
        "PREFECT_WORKER_PREFETCH_SECONDS": "1",
    }
    log_path = home / "server.log"
    log = open(log_path, "w")
    prefect = str(Path(sys.executable).parent / "prefect")
    process = subprocess.Popen([prefect, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                               env=env, stdout=log, stderr=log, start_new_session=True)

    def healthy() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"prefect server exited: {log_path.read_text()[-3000:]}")
        try:
            return http("GET", f"{api}/health") is True
        except Exception:  # noqa: BLE001 - not up yet
            return False

    try:
        wait_until("the Prefect server", healthy, timeout=120, interval=0.2)
        yield {"api": api, "env": {**env, "PREFECT_API_URL": api}, "home": home}
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="session")
def env(stack: dict[str, Any], prefect_server: dict[str, Any]) -> dict[str, str]:
    """The environment a flow process runs with: the Prefect API and the gateway's URL and token."""
    return {**prefect_server["env"], "RH_GATEWAY_URL": stack["url"], "RH_TOKEN": stack["token"]}


@pytest.fixture(scope="session")
def gw(stack: dict[str, Any]) -> Any:
    """An SDK client on the stack, for looking at dispatches from the gateway's side."""
    from runhouse_gateway import Gateway

    return Gateway(stack["url"], stack["token"])


@pytest.fixture
def shared_tmp() -> Iterator[Path]:
    """A folder the remote code may write to as well (root test runs use an unprivileged worker user)."""
    path = Path(tempfile.mkdtemp(prefix="rh-shared-"))
    os.chmod(path, 0o1777)
    yield path
    shutil.rmtree(path, ignore_errors=True)


class FlowProcess:
    """`python flows.py SHAPE ARG` in its own process, its output kept for failure messages."""

    def __init__(self, env: dict[str, str], shape: str, arg: Any, log_dir: Path,
                 argv: list[str] | None = None, cwd: Path = FLOWS) -> None:
        self.log_path = log_dir / f"flow-{shape}-{time.monotonic_ns()}.log"
        self._log = open(self.log_path, "w")
        argv = argv or [sys.executable, str(FLOWS / "flows.py"), shape, json.dumps(arg)]
        # Its own process group: a runner or worker is stopped with the flow runs it started.
        self.process = subprocess.Popen(argv, cwd=cwd, env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                        start_new_session=True)

    @classmethod
    def command(cls, env: dict[str, str], argv: list[str], log_dir: Path, cwd: Path = FLOWS) -> "FlowProcess":
        return cls(env, Path(argv[0]).name, None, log_dir, argv=argv, cwd=cwd)

    def output(self) -> str:
        self._log.flush()
        return self.log_path.read_text()

    def wait(self, timeout: float = 120) -> int:
        return self.process.wait(timeout=timeout)

    def kill(self) -> None:
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait()


@pytest.fixture
def run_flow(env: dict[str, str], tmp_path: Path) -> Iterator[Callable[[str, Any], FlowProcess]]:
    started: list[FlowProcess] = []

    def start(shape: str, arg: Any) -> FlowProcess:
        flow = FlowProcess(env, shape, arg, tmp_path)
        started.append(flow)
        return flow

    yield start
    for flow in started:
        flow.kill()

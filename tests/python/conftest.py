"""A real local stack for the SDK tests: `rh-gateway dev` (private Postgres,
gateway, one node) in a temporary folder."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "project"))


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url, token):
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=5) as response:
        return response.read().decode()


@pytest.fixture(scope="session")
def stack():
    bin_dir = os.environ["RH_BIN_DIR"]
    work = tempfile.mkdtemp(prefix="rh-sdk-")
    os.chmod(work, 0o755)  # as root, the postgres user must reach ./.rh/pg
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    log = open(os.path.join(work, "dev.log"), "w")
    process = subprocess.Popen([os.path.join(bin_dir, "rh-gateway"), "dev", "--listen", f"127.0.0.1:{port}"],
                               cwd=work, env=env, stdout=log, stderr=log)
    token_file = os.path.join(work, ".rh", "admin-token")
    deadline = time.time() + 90
    while True:
        try:
            token = open(token_file).read().strip()
            nodes = json.loads(_get(f"{url}/v1/nodes", token))
            if any(n["state"] == "ready" for n in nodes["items"]):
                break
        except Exception:
            pass
        if time.time() > deadline or process.poll() is not None:
            process.kill()
            raise RuntimeError("the local stack did not come up: " + open(os.path.join(work, "dev.log")).read()[-2000:])
        time.sleep(0.1)
    yield {"url": url, "token": token, "work": work}
    process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
    shutil.rmtree(work, ignore_errors=True)


@pytest.fixture()
def gw(stack, monkeypatch):
    from runhouse_gateway import Gateway

    monkeypatch.setenv("RH_GATEWAY_URL", stack["url"])
    monkeypatch.setenv("RH_TOKEN", stack["token"])
    return Gateway()


def metric(stack, name):
    text = _get(f"{stack['url']}/metrics", stack["token"])
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise KeyError(name)

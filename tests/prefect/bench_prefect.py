"""Prefect figure for `make bench`: the overhead of `run_remote` over a plain Prefect task, both doing
nothing, inside one flow run against a real Prefect server (median of 5 task runs each, after a warm-up
call). Prints it and adds it to bench/results/latest.json. Asserts nothing about speed."""

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from conftest import FLOWS

RESULTS = Path(__file__).resolve().parents[2] / "bench" / "results" / "latest.json"

SCRIPT = r'''
import json, statistics, time
from prefect import flow, task
import jobs
from prefect_runhouse import run_remote

@task
def plain_noop():
    return jobs.noop()

@flow(name="rh-overhead")
def overhead():
    run_remote(jobs.noop, cluster="local")  # warm: the project is packed and uploaded once
    plain_noop()
    timings = {"plain": [], "remote": []}
    for _ in range(5):
        started = time.perf_counter()
        plain_noop()
        timings["plain"].append((time.perf_counter() - started) * 1000)
        started = time.perf_counter()
        run_remote(jobs.noop, cluster="local")
        timings["remote"].append((time.perf_counter() - started) * 1000)
    return timings

print("TIMINGS " + json.dumps(overhead()))
'''


def test_run_remote_overhead(env):
    result = subprocess.run([sys.executable, "-c", SCRIPT], cwd=FLOWS, env={**env, "PYTHONPATH": str(FLOWS)},
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    line = next(line for line in result.stdout.splitlines() if line.startswith("TIMINGS "))
    timings = json.loads(line.removeprefix("TIMINGS "))
    plain, remote = statistics.median(timings["plain"]), statistics.median(timings["remote"])
    figures = {"prefect_plain_task_ms": plain, "prefect_run_remote_noop_ms": remote,
               "prefect_run_remote_overhead_ms": remote - plain}
    print(f"\nPrefect task, median of 5: plain no-op {plain:.1f} ms, run_remote no-op {remote:.1f} ms, "
          f"overhead {remote - plain:.1f} ms ({remote / plain:.2f}x)")
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    results.update(figures)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")

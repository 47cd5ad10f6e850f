"""SDK figures for `make bench`: sequential call latency with a 1 KiB
argument, calls/s from 8 threads, the time of `.to()` on unchanged code, and
the same for remote objects (a no-op method of a warm instance against a
no-op function, and calls/s from 8 threads on one instance), each the median
of three runs. Prints them and adds them to
bench/results/latest.json (next to the figures `rh-bench` wrote). Asserts
nothing about speed."""

import json
import os
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

import jobs
import models

RESULTS = os.path.join(os.path.dirname(__file__), "..", "..", "bench", "results", "latest.json")


def p50(call, n=300):
    latencies = []
    for _ in range(n):
        started = time.perf_counter()
        call()
        latencies.append((time.perf_counter() - started) * 1000)
    return statistics.median(latencies)


def run_once(gw, echo, payload, noop, service):
    latencies = []
    for _ in range(300):
        started = time.perf_counter()
        echo(payload)
        latencies.append((time.perf_counter() - started) * 1000)
    latencies.sort()
    calls = 400
    started = time.perf_counter()
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda _: echo(payload), range(calls)))
    per_second = calls / (time.perf_counter() - started)
    spec = gw.function(jobs.echo)
    to_times = []
    for _ in range(20):
        started = time.perf_counter()
        spec.to("local")
        to_times.append((time.perf_counter() - started) * 1000)
    calls = 400
    started = time.perf_counter()
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda _: service.noop(), range(calls)))
    method_per_second = calls / (time.perf_counter() - started)
    return {
        "python_function_noop_p50_ms": p50(noop),
        "python_method_noop_p50_ms": p50(service.noop),
        "python_method_8_threads_one_instance_per_s": method_per_second,
        "python_sdk_p50_ms": statistics.median(latencies),
        "python_sdk_p99_ms": latencies[int(len(latencies) * 0.99) - 1],
        "python_sdk_8_threads_per_s": per_second,
        "python_deploy_unchanged_ms": statistics.median(to_times),
    }


def test_sdk_figures(gw):
    payload = "x" * 1024
    echo = gw.function(jobs.echo).to("local")
    noop = gw.function(jobs.noop).to("local")
    service = gw.cls(models.Service).to("local").new("bench-service", max_concurrency=8)
    for _ in range(20):
        echo(payload)
        noop()
        service.noop()
    runs = [run_once(gw, echo, payload, noop, service) for _ in range(3)]
    service.delete()
    # Runhouse's own figure for a no-op module method through its client, on this class of machine.
    targets = {"python_sdk_p50_ms": "<= 1.5", "python_sdk_p99_ms": "<= 5", "python_deploy_unchanged_ms": "<= 100",
               "python_method_noop_p50_ms": "<= 10 (Runhouse)"}
    try:
        with open(RESULTS) as f:
            results = json.load(f)
    except (OSError, ValueError):
        results = {"figures": {}}
    floor = results.get("floor_ms")
    print()
    for key in runs[0]:
        values = [run[key] for run in runs]
        figure = {"median": statistics.median(values), "min": min(values), "max": max(values),
                  "unit": "/s" if key.endswith("per_s") else "ms", "target": targets.get(key, "")}
        if floor and key.endswith("_p50_ms"):
            figure["ratio_to_floor"] = figure["median"] / floor
        results["figures"][key] = figure
        ratio = f"  {figure['ratio_to_floor']:.1f}x floor" if "ratio_to_floor" in figure else ""
        print(f"{key:<30} median {figure['median']:8.2f} {figure['unit']:<3} (min {figure['min']:.2f}, "
              f"max {figure['max']:.2f})  target {figure['target'] or '-'}{ratio}")
    os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
    with open(RESULTS, "w") as f:
        json.dump(results, f, indent=2)

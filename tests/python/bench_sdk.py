"""SDK figures: sequential call latency with a 1 KiB argument, calls/s from 8
threads, and the time of `.to()` on unchanged code. Run with `make bench-sdk`;
it prints numbers and asserts nothing about speed."""

import statistics
import time
from concurrent.futures import ThreadPoolExecutor

import jobs


def test_sdk_figures(gw):
    payload = "x" * 1024
    echo = gw.function(jobs.echo).to("local")
    for _ in range(20):
        echo(payload)
    latencies = []
    for _ in range(300):
        started = time.perf_counter()
        echo(payload)
        latencies.append((time.perf_counter() - started) * 1000)
    latencies.sort()
    p50 = statistics.median(latencies)
    p99 = latencies[int(len(latencies) * 0.99) - 1]

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
    print()
    print(f"python SDK, no-op with a 1 KiB argument: p50 {p50:.2f} ms, p99 {p99:.2f} ms (sequential, 300 calls)")
    print(f"python SDK, 8 threads: {per_second:.0f} calls/s")
    print(f"python SDK, unchanged-code .to(): median {statistics.median(to_times):.1f} ms")

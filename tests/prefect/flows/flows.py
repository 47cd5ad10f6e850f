"""Flows in each run shape the tests cancel, retry and watch: `python flows.py SHAPE JSON_ARG`."""

import asyncio
import json
import sys

from prefect import flow

import jobs
from prefect_runhouse import cancel_flow_run_dispatches, create_instance, run_remote, run_remote_async


@flow(name="rh-plain", on_cancellation=[cancel_flow_run_dispatches])
def plain(seconds):
    """A task in the flow's own thread."""
    return run_remote(jobs.sleepy, seconds, cluster="local")


@flow(name="rh-submit", on_cancellation=[cancel_flow_run_dispatches])
def submitted(seconds):
    """A task submitted to the flow's thread pool."""
    return run_remote.submit(jobs.sleepy, seconds, cluster="local").result()


@flow(name="rh-async", on_cancellation=[cancel_flow_run_dispatches])
async def in_async(seconds):
    """An async task in an async flow."""
    return await run_remote_async(jobs.sleepy, seconds, cluster="local")


@flow(name="rh-retry")
def retried(marker):
    """A remote failure, then a retry that succeeds."""
    return run_remote.with_options(retries=1)(jobs.fail_on_first_call, marker, cluster="local")


@flow(name="rh-reverse")
def reverse(seconds):
    """Cancelled at the gateway: fails at once, despite retries."""
    return run_remote.with_options(retries=2)(jobs.sleepy, seconds, cluster="local")


@flow(name="rh-served", on_cancellation=[cancel_flow_run_dispatches])
def served(seconds):
    """Run by `flow.serve()`'s runner in a process of its own."""
    return run_remote(jobs.sleepy, seconds, cluster="local")


@flow(name="rh-worker", on_cancellation=[cancel_flow_run_dispatches])
def by_worker(seconds):
    """Run by a process worker from a deployment."""
    return run_remote(jobs.sleepy, seconds, cluster="local")


@flow(name="rh-reattach")
def reattach(path):
    """Waits on a remote call the test releases; its process is killed and the run re-run meanwhile."""
    return run_remote(jobs.wait_for, path, cluster="local")


def serve(_):
    from prefect import serve as serve_all

    serve_all(served.to_deployment(name="rh-served"), reattach.to_deployment(name="rh-reattach"),
              print_starting_message=False)


def deploy(pool):
    from pathlib import Path

    by_worker.from_source(source=str(Path(__file__).parent), entrypoint="flows.py:by_worker").deploy(
        name="rh-worker", work_pool_name=pool, print_next_steps=False)
    return "deployed"


@flow(name="rh-instance")
def with_instance(start):
    """Constructs a counter, adds to it from two tasks (one submitted), and reads it from a plain call."""
    name = create_instance(jobs.Counter, start, name="prefect-counter", cluster="local")
    run_remote(instance=name, method="add", by=2)
    run_remote.submit(instance=name, method="add", by=3).result()
    return run_remote(instance=name, method="add", by=0)


SHAPES = {"instance": with_instance, "plain": plain, "submit": submitted, "async": in_async, "retry": retried, "reverse": reverse,
          "serve": serve, "deploy": deploy}

if __name__ == "__main__":
    shape, arg = sys.argv[1], json.loads(sys.argv[2])
    fn = SHAPES[shape]
    is_async = asyncio.iscoroutinefunction(getattr(fn, "fn", fn))
    result = asyncio.run(fn(arg)) if is_async else fn(arg)
    print("RESULT " + json.dumps(result), flush=True)

"""Flows in each run shape the tests cancel, retry and watch: `python flows.py SHAPE JSON_ARG`."""

import asyncio
import json
import sys

from prefect import flow

import jobs
from prefect_runhouse import cancel_flow_run_dispatches, run_remote, run_remote_async


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


SHAPES = {"plain": plain, "submit": submitted, "async": in_async, "retry": retried, "reverse": reverse}

if __name__ == "__main__":
    shape, arg = sys.argv[1], json.loads(sys.argv[2])
    fn = SHAPES[shape]
    result = asyncio.run(fn(arg)) if asyncio.iscoroutinefunction(fn.fn) else fn(arg)
    print("RESULT " + json.dumps(result), flush=True)

"""Prefect integration for Runhouse Gateway: run ordinary Python functions on remote compute from a flow.

    from prefect import flow
    from prefect_runhouse import run_remote, cancel_flow_run_dispatches
    import steps

    @flow(on_cancellation=[cancel_flow_run_dispatches])
    def pipeline():
        data = run_remote(steps.preprocess, cluster="cpu", requirements=["scikit-learn"])
        return run_remote(steps.train, data, cluster="train", requirements=["scikit-learn"])

    @flow
    def training():
        name = create_instance(steps.Trainer, lr=0.01, name="bert-ft", cluster="train")
        run_remote(instance=name, method="train_epoch", epoch=0)
        return run_remote(instance=name, method="evaluate")

The task functions (signatures and docs) are generated from providers/shims.toml
into ``_generated.py``; what they do lives in ``lifecycle.py``.
"""

from runhouse_gateway import DispatchCancelled, DispatchTimedOut, RemoteError

from prefect_runhouse._generated import (
    create_instance,
    create_instance_async,
    run_remote,
    run_remote_async,
    trigger_dispatch,
    trigger_dispatch_async,
    wait_for_dispatch,
    wait_for_dispatch_async,
)
from prefect_runhouse.credentials import RunhouseCredentials
from prefect_runhouse.lifecycle import FlowRunCancelled, cancel_flow_run_dispatches

__all__ = [
    "RunhouseCredentials",
    "run_remote",
    "run_remote_async",
    "trigger_dispatch",
    "trigger_dispatch_async",
    "wait_for_dispatch",
    "wait_for_dispatch_async",
    "create_instance",
    "create_instance_async",
    "cancel_flow_run_dispatches",
    "FlowRunCancelled",
    "RemoteError",
    "DispatchCancelled",
    "DispatchTimedOut",
]

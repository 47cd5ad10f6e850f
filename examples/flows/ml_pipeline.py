"""The iris pipeline as a Prefect flow: preprocess -> split -> train -> predict -> accuracy.

The Prefect twin of examples/dags/ml_pipeline.py. The steps are the same
ordinary functions in examples/dags/iris_steps.py, unchanged; each runs on a
Runhouse cluster: data work on `cpu`, training on `train`. Results pass
between tasks as small JSON.

Against `make run` (which provides both clusters as local profiles):

    export RH_GATEWAY_URL=http://127.0.0.1:8080 RH_TOKEN=$(cat .rh/admin-token)
    python examples/flows/ml_pipeline.py

Cancelling the flow run (UI, `prefect flow-run cancel`) cancels the remote
step that is running; the `on_cancellation` hook is the backstop for any
dispatch the flow run left behind.
"""

import sys
from pathlib import Path

from prefect import flow

# The step module is the Airflow example's, unchanged; its folder (with its
# pyproject.toml) is the project that gets packed and shipped.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "dags"))
import iris_steps  # noqa: E402

from prefect_runhouse import cancel_flow_run_dispatches, run_remote  # noqa: E402

REQUIREMENTS = ["scikit-learn"]


@flow(name="ml_pipeline", on_cancellation=[cancel_flow_run_dispatches], on_crashed=[cancel_flow_run_dispatches])
def ml_pipeline(C: float = 1.0) -> float:
    data = run_remote(iris_steps.preprocess, cluster="cpu", requirements=REQUIREMENTS)
    splits = run_remote(iris_steps.split, data, cluster="cpu", requirements=REQUIREMENTS)
    model = run_remote(iris_steps.train, splits, C=C, cluster="train", requirements=REQUIREMENTS)
    predictions = run_remote(iris_steps.predict, model, splits, cluster="cpu", requirements=REQUIREMENTS)
    score = run_remote(iris_steps.accuracy, predictions, cluster="cpu", requirements=REQUIREMENTS)
    print(f"accuracy {score}")
    return score


if __name__ == "__main__":
    ml_pipeline()

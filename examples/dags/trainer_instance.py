"""A model that stays warm across tasks: construct once, train two epochs as two tasks, evaluate.

`RunhouseInstanceOperator` constructs `trainer_steps.Trainer` on the `train`
cluster as the instance `iris-trainer` (or attaches to it if it is already
live with the same arguments); each `RunhouseOperator(instance=..., method=...)`
task then calls a method of that one object, so the epochs accumulate in its
memory. Other DAGs, the SDK (`gw.instance("iris-trainer")`) and the CLI
(`rh dispatch --instance iris-trainer --method evaluate --wait`) reach the same object.
"""

from datetime import datetime

import trainer_steps
from airflow.sdk import DAG

from runhouse_provider.operators import RunhouseInstanceOperator, RunhouseOperator

with DAG("trainer_instance", schedule=None, start_date=datetime(2026, 1, 1), catchup=False, tags=["runhouse"]):
    trainer = RunhouseInstanceOperator(task_id="construct", cls=trainer_steps.Trainer, instance="iris-trainer",
                                       op_kwargs={"lr": 0.05}, cluster="train", requirements=["scikit-learn"],
                                       idle_stop_minutes=30)
    # `trainer.output` is the instance's name: each method task depends on the construction.
    epoch_0 = RunhouseOperator(task_id="epoch_0", instance=trainer.output, method="train_epoch", op_args=[0])
    epoch_1 = RunhouseOperator(task_id="epoch_1", instance=trainer.output, method="train_epoch", op_args=[1])
    evaluate = RunhouseOperator(task_id="evaluate", instance=trainer.output, method="evaluate")
    epoch_0 >> epoch_1 >> evaluate

"""The iris pipeline from the Runhouse/Airflow write-up: preprocess >> split >> train >> predict >> accuracy.

The steps are ordinary functions in iris_steps.py, unchanged; each runs on a
Runhouse cluster: data work on `cpu`, training on `train` (deferred, so no
worker slot is held while it trains). Results pass as small JSON through XCom.

`make run` provides both clusters locally: `cpu` and `train` are built-in
profiles of `rh-gateway dev` (one local node each), brought up by the first
dispatch that names them and reused by the steps after it. The same DAG runs
on AWS with no change here, only profiles in the gateway's config:

    # gateway.toml
    # [compute]
    # public_url = "http://10.0.0.5:8080"       # how the instances reach the gateway (README, "Network requirements")
    #
    # [compute.aws]
    # region = "us-east-1"
    # default_image = "ami-0abcdef1234567890"   # needs Python 3.11 with libpython and curl
    #
    # [profiles.cpu]
    # provider = "aws"
    # instance_type = "c7i.8xlarge"              # 32 vCPUs for preprocessing
    # autostop_idle_minutes = 15
    #
    # [profiles.train]
    # provider = "aws"
    # instance_type = "g5.xlarge"                # one A10G GPU for training
    # autostop_idle_minutes = 20
"""

from datetime import datetime

import iris_steps
from airflow.sdk import DAG

from runhouse_provider.operators import RunhouseOperator

REQUIREMENTS = ["scikit-learn"]

with DAG("ml_pipeline", schedule=None, start_date=datetime(2026, 1, 1), catchup=False, tags=["runhouse"]):
    preprocess = RunhouseOperator(task_id="preprocess", python_callable=iris_steps.preprocess, cluster="cpu",
                                  requirements=REQUIREMENTS)
    split = RunhouseOperator(task_id="split", python_callable=iris_steps.split, cluster="cpu",
                             requirements=REQUIREMENTS, op_args=[preprocess.output])
    # Training is the long step: wait for it in the triggerer, not in a worker slot.
    train = RunhouseOperator(task_id="train", python_callable=iris_steps.train, cluster="train",
                             requirements=REQUIREMENTS, op_args=[split.output], op_kwargs={"C": 1.0},
                             deferrable=True, poll_interval=2)
    predict = RunhouseOperator(task_id="predict", python_callable=iris_steps.predict, cluster="cpu",
                               requirements=REQUIREMENTS, op_args=[train.output, split.output])
    accuracy = RunhouseOperator(task_id="accuracy", python_callable=iris_steps.accuracy, cluster="cpu",
                                requirements=REQUIREMENTS, op_args=[predict.output])
    preprocess >> split >> train >> predict >> accuracy

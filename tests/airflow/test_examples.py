"""The example DAGs run under `airflow dags test` against the live local stack."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def ml_pipeline(airflow):
    """One `airflow dags test` of the ML pipeline, shared by the tests that look at it."""
    return airflow.dags_test("ml_pipeline", timeout=400)


def test_the_ml_pipeline_trains_on_two_clusters_and_reports_its_accuracy(ml_pipeline, airflow, gw):
    result = ml_pipeline
    states = airflow.task_states("ml_pipeline")
    assert states == {t: ("success", 1) for t in ("preprocess", "split", "train", "predict", "accuracy")}, \
        result.stdout[-6000:]
    assert airflow.xcom("ml_pipeline", "accuracy") >= 0.85
    assert "[remote] trained: train accuracy" in result.stdout
    run_id = airflow.latest_run_id("ml_pipeline")
    clusters = {d.data["labels"]["task_id"]: d.data["cluster"]
                for d in gw.dispatches(labels={"dag_id": "ml_pipeline", "run_id": run_id})}
    assert clusters == {"preprocess": "cpu", "split": "cpu", "train": "train", "predict": "cpu", "accuracy": "cpu"}
    # The predict step's plot is kept as an artifact, named in the task log, and downloads as a PNG.
    (predict,) = gw.dispatches(labels={"dag_id": "ml_pipeline", "run_id": run_id, "task_id": "predict"})
    assert [a["path"] for a in predict.artifacts()] == ["iris_logistic.png"]
    assert predict.artifact("iris_logistic.png").startswith(b"\x89PNG\r\n\x1a\n")
    assert "artifact iris_logistic.png" in result.stdout, result.stdout[-6000:]


def test_the_dag_runs_gantt_and_each_tasks_extra_link_open_in_the_dashboard(ml_pipeline, airflow, gw, dashboard,
                                                                              stack):
    run_id = airflow.latest_run_id("ml_pipeline")
    (train,) = gw.dispatches(labels={"dag_id": "ml_pipeline", "run_id": run_id, "task_id": "train"})
    # The task's "Runhouse dispatch" extra link is the run's page on the dashboard.
    link = airflow.xcom("ml_pipeline", "train", key="runhouse_dispatch_url")
    assert link == f"{stack['url']}/ui/runs/{train.id}"
    page = dashboard.page()
    page.goto(link)
    assert page.locator("[data-live]").first.inner_text() == "succeeded"
    assert "trained: train accuracy" in page.wait_for_selector("#log[data-ended='true']").inner_text()
    # From there, the Gantt chart of the whole DAG run: one bar per task, queued apart from running.
    page.click("text=Gantt of this DAG run")
    bars = page.locator("svg.gantt a")
    assert bars.count() == 5
    labels = page.locator("svg.gantt text.row-label").all_text_contents()
    assert sorted(labels) == ["accuracy", "predict", "preprocess", "split", "train"], labels
    assert page.locator("svg.gantt rect.st-succeeded").count() == 5
    assert page.locator("svg.gantt rect.queued").count() == 5
    dashboard.shot(page, "gantt")


def test_fire_and_forget_then_a_deferred_sensor_returns_the_result(airflow, gw):
    result = airflow.dags_test("trigger_and_sense")
    assert airflow.task_states("trigger_and_sense") == {"start": ("success", 1), "wait": ("success", 1)}, \
        result.stdout[-6000:]
    dispatch_id = airflow.xcom("trigger_and_sense", "start")
    assert airflow.xcom("trigger_and_sense", "start", key="dispatch_id") == dispatch_id
    assert gw.dispatch(dispatch_id).status() == "succeeded"
    best = airflow.xcom("trigger_and_sense", "wait")
    assert best["C"] in (0.01, 0.1, 1.0, 10.0, 100.0) and best["accuracy"] >= 0.9, result.stdout[-6000:]
    assert f"[remote] best C={best['C']}" in result.stdout


def test_a_trainer_instance_is_constructed_once_and_trained_across_tasks(airflow, gw):
    from runhouse_gateway import GatewayError

    try:
        gw.instance("iris-trainer").delete()
    except GatewayError as err:
        assert err.status == 404
    result = airflow.dags_test("trainer_instance")
    states = airflow.task_states("trainer_instance")
    assert states == {t: ("success", 1) for t in ("construct", "epoch_0", "epoch_1", "evaluate")}, \
        result.stdout[-6000:]
    assert airflow.xcom("trainer_instance", "construct") == "iris-trainer"
    assert airflow.xcom("trainer_instance", "epoch_0")["epochs_run"] == 1
    assert airflow.xcom("trainer_instance", "epoch_1")["epochs_run"] == 2
    evaluated = airflow.xcom("trainer_instance", "evaluate")
    assert evaluated["epochs_run"] == 2 and evaluated["constructed"] == 1, evaluated
    assert evaluated["test_accuracy"] > 0.5, evaluated
    assert "[remote] trainer ready" in result.stdout, "the constructor's output is in the task log"
    assert "[remote] epoch 1: train accuracy" in result.stdout
    # Every method call is a dispatch of the instance, labelled with its task.
    run_id = airflow.latest_run_id("trainer_instance")
    calls = gw.dispatches(labels={"dag_id": "trainer_instance", "run_id": run_id, "instance": "iris-trainer"})
    assert sorted(d.data["labels"]["task_id"] for d in calls) == ["epoch_0", "epoch_1", "evaluate"]
    gw.instance("iris-trainer").delete()

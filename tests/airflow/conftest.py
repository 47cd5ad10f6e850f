"""A real Airflow home for the provider tests, one per session, connected to the
session's stack (the `stack` fixture of the `rh_stack` plugin, `tests/support/`).

The Airflow home is a temporary folder with a SQLite database, migrated once;
tests run `airflow ...` commands in it as subprocesses, exactly as a user would.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples" / "dags"
TEST_DAGS = Path(__file__).resolve().parent / "dags"
AIRFLOW = str(Path(sys.executable).parent / "airflow")


class AirflowHome:
    """An isolated Airflow installation state: config by environment, SQLite, no examples, no network."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.db = root / "airflow.db"
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "RH_"))},
            "AIRFLOW_HOME": str(root),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_FOLDER": str(EXAMPLES),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{self.db}",
            "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
            "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
            "AIRFLOW__CORE__ALLOWED_DESERIALIZATION_CLASSES_REGEXP": ".*",
            "AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST": json.dumps([
                {"name": "examples", "classpath": "airflow.dag_processing.bundles.local.LocalDagBundle",
                 "kwargs": {"path": str(EXAMPLES), "refresh_interval": 5}},
                {"name": "tests", "classpath": "airflow.dag_processing.bundles.local.LocalDagBundle",
                 "kwargs": {"path": str(TEST_DAGS), "refresh_interval": 5}},
            ]),
            "PYTHONPATH": os.pathsep.join([str(EXAMPLES), str(TEST_DAGS)]),
            "NO_PROXY": "*",
        }

    def connect(self, stack: dict[str, Any]) -> None:
        """Points the `runhouse_default` connection at the stack."""
        self.env["AIRFLOW_CONN_RUNHOUSE_DEFAULT"] = json.dumps({
            "conn_type": "runhouse", "host": stack["url"], "password": stack["token"],
            "extra": {"default_cluster": "local"},
        })

    def run(self, *args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess:
        """Runs an `airflow` command; its combined output is in ``.stdout``."""
        result = subprocess.run([AIRFLOW, *args], env=self.env, cwd=self.root, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"airflow {' '.join(args)} exited {result.returncode}:\n{result.stdout[-6000:]}")
        return result

    def python(self, code: str) -> Any:
        """Runs ``code`` in a fresh interpreter with this Airflow home; returns what it printed, as JSON."""
        result = subprocess.run([sys.executable, "-c", code], env=self.env, cwd=self.root, capture_output=True,
                                text=True, timeout=120)
        assert result.returncode == 0, result.stderr[-5000:]
        return json.loads(result.stdout.strip().splitlines()[-1])

    def popen(self, *args: str) -> subprocess.Popen:
        """Starts an `airflow` command; output goes to a file named after it, returned as ``.log_path``."""
        log_path = self.root / f"{args[0]}-{args[1] if len(args) > 1 else ''}-{time.time_ns()}.log"
        process = subprocess.Popen([AIRFLOW, *args], env=self.env, cwd=self.root, stdout=open(log_path, "w"),
                                   stderr=subprocess.STDOUT, start_new_session=True)
        process.log_path = log_path  # type: ignore[attr-defined]
        return process

    @staticmethod
    def dags_test_args(dag_id: str, folder: Path = EXAMPLES, *extra: str) -> list[str]:
        """`airflow dags test` of one DAG file (parsed alone, so it starts fast), from its bundle."""
        bundle = "examples" if folder == EXAMPLES else "tests"
        return ["dags", "test", dag_id, "-B", bundle, "-f", str(folder / f"{dag_id}.py"), *extra]

    def dags_test(self, dag_id: str, folder: Path = EXAMPLES, *extra: str, timeout: float = 300,
                  check: bool = False) -> subprocess.CompletedProcess:
        """Runs `airflow dags test` of one DAG to the end."""
        return self.run(*self.dags_test_args(dag_id, folder, *extra), timeout=timeout, check=check)

    def query(self, sql: str, *params: Any) -> list[tuple]:
        """Reads Airflow's metadata database (SQLite), to check task states and XComs."""
        with sqlite3.connect(self.db) as db:
            return db.execute(sql, params).fetchall()

    def task_states(self, dag_id: str) -> dict[str, tuple[str, int]]:
        """task_id → (state, try_number) of the DAG's latest run."""
        rows = self.query(
            "select task_id, state, try_number from task_instance where run_id = "
            "(select run_id from dag_run where dag_id = ? order by id desc limit 1) and dag_id = ?", dag_id, dag_id)
        return {task: (state, tries) for task, state, tries in rows}

    def latest_run_id(self, dag_id: str) -> str:
        """The run id of the DAG's latest run."""
        return self.query("select run_id from dag_run where dag_id = ? order by id desc limit 1", dag_id)[0][0]

    def xcom(self, dag_id: str, task_id: str, key: str = "return_value") -> Any:
        """An XCom of the DAG's latest run, decoded."""
        rows = self.query("select value from xcom where dag_id = ? and task_id = ? and key = ? and run_id = ?",
                          dag_id, task_id, key, self.latest_run_id(dag_id))
        if not rows:
            return None
        value = rows[0][0]
        return json.loads(value) if isinstance(value, (str, bytes)) else value


@pytest.fixture(scope="session")
def _migrating() -> Iterator[tuple[AirflowHome, subprocess.Popen]]:
    """Starts `airflow db migrate` at once, so it runs while the stack comes up."""
    root = Path(tempfile.mkdtemp(prefix="airflow-home-"))
    home = AirflowHome(root)
    migrate = home.popen("db", "migrate")
    yield home, migrate
    if migrate.poll() is None:
        migrate.kill()
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def airflow(_migrating: tuple[AirflowHome, subprocess.Popen], stack: dict[str, Any]) -> AirflowHome:
    """A migrated Airflow home for the session, connected to the stack."""
    home, migrate = _migrating
    assert migrate.wait(timeout=180) == 0, migrate.log_path.read_text()[-5000:]
    home.connect(stack)
    return home

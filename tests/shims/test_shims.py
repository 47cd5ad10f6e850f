"""The generated parameter layer of the orchestrator packages: current, and really generated."""

from __future__ import annotations

import ast
import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
GENERATOR = REPO / "scripts" / "gen_shims.py"
AIRFLOW = Path("providers/airflow/src/runhouse_provider/_generated.py")
PREFECT = Path("providers/prefect/src/prefect_runhouse/_generated.py")


def test_the_generated_modules_match_the_spec_and_the_openapi_document():
    result = subprocess.run([sys.executable, str(GENERATOR), "--check"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def _signature(tree: ast.Module, qualname: str) -> list[str]:
    *outer, name = qualname.split(".")
    body = tree.body
    for cls in outer:
        body = next(n for n in body if isinstance(n, ast.ClassDef) and n.name == cls).body
    fn = next(n for n in body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name == name)
    args = fn.args
    return [a.arg for a in args.posonlyargs + args.args + args.kwonlyargs]


def _create_fields(source: str) -> Any:
    tree = ast.parse(source)
    fn = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "create_fields")
    namespace: dict[str, Any] = {}
    exec(compile("from __future__ import annotations\nfrom typing import Any\n" + ast.get_source_segment(source, fn),
                 "create_fields", "exec"), namespace)
    return namespace["create_fields"]


def test_a_field_added_to_the_api_and_the_spec_reaches_both_packages_and_the_create_request(tmp_path):
    openapi = json.loads((REPO / "openapi" / "gateway.json").read_text())
    openapi["components"]["schemas"]["CreateDispatch"]["properties"]["priority"] = {
        "type": ["integer", "null"], "minimum": 0, "maximum": 9,
        "description": "Placement order among queued dispatches of a cluster.",
    }
    (tmp_path / "gateway.json").write_text(json.dumps(openapi))
    spec = (REPO / "providers" / "shims.toml").read_text() + (
        '\n[[param]]\nname = "priority"\napi = "priority"\ntype = "int"\ndefault = "None"\n'
        'shims = ["airflow.operator", "prefect.run", "prefect.trigger"]\n'
    )
    (tmp_path / "shims.toml").write_text(spec)
    out = tmp_path / "out"
    subprocess.run([sys.executable, str(GENERATOR), "--spec", str(tmp_path / "shims.toml"), "--openapi",
                    str(tmp_path / "gateway.json"), "--out", str(out)], check=True)
    airflow_source = (out / AIRFLOW).read_text()
    prefect_source = (out / PREFECT).read_text()

    assert "priority" in _signature(ast.parse(airflow_source), "OperatorParameters.__init__")
    assert "self.priority = priority" in airflow_source
    for task in ("run_remote", "run_remote_async", "trigger_dispatch", "trigger_dispatch_async"):
        assert "priority" in _signature(ast.parse(prefect_source), task), task
    assert "priority" not in _signature(ast.parse(prefect_source), "wait_for_dispatch")
    # Documented from the API, with its bounds.
    assert "Placement order among queued dispatches of a cluster. (0 to 9)" in airflow_source
    # The request builders put it into the create request as the API names it.
    for source in (airflow_source, prefect_source):
        assert _create_fields(source)(priority=3, timeout=60) == {"priority": 3, "timeout_s": 60}
        assert _create_fields(source)() == {}
    # The Prefect task hands it, with the rest of the call, to the lifecycle.
    spec_ = importlib.util.spec_from_file_location("prefect_runhouse._generated_priority", out / PREFECT)
    module = importlib.util.module_from_spec(spec_)
    spec_.loader.exec_module(module)
    seen: list[Any] = []
    module.lifecycle = type("Lifecycle", (), {"RemoteCall": module.lifecycle.RemoteCall,
                                              "trigger": staticmethod(lambda call: seen.append(call) or "id")})
    assert module.trigger_dispatch.fn(print, 1, 2, cluster="cpu", priority=5, flag=True) == "id"
    (call,) = seen
    assert call.request == {"priority": 5}
    assert (call.args, call.kwargs, call.cluster) == ([1, 2], {"flag": True}, "cpu")


def test_the_committed_spec_has_no_parameter_the_api_lacks():
    generator = _load_generator()
    params = generator.load()
    schemas = json.loads((REPO / "openapi" / "gateway.json").read_text())["components"]["schemas"]
    assert {p.schema for p in params if p.api} == {"CreateDispatch", "CreateInstance"}
    for p in params:
        if p.api:
            assert p.api in schemas[p.schema]["properties"], (p.name, p.schema, p.api)


def _load_generator() -> Any:
    spec = importlib.util.spec_from_file_location("gen_shims", GENERATOR)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gen_shims"] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module

"""Runs a notebook top to bottom: `python rh_notebook.py NOTEBOOK PARAMS_JSON OUT FAILURE_FILE`.

Parameters are injected papermill-style: a cell tagged
`injected-parameters` after the first cell tagged `parameters` (or first of
all, if none is). The executed notebook is written to OUT even when a cell
fails; a failing cell's exception goes to FAILURE_FILE as JSON.
"""

import json
import os
import re
import sys

notebook_path, params_json, out_path, failure_path = sys.argv[1:5]


def fail(failure, code=1):
    with open(failure_path, "w") as f:
        json.dump(failure, f)
    sys.exit(code)


try:
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError
except ImportError as exc:
    fail({
        "code": "notebook_runner_missing",
        "message": f"running a notebook needs `nbclient` and `ipykernel` in the call's environment "
                   f"(add them to its requirements): {exc}",
    })

nb = nbformat.read(notebook_path, as_version=4)
params = json.loads(params_json)
if params:
    source = "# Parameters\n" + "".join(f"{name} = {value!r}\n" for name, value in params.items())
    cell = nbformat.v4.new_code_cell(source)
    cell.metadata["tags"] = ["injected-parameters"]
    at = next((i + 1 for i, c in enumerate(nb.cells) if "parameters" in c.get("metadata", {}).get("tags", [])), 0)
    nb.cells.insert(at, cell)

printed = set()


def show(cell, cell_index, **_):
    """Sends a cell's output to the call's log as soon as the cell has run."""
    if cell_index in printed:
        return
    printed.add(cell_index)
    for output in cell.get("outputs", []):
        if output.get("output_type") == "stream":
            stream = sys.stderr if output.get("name") == "stderr" else sys.stdout
            stream.write(output.get("text", ""))
        elif "text/plain" in output.get("data", {}):
            print(output["data"]["text/plain"])
    sys.stdout.flush()
    sys.stderr.flush()


client = NotebookClient(nb, kernel_name="python3", timeout=None, on_cell_executed=show,
                        resources={"metadata": {"path": os.path.dirname(os.path.abspath(notebook_path))}})
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
failure = None
try:
    client.execute()
except CellExecutionError as exc:
    failure = {
        "code": "user_exception",
        "remote_type": exc.ename,
        "message": f"{exc.ename}: {exc.evalue}",
        "traceback": ANSI.sub("", str(exc)),
    }
finally:
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    nbformat.write(nb, out_path)
if failure is not None:
    fail(failure)

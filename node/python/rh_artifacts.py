"""Keep files a call makes: importable in every call the gateway runs.

Everything a call writes under its output folder ($RH_OUTPUTS, also
`outputs_dir()`) is uploaded when the call ends and listed as the
dispatch's artifacts. `artifact(path)` copies a file there and returns a
reference to it, for a call to return.
"""

import os
import shutil
import threading

_local = threading.local()


def _set(path):
    """Sets this thread's output folder (the node does this around each call)."""
    _local.path = path


def outputs_dir():
    """This call's output folder: what is written here is kept."""
    path = getattr(_local, "path", None) or os.environ.get("RH_OUTPUTS")
    if not path:
        raise RuntimeError("no output folder: this code is not running as a Runhouse Gateway call")
    return path


def artifact(path, name=None):
    """Keeps the file at `path` as artifact `name` (default: its file name)
    and returns a reference to it: {"artifact": name, "size_bytes": n}."""
    name = name or os.path.basename(path)
    parts = name.split("/")
    if name.startswith("/") or any(p in ("", ".", "..") for p in parts) or "\\" in name:
        raise ValueError(f"artifact name {name!r} must be a relative path inside the output folder")
    target = os.path.join(outputs_dir(), *parts)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    if os.path.abspath(path) != os.path.abspath(target):
        shutil.copyfile(path, target)
    return {"artifact": name, "size_bytes": os.path.getsize(target)}

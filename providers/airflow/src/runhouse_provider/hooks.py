"""The Airflow connection to a Runhouse Gateway, as a hook.

Operators, sensors and triggers get their ``runhouse_gateway.Gateway`` here,
so the connection (gateway URL, token, default cluster) is read in one place.
All gateway traffic goes through that SDK client; this module has no HTTP code.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from typing import Any, Callable

from airflow.sdk import BaseHook
from airflow.sdk.exceptions import AirflowNotFoundException
from runhouse_gateway import Dispatch, Gateway, GatewayError, RemoteClass, RemoteFunction


#: How long a cancel from ``on_kill`` may take (Airflow sends SIGKILL 5 s after SIGTERM).
CANCEL_BUDGET_S = 3.0


def cancel_within_budget(handle: Dispatch, reason: str, log: Any) -> None:
    """Cancels ``handle``, giving up after ``CANCEL_BUDGET_S`` (the task is going down either way)."""

    def cancel() -> None:
        try:
            handle.cancel(reason=reason)
        except Exception as err:  # noqa: BLE001 - logged; the task is going down anyway
            log.error("Could not cancel dispatch %s: %s", handle.id, err)

    log.warning("Cancelling dispatch %s: %s", handle.id, reason)
    worker = threading.Thread(target=cancel, name="runhouse-cancel", daemon=True)
    worker.start()
    worker.join(CANCEL_BUDGET_S)
    if worker.is_alive():
        log.error("The cancel of dispatch %s did not finish within %s s", handle.id, CANCEL_BUDGET_S)


@dataclass(frozen=True)
class GatewaySettings:
    """Where the gateway is, how to authenticate, and which cluster to use by default."""

    url: str
    token: str
    default_cluster: str | None = None


def settings_from_connection(conn: Any) -> GatewaySettings:
    """Reads a ``runhouse`` connection: host is the gateway URL, password the token, extra ``default_cluster``."""
    host = (conn.host or "").strip().rstrip("/")
    if not host:
        raise ValueError(f"connection {conn.conn_id!r} has no gateway URL (the host field)")
    url = host if "://" in host else f"{conn.schema or 'http'}://{host}"
    if conn.port and url.count(":") < 2:
        url = f"{url}:{conn.port}"
    extra = conn.extra_dejson or {}
    cluster = extra.get("default_cluster") or extra.get("extra__runhouse__default_cluster") or None
    return GatewaySettings(url=url, token=conn.password or "", default_cluster=cluster)


class RunhouseHook(BaseHook):
    """A Runhouse Gateway connection.

    :param runhouse_conn_id: the Airflow connection (type ``runhouse``). If it does not
        exist and it is the default one, ``RH_GATEWAY_URL``/``RH_TOKEN``/``RH_CLUSTER``
        from the environment are used instead, as the SDK does.
    """

    conn_name_attr = "runhouse_conn_id"
    default_conn_name = "runhouse_default"
    conn_type = "runhouse"
    hook_name = "Runhouse Gateway"

    def __init__(self, runhouse_conn_id: str = default_conn_name) -> None:
        super().__init__()
        self.runhouse_conn_id = runhouse_conn_id
        self._settings: GatewaySettings | None = None
        self._gateway: Gateway | None = None

    def _env_settings(self, err: AirflowNotFoundException) -> GatewaySettings:
        token = os.environ.get("RH_TOKEN")
        if self.runhouse_conn_id != self.default_conn_name or not token:
            raise err
        return GatewaySettings(url=os.environ.get("RH_GATEWAY_URL", "http://127.0.0.1:8080"), token=token,
                               default_cluster=os.environ.get("RH_CLUSTER") or None)

    @property
    def settings(self) -> GatewaySettings:
        """The connection's settings (read once)."""
        if self._settings is None:
            try:
                self._settings = settings_from_connection(self.get_connection(self.runhouse_conn_id))
            except AirflowNotFoundException as err:
                self._settings = self._env_settings(err)
        return self._settings

    def get_conn(self) -> Gateway:
        """The SDK client. It never cancels on Ctrl-C by itself: the operator owns cancellation."""
        if self._gateway is None:
            s = self.settings
            self._gateway = Gateway(s.url, s.token, cancel_on_interrupt=False)
        return self._gateway

    async def aget_conn(self) -> Gateway:
        """``get_conn`` for triggers: reads the connection without blocking the event loop."""
        if self._settings is None:
            try:
                self._settings = settings_from_connection(await self.aget_connection(self.runhouse_conn_id))
            except AirflowNotFoundException as err:
                self._settings = self._env_settings(err)
        return self.get_conn()

    def remote_function(self, *, function: str | None = None, python_callable: Callable[..., Any] | None = None,
                        cluster: str | None = None, requirements: list[str] | None = None) -> RemoteFunction:
        """Binds a registered function name, or a local callable (its project is packed and uploaded
        if the gateway lacks it), to ``cluster`` (default: the connection's default cluster)."""
        gw = self.get_conn()
        cluster = cluster or self.settings.default_cluster
        if function is not None:
            if requirements:
                raise ValueError("requirements belong to the registered function; pass them when registering it")
            return gw.registered(function, cluster)
        if python_callable is None:
            raise ValueError("give function= (a registered name) or python_callable=")
        if not cluster:
            raise ValueError("no cluster: pass cluster= or set the connection's default cluster")
        spec = gw.function(python_callable, requirements=requirements)
        remote = spec.to(cluster)
        _check_importable(python_callable, spec.root, spec.module)
        return remote

    def remote_class(self, *, cls: type | str, cluster: str | None = None,
                     requirements: list[str] | None = None) -> RemoteClass:
        """Binds a class from an ordinary module (its project is packed and uploaded if the gateway
        lacks it), or ``"module:Qualname"``, to ``cluster`` (default: the connection's default cluster)."""
        cluster = cluster or self.settings.default_cluster
        if not cluster:
            raise ValueError("no cluster: pass cluster= or set the connection's default cluster")
        spec = self.get_conn().cls(cls, requirements=requirements)
        remote = spec.to(cluster)
        if not isinstance(cls, str):
            _check_importable(cls, spec.root, spec.module)
        return remote

    def get_dispatch(self, dispatch_id: str) -> Dispatch:
        """Re-attaches to a dispatch by id."""
        return self.get_conn().dispatch(dispatch_id)

    def dispatch_url(self, dispatch_id: str) -> str:
        """The dispatch's page on the gateway's dashboard (live output, timeline, outcome, cancel)."""
        return f"{self.settings.url.rstrip('/')}/ui/runs/{dispatch_id}"

    def test_connection(self) -> tuple[bool, str]:
        """Airflow's "Test" button: lists one dispatch, which needs a reachable gateway and a valid token."""
        try:
            self.get_conn().dispatches(limit=1)
        except GatewayError as err:
            return False, f"the gateway refused the token: {err}"
        except Exception as err:  # noqa: BLE001 - any failure is the answer to show
            return False, f"cannot reach the gateway at {self.settings.url}: {err}"
        return True, f"connected to {self.settings.url}"


def _check_importable(fn: Callable[..., Any], root: str, module: str | None) -> None:
    """The node imports ``fn.__module__`` from the packed folder; say so clearly when it cannot."""
    name = getattr(fn, "__module__", None)
    if module is None or name in (None, "__main__") or module == name:
        return
    if name.startswith("unusual_prefix_"):
        raise ValueError(
            f"{fn.__qualname__} is defined in a DAG file, which the node cannot import: move it to an ordinary "
            f"module next to the DAG (e.g. {module.rsplit('.', 1)[0] + '.' if '.' in module else ''}steps.py) "
            f"and import it from there"
        )
    raise ValueError(
        f"{fn.__qualname__} is in module {name!r}, but the packed project folder {root} holds it as {module!r}, "
        f"so the node could not import it. Put a pyproject.toml (or requirements.txt) in the folder your "
        f"module is imported from (usually the DAGs folder), so that folder is the one shipped."
    )


class UsesRunhouseHook:
    """For operators and sensors: one hook (one gateway connection) per task run,
    made on first use from ``self.runhouse_conn_id``."""

    runhouse_conn_id: str

    @property
    def hook(self) -> RunhouseHook:
        """The connection (one per task run)."""
        if not hasattr(self, "_hook"):
            self._hook = RunhouseHook(self.runhouse_conn_id)
        return self._hook

"""The Prefect block that says where the gateway is and how to authenticate.

All gateway traffic goes through the ``runhouse_gateway`` SDK client made
here; this package has no HTTP code.
"""

from __future__ import annotations

import os
import threading
from typing import Optional

from prefect.blocks.core import Block
from pydantic import Field, SecretStr
from runhouse_gateway import Gateway

DEFAULT_URL = "http://127.0.0.1:8080"


class RunhouseCredentials(Block):
    """A Runhouse Gateway: its URL, a token, and the cluster to use when a task names none.

    Save one with ``RunhouseCredentials(url=..., token=...).save("prod")`` and load it with
    ``RunhouseCredentials.load("prod")``. Tasks given no block read ``RH_GATEWAY_URL``,
    ``RH_TOKEN`` and ``RH_CLUSTER`` from the environment, as the SDK does.
    """

    _block_type_name = "Runhouse Credentials"
    _block_type_slug = "runhouse-credentials"
    _description = "Where a Runhouse Gateway is, the token to use, and the default cluster."
    _documentation_url = "https://github.com/run-house/runhouse-gateway/tree/main/providers/prefect"  # type: ignore[assignment]

    url: str = Field(default=DEFAULT_URL, title="Gateway URL", description="The gateway's base URL.")
    token: SecretStr = Field(default=..., description="A gateway token (rh-gateway token create).")
    default_cluster: Optional[str] = Field(
        default=None, title="Default cluster", description="The cluster tasks use when they name none."
    )

    @classmethod
    def from_env(cls) -> "RunhouseCredentials":
        """The block the environment describes (``RH_GATEWAY_URL``, ``RH_TOKEN``, ``RH_CLUSTER``)."""
        token = os.environ.get("RH_TOKEN", "")
        if not token:
            raise ValueError("no Runhouse credentials: pass credentials=RunhouseCredentials.load(...) or set RH_TOKEN")
        return cls(url=os.environ.get("RH_GATEWAY_URL", DEFAULT_URL), token=SecretStr(token),
                   default_cluster=os.environ.get("RH_CLUSTER") or None)

    def get_client(self) -> Gateway:
        """The SDK client (one per gateway and token in a process, so tasks reuse its connections).
        It never cancels on Ctrl-C by itself: the tasks own cancellation."""
        key = (self.url.rstrip("/"), self.token.get_secret_value())
        with _CLIENTS_LOCK:
            client = _CLIENTS.get(key)
            if client is None:
                client = _CLIENTS[key] = Gateway(key[0], key[1], cancel_on_interrupt=False)
        return client


_CLIENTS: dict[tuple[str, str], Gateway] = {}
_CLIENTS_LOCK = threading.Lock()

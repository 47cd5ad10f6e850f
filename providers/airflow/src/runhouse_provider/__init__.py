"""Apache Airflow provider for Runhouse Gateway.

Airflow finds this package through the ``apache_airflow_provider`` entry point
and calls :func:`get_provider_info`, which declares the ``runhouse``
connection type (with its form fields), the hook, the trigger module and the
extra link. Nothing here imports Airflow, so listing providers stays cheap.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"


def get_provider_info() -> dict[str, Any]:
    """What Airflow's providers manager reads: names, connection type, form fields, triggers, links."""
    return {
        "package-name": "airflow-provider-runhouse",
        "name": "Runhouse Gateway",
        "description": "Run ordinary Python functions on remote compute through a Runhouse Gateway: "
        "trigger, stream logs, sense, cancel and re-attach.",
        "versions": [__version__],
        "integrations": [
            {
                "integration-name": "Runhouse Gateway",
                "tags": ["software"],
            }
        ],
        "operators": [
            {"integration-name": "Runhouse Gateway", "python-modules": ["runhouse_provider.operators"]}
        ],
        "sensors": [{"integration-name": "Runhouse Gateway", "python-modules": ["runhouse_provider.sensors"]}],
        "hooks": [{"integration-name": "Runhouse Gateway", "python-modules": ["runhouse_provider.hooks"]}],
        "triggers": [{"integration-name": "Runhouse Gateway", "python-modules": ["runhouse_provider.triggers"]}],
        "extra-links": ["runhouse_provider.links.RunhouseDispatchLink",
                        "runhouse_provider.links.RunhouseArtifactsLink"],
        "connection-types": [
            {
                "connection-type": "runhouse",
                "hook-class-name": "runhouse_provider.hooks.RunhouseHook",
                "hook-name": "Runhouse Gateway",
                "conn-fields": {
                    "default_cluster": {
                        "label": "Default cluster",
                        "description": "The cluster a RunhouseOperator uses when it names none.",
                        "schema": {"type": ["string", "null"]},
                    },
                },
                "ui-field-behaviour": {
                    "hidden-fields": ["schema", "login", "port", "extra"],
                    "relabeling": {"host": "Gateway URL", "password": "Token"},
                    "placeholders": {
                        "host": "https://gateway.example.com",
                        "password": "a JWT with the dispatch:read and dispatch:write scopes",
                        "default_cluster": "cpu",
                    },
                },
            }
        ],
    }

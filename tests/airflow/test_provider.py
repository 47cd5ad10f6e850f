"""Airflow finds the provider: its package, connection type and form, hook, trigger and link."""

from __future__ import annotations

import json


def test_airflow_providers_list_shows_the_runhouse_provider(airflow):
    out = airflow.run("providers", "list", "-o", "json").stdout
    providers = {p["package_name"]: p for p in json.loads(out[out.index("["):])}
    assert providers["airflow-provider-runhouse"]["version"] == "0.1.0"


def test_the_runhouse_connection_form_has_url_token_and_default_cluster_and_the_trigger_and_link_register(airflow):
    form = airflow.python(
        "import json\n"
        "from airflow.providers_manager import ProvidersManager\n"
        "pm = ProvidersManager()\n"
        "w = pm.connection_form_widgets['extra__runhouse__default_cluster']\n"
        "print(json.dumps({'hook': pm.hooks['runhouse'].hook_class_name, 'name': pm.hooks['runhouse'].hook_name,\n"
        "  'field': w.field, 'behaviour': pm.field_behaviours['runhouse'],\n"
        "  'triggers': [t.trigger_class_name for t in pm.trigger if 'runhouse' in t.package_name],\n"
        "  'links': sorted(l for l in pm.extra_links_class_names if 'runhouse' in l)}))\n")
    assert form["hook"] == "runhouse_provider.hooks.RunhouseHook" and form["name"] == "Runhouse Gateway"
    assert form["field"]["schema"]["title"] == "Default cluster"
    assert form["behaviour"]["relabeling"] == {"host": "Gateway URL", "password": "Token"}
    assert "password" not in form["behaviour"]["hidden_fields"]
    assert form["links"] == ["runhouse_provider.links.RunhouseArtifactsLink", "runhouse_provider.links.RunhouseDispatchLink"]
    assert form["triggers"] == ["runhouse_provider.triggers"]


def test_the_hook_connection_test_reaches_the_gateway_and_rejects_a_bad_token(airflow):
    verdicts = airflow.python(
        "import json, os\n"
        "from runhouse_provider.hooks import RunhouseHook\n"
        "good = RunhouseHook().test_connection()\n"
        "conn = json.loads(os.environ['AIRFLOW_CONN_RUNHOUSE_DEFAULT'])\n"
        "os.environ['AIRFLOW_CONN_RUNHOUSE_BAD'] = json.dumps(dict(conn, password='not-a-token'))\n"
        "bad = RunhouseHook('runhouse_bad').test_connection()\n"
        "print(json.dumps([good, bad]))\n")
    (good_ok, good_msg), (bad_ok, bad_msg) = verdicts
    assert good_ok, good_msg
    assert not bad_ok and "refused the token" in bad_msg


def test_operator_parameters_for_method_calls_are_checked_when_the_dag_is_parsed(airflow):
    verdicts = airflow.python(
        "import json\n"
        "from runhouse_provider.operators import RunhouseInstanceOperator, RunhouseOperator\n"
        "def verdict(make):\n"
        "    try:\n"
        "        make()\n"
        "        return 'ok'\n"
        "    except ValueError as err:\n"
        "        return str(err)\n"
        "print(json.dumps([\n"
        "  verdict(lambda: RunhouseOperator(task_id='a', instance='t', method='m')),\n"
        "  verdict(lambda: RunhouseOperator(task_id='b', instance='t')),\n"
        "  verdict(lambda: RunhouseOperator(task_id='c', instance='t', method='m', function='f')),\n"
        "  verdict(lambda: RunhouseOperator(task_id='d', instance='t', method='m', cluster='cpu')),\n"
        "  verdict(lambda: RunhouseInstanceOperator(task_id='e', cls='m:C', instance='t')),\n"
        "  verdict(lambda: RunhouseInstanceOperator(task_id='f', cls=None, instance='t')),\n"
        "  sorted(RunhouseInstanceOperator.template_fields),\n"
        "]))\n")
    assert verdicts[0] == "ok" and verdicts[4] == "ok"
    assert "go together" in verdicts[1]
    assert "exactly one of" in verdicts[2]
    assert "where its instance lives" in verdicts[3]
    assert "cls=" in verdicts[5]
    assert verdicts[6] == ["cluster", "instance", "op_args", "op_kwargs", "requirements"]

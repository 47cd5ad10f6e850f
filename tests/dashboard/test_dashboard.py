"""The dashboard in a real browser (headless Chromium, the `rh_browser` plugin) against the
session's `rh-gateway dev` stack (the `rh_stack` plugin)."""

from __future__ import annotations

import base64
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

# The functions these tests dispatch, packed from `project/` like a user's code.
sys.path.insert(0, str(Path(__file__).resolve().parent / "project"))

import ui_jobs  # noqa: E402
from rh_browser import login_link, note
from rh_stack import mint_token

TERMINAL = {"succeeded", "failed", "cancelled", "timed_out"}


def wait_for(condition: Callable[[], Any], what: str, timeout: float = 60) -> Any:
    """Polls `condition` until it returns something truthy, or fails naming `what`."""
    deadline = time.time() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def finished(dispatch: Any) -> str:
    return wait_for(lambda: dispatch.status() if dispatch.status() in TERMINAL else None, f"{dispatch.id} to finish")


def test_a_login_link_signs_in_once_with_a_strict_httponly_cookie_and_a_strict_csp(dashboard, stack):
    link = login_link(stack["url"], stack["token"])
    first = dashboard.browser.new_context()
    page = first.new_page()
    response = page.goto(link)
    assert page.url.endswith("/ui/runs") and page.locator("h1").inner_text() == "Runs"
    csp = response.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "default-src 'none'" in csp
    assert response.headers["x-content-type-options"] == "nosniff"
    (cookie,) = [c for c in first.cookies() if c["name"] == "rh_session"]
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/ui"
    assert stack["token"] not in page.url and stack["token"] not in page.content()
    dashboard.shot(page, "runs")

    second = dashboard.browser.new_context().new_page()
    again = second.goto(link)
    assert again.status == 410
    assert "expired or was already used" in second.locator("p.error").inner_text()
    assert not [c for c in second.context.cookies() if c["name"] == "rh_session"]


def test_a_pasted_token_signs_in_and_a_bad_one_is_refused_by_name(dashboard, stack):
    page = dashboard.browser.new_context().new_page()
    page.goto(f"{stack['url']}/ui/runs/00000000-0000-7000-8000-000000000000")
    assert "/ui/login?next=" in page.url  # not signed in: to the sign-in page, remembering where to go
    page.fill("textarea[name=token]", "not-a-jwt")
    page.click("button[type=submit]")
    assert "that token was refused" in page.locator("p.error").inner_text()
    page.fill("textarea[name=token]", stack["token"])
    page.click("button[type=submit]")
    page.wait_for_load_state()
    assert page.url.endswith("/ui/runs/00000000-0000-7000-8000-000000000000")
    assert "not found" in page.locator("p.error").inner_text()


def test_revoking_the_token_ends_its_sessions(dashboard, stack):
    token = mint_token(stack, "default", "dispatch:read", sub="leaver")
    page = dashboard.page(token)
    payload = token.split(".")[1]
    jti = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["jti"]
    revoke = subprocess.run([os.path.join(os.environ["RH_BIN_DIR"], "rh-gateway"), "token", "revoke", jti],
                            cwd=stack["work"], capture_output=True, text=True, timeout=60)
    assert revoke.returncode == 0, revoke.stderr

    def signed_out() -> bool:
        page.goto(f"{stack['url']}/ui/runs")
        return "/ui/login" in page.url

    wait_for(signed_out, "the revoked token's session to end", timeout=10)


def test_output_appears_live_with_colours_and_one_line_per_progress_bar(dashboard, gw, stack):
    page = dashboard.page()
    # Record when each output line reaches the page, by the browser's clock (same machine as the node's).
    page.add_init_script("""
        window.__arrivals = [];
        new MutationObserver(() => {
          const log = document.getElementById('log');
          if (!log) return;
          for (const line of log.querySelectorAll('.line:not([data-seen])')) {
            line.dataset.seen = '1';
            window.__arrivals.push([Date.now() / 1000, line.textContent]);
          }
        }).observe(document, {subtree: true, childList: true, characterData: true});
    """)
    ticker = gw.function(ui_jobs.ticker).to("local").dispatch(40, 0.1)
    page.goto(f"{stack['url']}/ui/runs/{ticker.id}")
    # (Polled from here: the page's policy forbids the eval that `wait_for_function` needs.)
    wait_for(lambda: page.evaluate("window.__arrivals.filter(a => a[1].includes('printed_at=')).length") >= 25,
             "25 output lines on the page", timeout=30)
    arrivals = page.evaluate("window.__arrivals")
    latencies = [at - float(text.split("printed_at=")[1].split()[0]) for at, text in arrivals if "printed_at=" in text]
    first = latencies[0]
    summary = {"lines": len(latencies), "first_s": round(first, 3), "median_s": round(statistics.median(latencies), 3),
               "p95_s": round(sorted(latencies)[int(0.95 * (len(latencies) - 1))], 3)}
    (dashboard.shots / "live-log-latency.json").write_text(json.dumps(summary))
    note(f"live output latency in the browser: {summary}")
    assert first < 1.0, summary  # the bar: the first line within 1 s
    assert page.locator("#log .fg-green").first.inner_text().startswith("tick 0")
    assert finished(ticker) == "succeeded"
    page.wait_for_selector("[data-run][data-terminal='true']", timeout=30_000)  # reloaded with the outcome
    assert json.loads(page.locator("pre.result").inner_text()) == 40
    dashboard.shot(page, "run")

    bar = gw.function(ui_jobs.progress).to("local").dispatch(60)
    assert finished(bar) == "succeeded"
    page.goto(f"{stack['url']}/ui/runs/{bar.id}")
    page.wait_for_selector("#log[data-ended='true']")
    lines = [t for t in page.locator("#log .line").all_inner_texts() if "progress" in t]
    assert lines == ["progress 60/60"], lines


def test_cancel_from_the_page_stops_the_remote_process(dashboard, gw, stack, shared_tmp):
    pid_file = shared_tmp / "pid"
    sleeper = gw.function(ui_jobs.sleeper).to("local").dispatch(str(pid_file))
    page = dashboard.page()
    page.goto(f"{stack['url']}/ui/runs/{sleeper.id}")
    page.wait_for_selector("#log .line:has-text('sleeping')", timeout=30_000)
    pid = int(pid_file.read_text())
    page.fill("form.cancel input[name=reason]", "stopped from the browser test")
    page.click("form.cancel button")
    page.wait_for_selector("[data-run][data-terminal='true']", timeout=30_000)
    assert page.locator("[data-live]").first.inner_text() == "cancelled"
    assert sleeper.status() == "cancelled"
    assert "stopped from the browser test" in page.content()

    def gone() -> bool:
        try:
            os.kill(pid, 0)
            return False
        except ProcessLookupError:
            return True

    wait_for(gone, f"the remote process {pid} to exit", timeout=10)


def test_a_failed_run_shows_its_exception_and_traceback(dashboard, gw, stack):
    failing = gw.function(ui_jobs.boom).to("local").dispatch()
    assert finished(failing) == "failed"
    page = dashboard.page()
    page.goto(f"{stack['url']}/ui/runs/{failing.id}")
    assert "ValueError" in page.locator("section.failure").inner_text()
    traceback = page.locator("pre.traceback").inner_text()
    assert "Traceback" in traceback and "the data had no rows" in traceback
    dashboard.shot(page, "failed-run")


def test_runs_filter_by_label_and_states_update_without_reloading(dashboard, gw, stack):
    ticker = gw.function(ui_jobs.ticker).to("local")
    alpha = ticker.dispatch(1, 0, labels={"dag_id": "alpha_dag"})
    beta = ticker.dispatch(1, 0, labels={"dag_id": "beta_dag"})
    slow = ticker.dispatch(20, 0.1, labels={"dag_id": "alpha_dag"})
    page = dashboard.page()
    page.fill("input[name=label]", "dag_id=alpha_dag")
    page.click("form.filters button")
    page.wait_for_url("**/ui/runs?**")
    ids = page.locator("table.runs tbody tr").evaluate_all("rows => rows.map(r => r.dataset.id)")
    assert alpha.id in ids and slow.id in ids and beta.id not in ids
    # The slow one turns succeeded in place, without a reload.
    page.evaluate("window.__same_document = true")
    page.wait_for_selector(f"[data-live='{slow.id}']:text('succeeded')", timeout=30_000)
    assert page.evaluate("window.__same_document") is True
    finished(beta)


def test_user_controlled_text_renders_as_text_and_runs_no_script(dashboard, gw, stack):
    labels = {"note": "<script>alert('label')</script>", "img": "<img src=x onerror=alert('label-img')>"}
    hostile = gw.function(ui_jobs.hostile).to("local").dispatch(labels=labels)
    assert finished(hostile) == "succeeded"
    page = dashboard.page()
    page.goto(f"{stack['url']}/ui/runs/{hostile.id}")
    page.wait_for_selector("#log[data-ended='true']")
    log = page.locator("#log").inner_text()
    assert "<script>alert('log')</script>" in log and "onerror=\"alert('img')\"" in log
    assert "<script>alert('result')</script>" in page.locator("pre.result").inner_text()
    assert page.locator("main script, main img").count() == 0
    page.goto(f"{stack['url']}/ui/runs?label=note%3D%3Cscript%3Ealert('label')%3C%2Fscript%3E")
    assert "<script>alert('label')</script>" in page.locator("table.runs").inner_text()
    assert page.locator("main script, main img").count() == 0
    assert page.dialogs == []


def test_cancel_needs_the_csrf_token_and_write_scope(dashboard, gw, stack, shared_tmp):
    sleeper = gw.function(ui_jobs.sleeper).to("local").dispatch(str(shared_tmp / "pid"))
    wait_for(lambda: sleeper.status() == "running", "the sleeper to start")
    cancel_url = f"{stack['url']}/ui/runs/{sleeper.id}/cancel"

    admin = dashboard.page()
    forged = admin.request.post(cancel_url, form={"reason": "no token"})
    assert forged.status == 403 and "CSRF" in forged.text()

    reader = dashboard.page(mint_token(stack, "default", "dispatch:read", sub="reader"))
    reader.goto(f"{stack['url']}/ui/runs/{sleeper.id}")
    assert reader.locator("form.cancel").count() == 0
    csrf = reader.locator("input[name=csrf]").first.get_attribute("value")
    refused = reader.request.post(cancel_url, form={"csrf": csrf, "reason": "read-only"})
    assert refused.status == 403 and "dispatch:write" in refused.text()
    dashboard.shot(reader, "read-only-run")
    assert sleeper.status() == "running"
    sleeper.cancel()


def test_a_session_sees_only_its_own_project(dashboard, gw, stack):
    mine = gw.function(ui_jobs.ticker).to("local").dispatch(1, 0)
    other = dashboard.page(mint_token(stack, "elsewhere", "dispatch:read,dispatch:write", sub="other"))
    response = other.goto(f"{stack['url']}/ui/runs/{mine.id}")
    assert response.status == 404
    other.goto(f"{stack['url']}/ui/runs")
    assert mine.id not in other.content()
    for path in (f"/ui/runs/{mine.id}/logs", f"/ui/runs/{mine.id}/output.txt"):
        assert other.request.get(stack["url"] + path).status == 404
    finished(mine)


def test_clusters_and_function_charts_render(dashboard, gw, stack):
    done = gw.function(ui_jobs.ticker).to("local").dispatch(1, 0)
    finished(done)
    page = dashboard.page()
    page.goto(f"{stack['url']}/ui/clusters")
    text = page.locator("main").inner_text()
    assert "local-1" in text and "slots used / total" in text.lower() and "No autostop" in text
    dashboard.shot(page, "clusters")
    page.goto(f"{stack['url']}/ui/runs/{done.id}")
    page.click("text=ui_jobs:ticker")
    assert page.locator("svg.durations polyline.p50").count() == 1
    assert page.locator("svg.outcomes rect.st-succeeded").count() >= 1
    dashboard.shot(page, "function")


def test_the_screenshots_exist(dashboard):
    """Runs last in this file: every page above left its screenshot."""
    names = {p.name for p in Path(dashboard.shots).glob("*.png")}
    assert {"runs.png", "run.png", "failed-run.png", "clusters.png", "function.png"} <= names, names

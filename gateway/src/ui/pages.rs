//! The dashboard's HTML. Every value spliced in with `(…)` is escaped by
//! maud; nothing here uses `PreEscaped` on anything a user or their code
//! controls.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use maud::{html, Markup, DOCTYPE};
use uuid::Uuid;

use super::assets;
use super::charts::{self, GanttBar};
use super::handlers::RunsQuery;
use crate::app::cluster::ClusterView;
use crate::config::UiSettings;
use crate::db::ui::FunctionHour;

/// What every signed-in page shows in its header.
pub struct Page<'a> {
    pub project: &'a str,
    pub sub: &'a str,
    pub csrf: &'a str,
    /// The highlighted navigation entry.
    pub nav: &'static str,
}

/// A dispatch as the lists and the run page show it.
pub struct RunView {
    pub dispatch: wire::Dispatch,
    /// `cluster/node`, when it was placed.
    pub node: Option<String>,
    /// Where else to look at it: its orchestrator's page, its run's Gantt chart.
    pub links: Vec<Link>,
}

/// A labelled link.
pub struct Link {
    pub text: String,
    pub href: String,
}

const STATES: [&str; 7] = ["queued", "running", "cancelling", "succeeded", "failed", "cancelled", "timed_out"];

fn head(title: &str) -> Markup {
    html! {
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            title { (title) " · Runhouse Gateway" }
            link rel="stylesheet" href=(assets::url("style.css"));
            script type="module" src=(assets::url("app.js")) {}
        }
    }
}

fn layout(page: &Page, title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body {
                header.top {
                    a.brand href="/ui/runs" { "Runhouse Gateway" }
                    nav {
                        @for (key, text, href) in [("runs", "Runs", "/ui/runs"), ("clusters", "Clusters", "/ui/clusters"), ("schedules", "Schedules & instances", "/ui/schedules")] {
                            a class=(if page.nav == key { "active" } else { "" }) href=(href) { (text) }
                        }
                    }
                    div.who {
                        span { "project " strong { (page.project) } " · " (page.sub) }
                        form method="post" action="/ui/logout" {
                            input type="hidden" name="csrf" value=(page.csrf);
                            button.link type="submit" { "Sign out" }
                        }
                    }
                }
                main { h1 { (title) } (body) }
            }
        }
    }
}

fn bare(title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body.bare { main.narrow { h1 { (title) } (body) } }
        }
    }
}

/// The sign-in page.
pub fn login(next: &str, message: Option<&str>) -> Markup {
    bare(
        "Sign in",
        html! {
            @if let Some(message) = message { p.error role="alert" { (message) } }
            p { "Open the one-time link that " code { "rh ui" } " or " code { "make run" } " prints, or paste a token." }
            form method="post" action="/ui/login" {
                input type="hidden" name="next" value=(next);
                label for="token" { "Token" }
                textarea #token name="token" rows="4" autocomplete="off" spellcheck="false" required {}
                button type="submit" { "Sign in" }
            }
            p.hint { "The browser keeps only a session cookie (HttpOnly, SameSite=Strict) that acts as this token and ends when it is revoked." }
        },
    )
}

/// An error page.
pub fn error_page(title: &str, message: &str) -> Markup {
    bare(
        title,
        html! {
            p.error role="alert" { (message) }
            p { a href="/ui/runs" { "Back to runs" } " · " a href="/ui/login" { "Sign in" } }
        },
    )
}

/// Loads `url` again from this origin, so the SameSite=Strict cookie goes
/// with it (see `UiSession`).
pub fn reload(url: &str) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta http-equiv="refresh" content=(format!("0; url={url}"));
                title { "Runhouse Gateway" }
            }
            body { p { a href=(url) { "Continue to the Runhouse Gateway dashboard" } } }
        }
    }
}

/// How long it ran (or has been running, or queued).
pub fn duration_text(d: &wire::Dispatch) -> String {
    match (d.started_at, d.finished_at) {
        (Some(start), Some(end)) => charts::short_duration((end - start).num_milliseconds() as f64),
        (Some(start), None) => charts::short_duration((Utc::now() - start).num_milliseconds() as f64),
        (None, Some(_)) => "–".into(),
        (None, None) => {
            format!("queued {}", charts::short_duration((Utc::now() - d.created_at).num_milliseconds() as f64))
        }
    }
}

/// A dispatch's orchestrator pages (when `ui.airflow_url`/`ui.prefect_url`
/// are set) and the Gantt chart of the run it belongs to.
pub fn orchestrator_links(labels: &BTreeMap<String, String>, ui: &UiSettings) -> Vec<Link> {
    let mut links = Vec::new();
    let get = |key: &str| labels.get(key).map(String::as_str);
    if let (Some(dag), Some(run)) = (get("dag_id"), get("run_id")) {
        if let (Some(base), Some(task)) = (&ui.airflow_url, get("task_id")) {
            let mut href = format!(
                "{}/dags/{}/runs/{}/tasks/{}",
                base.trim_end_matches('/'),
                encode(dag),
                encode(run),
                encode(task)
            );
            if let Some(index) = get("map_index").filter(|i| *i != "-1") {
                href.push_str(&format!("/mapped/{}", encode(index)));
            }
            links.push(Link { text: "Airflow task".into(), href });
        }
        links.push(Link {
            text: "Gantt of this DAG run".into(),
            href: format!(
                "/ui/gantt?label={}&label={}",
                encode(&format!("dag_id={dag}")),
                encode(&format!("run_id={run}"))
            ),
        });
    }
    if let Some(flow_run) = get("flow_run_id") {
        if let Some(base) = &ui.prefect_url {
            links.push(Link {
                text: "Prefect flow run".into(),
                href: format!("{}/runs/flow-run/{}", base.trim_end_matches('/'), encode(flow_run)),
            });
        }
        links.push(Link {
            text: "Gantt of this flow run".into(),
            href: format!("/ui/gantt?label={}", encode(&format!("flow_run_id={flow_run}"))),
        });
    }
    links
}

fn function_of(d: &wire::Dispatch) -> &str {
    d.function_name.as_deref().unwrap_or(&d.function)
}

fn state_badge(d: &wire::Dispatch) -> Markup {
    html! { span class=(format!("state st-{}", d.state)) data-live=(d.id) { (d.state.to_string()) } }
}

fn labels_list(labels: &BTreeMap<String, String>) -> Markup {
    html! {
        @for (key, value) in labels {
            a.label href=(format!("/ui/runs?label={}", encode(&format!("{key}={value}")))) { (key) "=" (value) }
        }
    }
}

fn time(at: DateTime<Utc>) -> Markup {
    html! { time datetime=(at.to_rfc3339()) { (at.format("%Y-%m-%d %H:%M:%S")) } }
}

/// The runs list.
pub fn runs(page: &Page, query: &RunsQuery, runs: &[RunView], next_cursor: Option<&str>) -> Markup {
    let chosen = query.state.as_deref().unwrap_or("");
    let text = |value: &Option<String>| value.clone().unwrap_or_default();
    let mut labels: Vec<&str> = query.label.iter().map(String::as_str).filter(|l| !l.trim().is_empty()).collect();
    labels.push("");
    let body = html! {
        form.filters method="get" action="/ui/runs" {
            label { "State " select name="state" {
                option value="" selected[chosen.is_empty()] { "any" }
                @for state in STATES { option value=(state) selected[chosen == state] { (state) } }
            } }
            label { "Cluster " input name="cluster" value=(text(&query.cluster)) size="10"; }
            label { "Function " input name="function" value=(text(&query.function)) size="18"; }
            @for label in &labels {
                label { "Label " input name="label" value=(label) placeholder="dag_id=ml_pipeline" size="20"; }
            }
            label { "Created after " input type="datetime-local" name="created_after" value=(text(&query.created_after)); }
            label { "before " input type="datetime-local" name="created_before" value=(text(&query.created_before)); }
            button type="submit" { "Filter" }
            a href="/ui/runs" { "Clear" }
        }
        @if runs.is_empty() {
            p.empty { "No dispatches match." }
        } @else {
            table.runs {
                thead { tr { th { "Function" } th { "State" } th { "Cluster / node" } th { "Duration" } th { "Created (UTC)" } th { "Labels" } th { "Links" } } }
                tbody {
                    @for run in runs {
                        @let d = &run.dispatch;
                        tr data-id=(d.id) {
                            td { a href=(format!("/ui/runs/{}", d.id)) { (function_of(d)) } }
                            td { (state_badge(d)) }
                            td { (d.cluster) @if let Some(node) = &run.node { br; small { (node) } } }
                            td data-live-duration=(d.id) { (duration_text(d)) }
                            td { (time(d.created_at)) }
                            td.labels { (labels_list(&d.labels)) }
                            td { @for link in &run.links { a href=(link.href) { (link.text) } br; } }
                        }
                    }
                }
            }
        }
        @if let Some(cursor) = next_cursor {
            p.more { a href=(next_page(query, cursor)) { "Older →" } }
        }
    };
    layout(page, "Runs", body)
}

fn next_page(query: &RunsQuery, cursor: &str) -> String {
    let mut parts = vec![format!("cursor={}", encode(cursor))];
    let mut add = |key: &str, value: &Option<String>| {
        if let Some(value) = value.as_deref().filter(|v| !v.is_empty()) {
            parts.push(format!("{key}={}", encode(value)));
        }
    };
    add("state", &query.state);
    add("cluster", &query.cluster);
    add("function", &query.function);
    add("created_after", &query.created_after);
    add("created_before", &query.created_before);
    for label in &query.label {
        parts.push(format!("label={}", encode(label)));
    }
    format!("/ui/runs?{}", parts.join("&"))
}

/// One run.
pub fn run(
    page: &Page,
    view: &RunView,
    events: &[wire::DispatchEvent],
    record: Option<&wire::RunRecord>,
    artifacts: &[wire::Artifact],
    can_cancel: bool,
) -> Markup {
    let d = &view.dispatch;
    let queued_ms = d.started_at.unwrap_or(d.finished_at.unwrap_or_else(Utc::now)) - d.created_at;
    let total_ms = d.finished_at.unwrap_or_else(Utc::now) - d.created_at;
    let body = html! {
        section.summary data-run=(d.id) data-terminal=(d.state.is_terminal()) {
            dl {
                dt { "State" } dd { (state_badge(d)) @if let Some(reason) = &d.queued_reason { " " small { (reason) } } }
                dt { "Function" } dd { a href=(format!("/ui/functions?function={}", encode(function_of(d)))) { (function_of(d)) }
                    @if d.function_name.is_some() { " " small { code { (d.function) } } }
                    @if let Some(method) = &d.method { " · method " code { (method) } } }
                dt { "Bundle" } dd { code { (d.bundle.as_deref().unwrap_or("none")) } }
                dt { "Cluster / node" } dd { (d.cluster) " / " (view.node.as_deref().unwrap_or("not placed")) }
                dt { "Queued" } dd { (charts::short_duration(queued_ms.num_milliseconds() as f64)) }
                dt { "Running" } dd data-live-duration=(d.id) { (duration_text(d)) }
                dt { "Total" } dd { (charts::short_duration(total_ms.num_milliseconds() as f64)) }
                dt { "Created" } dd { (time(d.created_at)) " by " (d.requester) }
                @if let Some(source) = &d.cached_from {
                    dt { "Cached from" } dd { a href=(format!("/ui/runs/{source}")) { (source) } }
                }
                @if !d.labels.is_empty() { dt { "Labels" } dd.labels { (labels_list(&d.labels)) } }
                @if !view.links.is_empty() {
                    dt { "Links" } dd { @for link in &view.links { a href=(link.href) { (link.text) } " " } }
                }
            }
            @if can_cancel {
                form.cancel method="post" action=(format!("/ui/runs/{}/cancel", d.id)) {
                    input type="hidden" name="csrf" value=(page.csrf);
                    input name="reason" placeholder="reason (optional)" maxlength="500";
                    button.danger type="submit" { "Cancel" }
                }
            }
        }
        @if let Some(failure) = &d.failure {
            section.failure {
                h2 { "Failure: " code { (failure.code) } }
                p { @if let Some(kind) = &failure.remote_type { strong { (kind) } ": " } (failure.message) }
                @if let Some(code) = failure.exit_code { p { "exit code " (code) } }
                @if let Some(traceback) = &failure.traceback { pre.traceback { (traceback) } }
            }
        }
        @if let Some(result) = &d.result {
            section { h2 { "Result" } pre.result { (serde_json::to_string_pretty(result).unwrap_or_default()) } }
        }
        @if let Some(cancel) = &d.cancellation {
            section { h2 { "Cancellation" } p { "by " (cancel.by) @if let Some(reason) = &cancel.reason { ": " (reason) } } }
        }
        section {
            h2 { "Output" a.small href=(format!("/ui/runs/{}/output.txt", d.id)) { "download" } }
            @if d.log_truncated { p.hint { "The output passed the gateway's limit; the rest was not kept." } }
            div.log #log data-src=(format!("/ui/runs/{}/logs", d.id)) role="log" aria-live="polite" {}
            noscript { p { "Live output needs JavaScript; " a href=(format!("/ui/runs/{}/output.txt", d.id)) { "download it" } "." } }
        }
        section {
            h2 { "Timeline" }
            table.events {
                thead { tr { th { "At (UTC)" } th { "From" } th { "To" } th { "By" } th { "Reason" } } }
                tbody {
                    @for e in events {
                        tr {
                            td { (time(e.at)) }
                            td { (e.from_state.map(|s| s.to_string()).unwrap_or_default()) }
                            td { span class=(format!("state st-{}", e.to_state)) { (e.to_state.to_string()) } }
                            td { (e.actor) }
                            td { (e.reason.as_deref().unwrap_or("")) }
                        }
                    }
                }
            }
        }
        @if !artifacts.is_empty() {
            section #artifacts {
                h2 { "Artifacts" }
                ul.artifacts {
                    @for a in artifacts {
                        li { a href=(format!("/ui/runs/{}/artifacts/{}", d.id, encode(&a.path))) { (a.path) } " " small { (a.size_bytes) " bytes · " (a.content_type) } }
                    }
                }
            }
        }
        @if let Some(record) = record {
            section { h2 { "Run record" } pre.record { (serde_json::to_string_pretty(record).unwrap_or_default()) } }
        }
    };
    layout(page, &format!("Run {}", short_id(d.id.0)), body)
}

/// The Gantt chart of one orchestrator run.
pub fn gantt(page: &Page, labels: &[String], runs: &[wire::Dispatch], truncated: bool, now: DateTime<Utc>) -> Markup {
    let bars: Vec<GanttBar> = runs
        .iter()
        .map(|d| {
            let task = d.labels.get("task_id").or_else(|| d.labels.get("task_name")).map(String::as_str);
            let mut label = task.unwrap_or(function_of(d)).to_owned();
            if let Some(index) = d.labels.get("map_index").filter(|i| *i != "-1") {
                label.push_str(&format!("[{index}]"));
            }
            if let Some(attempt) = d.labels.get("try_number").or_else(|| d.labels.get("attempt")).filter(|a| *a != "1")
            {
                label.push_str(&format!(" (try {attempt})"));
            }
            GanttBar {
                href: format!("/ui/runs/{}", d.id),
                label,
                state: d.state.to_string(),
                created_at: d.created_at,
                started_at: d.started_at,
                finished_at: d.finished_at,
            }
        })
        .collect();
    let body = html! {
        p { "Dispatches labelled " @for l in labels { code { (l) } " " } "— " (runs.len()) " in all. "
            span.legend { span.key.queued {} "queued" span.key.st-running {} "running" span.key.st-succeeded {} "succeeded" span.key.st-failed {} "failed" span.key.st-cancelled {} "cancelled" } }
        @if truncated { p.hint { "Only the latest " (runs.len()) " are drawn." } }
        div.chart-wrap { (charts::gantt(&bars, now)) }
    };
    layout(page, "Gantt", body)
}

/// One function's charts.
pub fn function_charts(page: &Page, function: &str, hours: &[FunctionHour]) -> Markup {
    let total: i64 = hours.iter().map(|h| h.succeeded + h.failed + h.cancelled + h.timed_out).sum();
    let body = html! {
        p { code { (function) } ": " (total) " finished calls in the last 7 days. "
            a href=(format!("/ui/runs?function={}", encode(function))) { "Its runs" } }
        h2 { "Running time per hour" span.legend { span.key.p50 {} "p50" span.key.p95 {} "p95" } }
        div.chart-wrap { (charts::durations(hours)) }
        h2 { "Outcomes per hour" span.legend { span.key.st-succeeded {} "succeeded" span.key.st-failed {} "failed" span.key.st-cancelled {} "cancelled" span.key.st-timed_out {} "timed out" } }
        div.chart-wrap { (charts::outcomes(hours)) }
    };
    layout(page, "Function", body)
}

/// Clusters and their nodes.
pub fn clusters(
    page: &Page,
    clusters: &[ClusterView],
    autostop: &HashMap<Uuid, DateTime<Utc>>,
    now: DateTime<Utc>,
) -> Markup {
    let body = html! {
        @if clusters.is_empty() { p.empty { "No clusters yet." } }
        @for view in clusters {
            @let c = &view.row;
            @let spec = serde_json::from_value::<wire::ClusterSpec>(c.spec.clone()).unwrap_or_default();
            section.cluster {
                h2 { (c.name) " " span class=(format!("state cl-{}", word(c.state))) { (word(c.state)) } }
                p {
                    "provider " strong { (c.provider) }
                    @if let Some(kind) = &spec.instance_type { " · instance type " strong { (kind) } }
                    " · " (spec.count) " machine(s)"
                    @if let Some(reason) = &c.state_reason { " · " (reason) }
                }
                p {
                    @match (spec.autostop_idle_minutes, autostop.get(&c.cluster_id)) {
                        (Some(_), Some(at)) => { "Stops when idle in " strong { (charts::short_duration(((*at - now).num_milliseconds().max(0)) as f64)) } " (at " (time(*at)) ")." }
                        (Some(minutes), None) => { "Busy; stops after " (minutes) " idle minutes." }
                        (None, _) => { "No autostop." }
                    }
                }
                @if view.nodes.is_empty() { p.empty { "No nodes have joined." } } @else {
                    table.nodes {
                        thead { tr { th { "Node" } th { "State" } th { "Slots used / total" } th { "Warm workers" } th { "Last heartbeat" } } }
                        tbody {
                            @for n in &view.nodes {
                                tr {
                                    td { (n.name) }
                                    td { (word(n.state)) }
                                    td { (n.running) " / " (n.max_concurrent) }
                                    td { (n.warm_workers.map(|w| w.to_string()).unwrap_or_else(|| "–".into())) }
                                    td { (charts::short_duration(((now - n.last_heartbeat_at).num_milliseconds().max(0)) as f64)) " ago" }
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    layout(page, "Clusters", body)
}

/// Schedules and remote objects.
pub fn schedules(page: &Page, schedules: &[wire::Schedule], instances: &[wire::Instance]) -> Markup {
    let body = html! {
        h2 { "Schedules" }
        @if schedules.is_empty() { p.empty { "No schedules." } } @else {
            table {
                thead { tr { th { "Name" } th { "Cron" } th { "Function" } th { "Next fire" } th { "Last fired for" } th { "" } } }
                tbody {
                    @for s in schedules {
                        tr {
                            td { (s.name) @if s.paused { " " span.state.st-cancelled { "paused" } } }
                            td { code { (s.cron) } " " small { (s.timezone) } }
                            td { code { (s.dispatch.function.as_deref().unwrap_or("")) } }
                            td { @if let Some(at) = s.next_fire_at { (time(at)) } }
                            td { @if let Some(at) = s.last_fired_for { (time(at)) } }
                            td { a href=(format!("/ui/runs?label={}", encode(&format!("schedule={}", s.name)))) { "Runs" } }
                        }
                    }
                }
            }
        }
        h2 { "Instances (remote objects)" }
        @if instances.is_empty() { p.empty { "No instances." } } @else {
            table {
                thead { tr { th { "Name" } th { "Class" } th { "Cluster" } th { "State" } th { "Restarts" } } }
                tbody {
                    @for i in instances {
                        tr {
                            td { (i.name) }
                            td { code { (i.class) } }
                            td { (i.cluster) }
                            td { (word(i.state)) @if let Some(reason) = &i.state_reason { " " small { (reason) } } }
                            td { (i.restarts) }
                        }
                    }
                }
            }
        }
    };
    layout(page, "Schedules & instances", body)
}

/// A one-word state enum's name (`Ready` → `ready`), as its SQL enum spells it.
fn word(state: impl std::fmt::Debug) -> String {
    format!("{state:?}").to_lowercase()
}

fn short_id(id: Uuid) -> String {
    id.simple().to_string()[..8].to_owned()
}

/// Percent-encodes a URL component (everything but unreserved characters).
pub fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page() -> Page<'static> {
        Page { project: "p", sub: "ann", csrf: "c", nav: "runs" }
    }

    fn dispatch(labels: &[(&str, &str)]) -> wire::Dispatch {
        let mut d: wire::Dispatch = serde_json::from_value(serde_json::json!({
            "id": "0190c1c4-0000-7000-8000-000000000001", "project": "p", "function": "m:<b>f</b>",
            "requirements": [], "args": [], "kwargs": {}, "cluster": "local", "state": "failed",
            "generation": 1, "labels": {}, "requester": "ann", "log_truncated": false,
            "created_at": "2026-12-03T10:00:00Z", "updated_at": "2026-12-03T10:00:01Z",
            "failure": {"code": "remote_exception", "message": "<img src=x onerror=alert(1)>",
                        "traceback": "Traceback <script>alert(2)</script>"}
        }))
        .unwrap();
        d.labels = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        d
    }

    #[test]
    fn untrusted_text_renders_as_text() {
        let d = dispatch(&[("note", "<script>alert(3)</script>"), ("dag_id", "x\"><svg onload=alert(4)>")]);
        let view =
            RunView { dispatch: d.clone(), node: None, links: orchestrator_links(&d.labels, &UiSettings::default()) };
        let html = run(&page(), &view, &[], None, &[], true).into_string();
        for raw in ["<script>alert", "<img src=x", "<svg onload", "<b>f</b>"] {
            assert!(!html.contains(raw), "{raw} was rendered as markup");
        }
        assert!(html.contains("&lt;img src=x onerror=alert(1)&gt;"));
        let list = runs(&page(), &RunsQuery::default(), &[view], None).into_string();
        assert!(!list.contains("<script>alert") && list.contains("&lt;script&gt;alert(3)"));
        // The only scripts are the page's own module.
        assert_eq!(list.matches("<script").count(), 1);
    }

    #[test]
    fn orchestrator_links_follow_the_labels_and_settings() {
        let d = dispatch(&[
            ("dag_id", "ml pipeline"),
            ("run_id", "manual__2026-12-03T10:00:00+00:00"),
            ("task_id", "train"),
            ("map_index", "-1"),
        ]);
        assert_eq!(
            orchestrator_links(&d.labels, &UiSettings::default()).len(),
            1,
            "only the Gantt link without airflow_url"
        );
        let ui = UiSettings { airflow_url: Some("http://airflow:8080/".into()), prefect_url: None };
        let links = orchestrator_links(&d.labels, &ui);
        assert_eq!(
            links[0].href,
            "http://airflow:8080/dags/ml%20pipeline/runs/manual__2026-12-03T10%3A00%3A00%2B00%3A00/tasks/train"
        );
        assert_eq!(
            links[1].href,
            "/ui/gantt?label=dag_id%3Dml%20pipeline&label=run_id%3Dmanual__2026-12-03T10%3A00%3A00%2B00%3A00"
        );
        let prefect = dispatch(&[("flow_run_id", "5f1c")]);
        let ui = UiSettings { airflow_url: None, prefect_url: Some("http://prefect:4200".into()) };
        let links = orchestrator_links(&prefect.labels, &ui);
        assert_eq!(links[0].href, "http://prefect:4200/runs/flow-run/5f1c");
    }

    #[test]
    fn the_cancel_form_carries_the_csrf_token_and_only_when_allowed() {
        let d = dispatch(&[]);
        let view = RunView { dispatch: d, node: None, links: vec![] };
        let allowed = run(&page(), &view, &[], None, &[], true).into_string();
        assert!(allowed.contains("action=\"/ui/runs/0190c1c4-0000-7000-8000-000000000001/cancel\""));
        assert!(allowed.contains("name=\"csrf\" value=\"c\""));
        let read_only = run(&page(), &view, &[], None, &[], false).into_string();
        assert!(!read_only.contains("/cancel\""));
    }
}

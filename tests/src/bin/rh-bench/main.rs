//! `rh-bench`: the benchmark suite behind `make bench`.
//!
//! Starts Postgres (durable commits), `rh-gateway` and one `rh-node`, then
//! measures what users compare us on (dispatch latency and throughput, cold
//! start, cancel, log streaming, memory, waiters, listing) next to the floor
//! a dispatch cannot go below on this machine (a loopback HTTP round trip,
//! two durable commits, a round trip to a warm Python over a Unix socket).
//! Each figure is the median of several runs, with min and max. Prints a
//! table and writes `bench/results/latest.json`. Nothing here asserts speed.
//!
//! `rh-bench --smoke` runs every measure with tiny sizes, so the code cannot rot;
//! `--scale-only` runs the floor and the simulated-node measures alone;
//! `--only=rest,cancel,...` runs the floor and the named sections (the keys
//! `Section` lists), for comparing builds; `--sim-nodes=1000` and
//! `--sim-queued=100000` narrow the simulated-node grid to those counts.
//! None of these writes the results file.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

mod scale;

use anyhow::Context;
use e2e::Stack;
use serde_json::{json, Value};

/// Sizes for one run of the suite.
struct Plan {
    smoke: bool,
    runs: usize,
    sequential: usize,
    floor_samples: usize,
    concurrency: usize,
    window: Duration,
    cancels: usize,
    rss_dispatches: usize,
    waiters: usize,
    list_rows: i64,
    /// Simulated node counts, and backlogs queued, for the scale measures.
    sim_nodes: Vec<usize>,
    sim_queued: Vec<i64>,
    /// Creates per scale measure, and the clients sending them.
    sim_creates: usize,
    sim_clients: usize,
    /// The sections to run (`--only=`); all when empty.
    only: Vec<String>,
    /// Some sections or sizes were left out: the results file is left alone.
    partial: bool,
}

/// The comma-separated counts given as `flag` (`--sim-nodes=1,1000`), if given.
fn counts<T: std::str::FromStr>(flag: &str) -> Option<Vec<T>> {
    let list = std::env::args().find_map(|a| a.strip_prefix(flag).map(str::to_owned))?;
    Some(list.split(',').map(|n| n.parse().unwrap_or_else(|_| panic!("{flag}{list}: `{n}` is not a count"))).collect())
}

impl Plan {
    fn new(smoke: bool) -> Plan {
        let only: Vec<String> = std::env::args()
            .find_map(|a| a.strip_prefix("--only=").map(|list| list.split(',').map(str::to_owned).collect()))
            .unwrap_or_default();
        let plan = if smoke {
            Plan {
                smoke,
                runs: 1,
                sequential: 20,
                floor_samples: 50,
                concurrency: 8,
                window: Duration::from_secs(1),
                cancels: 3,
                rss_dispatches: 50,
                waiters: 50,
                list_rows: 2_000,
                sim_nodes: vec![1, 10],
                sim_queued: vec![0, 300],
                sim_creates: 50,
                sim_clients: 4,
                only: Vec::new(),
                partial: false,
            }
        } else {
            Plan {
                smoke,
                runs: 3,
                sequential: 300,
                floor_samples: 1000,
                concurrency: 64,
                window: Duration::from_secs(5),
                cancels: 50,
                rss_dispatches: 10_000,
                waiters: 10_000,
                list_rows: 1_000_000,
                sim_nodes: vec![1, 100, 1000],
                sim_queued: vec![0, 10_000, 100_000],
                sim_creates: 3000,
                sim_clients: 16,
                only: Vec::new(),
                partial: false,
            }
        };
        let sim_nodes = counts("--sim-nodes=");
        let sim_queued = counts("--sim-queued=");
        Plan {
            partial: !only.is_empty() || sim_nodes.is_some() || sim_queued.is_some(),
            only,
            sim_nodes: sim_nodes.unwrap_or(plan.sim_nodes),
            sim_queued: sim_queued.unwrap_or(plan.sim_queued),
            ..plan
        }
    }

    /// Whether section `key` runs (see `--only=`).
    fn wants(&self, key: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|k| k == key)
    }
}

/// Prints how long each section of the suite took (to stderr), so a slow
/// one shows in a smoke run's log.
struct Lap {
    name: &'static str,
    at: Instant,
}

impl Lap {
    fn new(name: &'static str) -> Lap {
        Lap { name, at: Instant::now() }
    }

    /// Ends the current section and starts `name`.
    fn next(&mut self, name: &'static str) {
        eprintln!("({} took {:.1} s)", self.name, self.at.elapsed().as_secs_f64());
        *self = Lap::new(name);
    }
}

/// One row of the results table: the value of each run, and the target.
struct Figure {
    key: String,
    label: String,
    unit: &'static str,
    target: &'static str,
    runs: Vec<f64>,
    /// How the table compares it with the floor.
    vs_floor: VsFloor,
}

/// How a figure compares with the floor measured in the same run.
#[derive(Clone, Copy, PartialEq)]
enum VsFloor {
    /// It does not.
    No,
    /// A time: its median over the floor's sum (so many times the floor).
    Time,
    /// A rate: the rate the floor's parts reach under the same load (this
    /// value) over its median (so many times below the floor).
    Rate(f64),
}

impl Figure {
    fn median(&self) -> f64 {
        let mut sorted = self.runs.clone();
        sorted.sort_by(f64::total_cmp);
        sorted[sorted.len() / 2]
    }

    /// Its ratio to the floor, if it has one (see [`VsFloor`]).
    fn ratio(&self, floor_ms: f64) -> Option<f64> {
        match self.vs_floor {
            VsFloor::No => None,
            VsFloor::Time => Some(self.median() / floor_ms),
            VsFloor::Rate(floor) => Some(floor / self.median()),
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    if std::env::args().any(|a| a == "--park-server") {
        return park_server().await;
    }
    let mut plan = Plan::new(std::env::args().any(|a| a == "--smoke"));
    if !plan.smoke {
        std::env::set_var("RH_E2E_DURABLE", "1");
    }
    let suite_started = Instant::now();
    let mut lap = Lap::new("stack start");
    let stack = Stack::start_for_bench(&[("RH_GATEWAY_COMPUTE__RECONCILE_INTERVAL_S", "1")]).await?;
    let node = stack.start_node("bench-1", "local", 64).await?;
    let token = stack.admin_token();
    let bundle = stack.fixture_bundle().await;
    let mut figures = Vec::new();

    lap.next("floor");
    // The floor.
    let http = repeat(plan.runs, || floor_http(plan.floor_samples)).await?;
    let commits = repeat(plan.runs, || floor_commits(&stack.database_url, plan.floor_samples / 4)).await?;
    let python = repeat(plan.runs, || async { floor_python(plan.floor_samples) }).await?;
    let floor_ms = median(&http) + median(&commits) + median(&python);
    figures.push(fig("floor_http_ms", "floor: loopback HTTP round trip (p50)", "ms", "", http));
    figures.push(fig("floor_two_commits_ms", "floor: two sequential durable commits (p50)", "ms", "", commits));
    figures.push(fig("floor_python_ms", "floor: warm Python round trip over a Unix socket (p50)", "ms", "", python));

    if std::env::args().any(|a| a == "--scale-only") {
        // The scale measures alone (they take most of the suite's time).
        plan.only = vec!["scale-nodes".to_owned(), "scale-replicas".to_owned()];
        plan.partial = true;
    }

    // Dispatch latency and throughput over REST.
    let noop = json!({"function": "json:dumps", "args": ["x".repeat(1024)], "cluster": "local"});
    // Nodes a section starts stay up to the end, as every later section measured them.
    let mut nodes = Vec::new();
    if plan.wants("rest") {
        lap.next("REST no-op");
        let runs = noop_runs(&stack, &token, &noop, &plan).await?;
        let mut rest_p50 = fig(
            "rest_noop_p50_ms",
            "no-op dispatch over REST, create -> long-poll -> result (p50)",
            "ms",
            "<= 1.2",
            quantiles(&runs, 0.50),
        );
        rest_p50.vs_floor = VsFloor::Time;
        figures.push(rest_p50);
        figures.push(fig("rest_noop_p99_ms", "no-op dispatch over REST (p99)", "ms", "", quantiles(&runs, 0.99)));
        let mut stages = Vec::with_capacity(runs.len());
        for run in &runs {
            stages.push(run.stages(&stack).await?);
        }
        for (i, (key, label)) in STAGES.iter().enumerate() {
            let p50s = stages.iter().map(|run| quantile(&run[i], 0.50)).collect();
            figures.push(fig(*key, *label, "ms", "", p50s));
        }
        // The same calls, each one request: the create's answer is the result.
        let mut runs = Vec::with_capacity(plan.runs);
        for _ in 0..plan.runs {
            runs.push(sequential_by(&stack, &token, &noop, plan.sequential, Flow::OneRequest).await?);
        }
        let mut one_p50 = fig(
            "rest_noop_one_request_p50_ms",
            "no-op over REST in one request, create?wait_s -> result (p50)",
            "ms",
            "<= 1.2",
            quantiles(&runs, 0.50),
        );
        one_p50.vs_floor = VsFloor::Time;
        figures.push(one_p50);
        figures.push(fig("rest_noop_one_request_p99_ms", "  the same (p99)", "ms", "", quantiles(&runs, 0.99)));
    }

    if plan.wants("norec") {
        lap.next("no run records");
        // The run record's cost: the same no-op on a node that sends none.
        nodes.push(
            stack.start_node_env("bench-norec", "norec", 64, &stack.url, &[("RH_NODE_NO_RUN_RECORDS", "1")]).await?,
        );
        let bare = json!({"function": "json:dumps", "args": ["x".repeat(1024)], "cluster": "norec"});
        let bare_p50s = quantiles(&noop_runs(&stack, &token, &bare, &plan).await?, 0.50);
        let mut without = fig(
            "rest_noop_no_record_p50_ms",
            "no-op over REST (create, then wait), node sending no run records (p50)",
            "ms",
            "",
            bare_p50s,
        );
        without.vs_floor = VsFloor::Time;
        figures.push(without);
    }

    if plan.wants("nolink") {
        lap.next("no link");
        // What the node link saves: the same no-op on a node talking plain HTTP requests.
        nodes.push(stack.start_node_env("bench-nolink", "nolink", 64, &stack.url, &[("RH_NODE_NO_LINK", "1")]).await?);
        let plain = json!({"function": "json:dumps", "args": ["x".repeat(1024)], "cluster": "nolink"});
        let plain_p50s = quantiles(&noop_runs(&stack, &token, &plain, &plan).await?, 0.50);
        let mut no_link = fig(
            "rest_noop_no_link_p50_ms",
            "no-op over REST (create, then wait), node without its link (p50)",
            "ms",
            "",
            plain_p50s,
        );
        no_link.vs_floor = VsFloor::Time;
        figures.push(no_link);
    }

    if plan.wants("cache") {
        lap.next("cache hit");
        // A cache hit: the create answers with the earlier result, no node involved.
        let cached = json!({"function": "json:dumps", "args": ["cached"], "cluster": "local", "cache": true});
        create_and_wait(&stack.client, &stack.url, &token, &cached).await?;
        let mut hit_p50s = Vec::new();
        for _ in 0..plan.runs {
            hit_p50s.push(quantile(&sequential(&stack, &token, &cached, plan.sequential).await?.latencies, 0.50));
        }
        let mut hit = fig("cache_hit_p50_ms", "cache hit: create -> result (p50)", "ms", "", hit_p50s);
        hit.vs_floor = VsFloor::Time;
        figures.push(hit);
    }

    if plan.wants("artifact") {
        lap.next("artifact upload");
        // Artifact upload: a call writing N MB under $RH_OUTPUTS vs the same call writing them to a
        // scratch file; the difference is the upload (node -> gateway -> artifact store, streamed).
        let megabytes: u64 = if plan.smoke { 10 } else { 100 };
        let size = megabytes * 1024 * 1024;
        let kept = json!({"function": "pkg.jobs:write_outputs", "args": [size], "bundle": bundle, "cluster": "local"});
        let scratch =
            json!({"function": "pkg.jobs:write_scratch", "args": [size], "bundle": bundle, "cluster": "local"});
        create_and_wait(&stack.client, &stack.url, &token, &scratch).await?;
        let mut rates = Vec::new();
        for _ in 0..plan.runs {
            // Medians of three alternating pairs: one slow scratch write would
            // otherwise leave almost nothing for the upload (an absurd rate).
            let (mut without, mut with) = (Vec::new(), Vec::new());
            for _ in 0..3 {
                let started = Instant::now();
                create_and_wait(&stack.client, &stack.url, &token, &scratch).await?;
                without.push(started.elapsed().as_secs_f64());
                let started = Instant::now();
                create_and_wait(&stack.client, &stack.url, &token, &kept).await?;
                with.push(started.elapsed().as_secs_f64());
            }
            // Not a rate when the difference drowns in noise (a smoke run's
            // few MiB can): the table then shows NaN rather than a made-up figure.
            let upload_s = median(&with) - median(&without);
            rates.push(if upload_s > 0.0 { megabytes as f64 / upload_s } else { f64::NAN });
        }
        figures.push(fig("artifact_upload_mb_per_s", "artifact upload, one file (MiB/s)", "MiB/s", "", rates));
    }

    if plan.wants("throughput") {
        lap.next("throughput");
        let here = [stack.url.clone()];
        let processes = [stack.gateway.as_ref().unwrap().pid(), node.pid(), postmaster_pid(&stack).await?];
        // Unmeasured: the node starts a warm worker per concurrent call (up to
        // 64, from the one the sequential sections used), which the first
        // measured run and the CPU figures would otherwise include.
        let warm_up = plan.window.min(Duration::from_secs(2));
        throughput(&stack.client, &here, &token, &noop, plan.concurrency, warm_up, Flow::OneRequest).await?;
        let before = Usage::now(&stack, processes).await?;
        let two_requests = repeat(plan.runs, || {
            throughput(&stack.client, &here, &token, &noop, plan.concurrency, plan.window, Flow::CreateThenWait)
        })
        .await?;
        let used = Usage::now(&stack, processes).await?.since(&before);
        // The same clients, each call one request.
        let before = Usage::now(&stack, processes).await?;
        let one_request = repeat(plan.runs, || {
            throughput(&stack.client, &here, &token, &noop, plan.concurrency, plan.window, Flow::OneRequest)
        })
        .await?;
        let used_one = Usage::now(&stack, processes).await?.since(&before);
        // The same load on the floor's parts alone, after the stack's runs (so
        // their CPU figures above hold only the stack's work).
        let floor = repeat(plan.runs, || floor_throughput(&stack.database_url, plan.concurrency, plan.window)).await?;
        let mut rate = fig(
            "throughput_per_s",
            "throughput, 64 concurrent clients, durable",
            "dispatches/s",
            ">= 2500",
            two_requests,
        );
        rate.vs_floor = VsFloor::Rate(median(&floor));
        figures.push(fig(
            "floor_throughput_per_s",
            "floor: the floor's parts, 64 clients at once (rate)",
            "dispatches/s",
            "",
            floor.clone(),
        ));
        figures.push(rate);
        // What each dispatch costs under that load: CPU by process (less at
        // the mercy of a shared machine's drift than the rate) and WAL.
        for (key, label, seconds) in [
            ("cpu_gateway_ms", "  CPU per dispatch: the gateway", used.cpu_s[0]),
            ("cpu_node_ms", "  CPU per dispatch: the node daemon and its workers", used.cpu_s[1]),
            ("cpu_postgres_ms", "  CPU per dispatch: Postgres", used.cpu_s[2]),
        ] {
            figures.push(fig(key, label, "ms", "", vec![seconds * 1000.0 / used.dispatches]));
        }
        figures.push(fig(
            "wal_per_dispatch_kb",
            "  WAL written per dispatch",
            "KiB",
            "",
            vec![used.wal_bytes / 1024.0 / used.dispatches],
        ));
        let mut rate = fig(
            "throughput_one_request_per_s",
            "throughput, 64 clients, one request a call (create?wait_s)",
            "dispatches/s",
            ">= 2500",
            one_request,
        );
        rate.vs_floor = VsFloor::Rate(median(&floor));
        figures.push(rate);
        for (key, label, seconds) in [
            ("cpu_gateway_one_request_ms", "  CPU per dispatch: the gateway", used_one.cpu_s[0]),
            ("cpu_node_one_request_ms", "  CPU per dispatch: the node daemon and its workers", used_one.cpu_s[1]),
            ("cpu_postgres_one_request_ms", "  CPU per dispatch: Postgres", used_one.cpu_s[2]),
        ] {
            figures.push(fig(key, label, "ms", "", vec![seconds * 1000.0 / used_one.dispatches]));
        }
    }

    if plan.wants("logs") {
        lap.next("log streaming");
        // Live log streaming: a no-op that prints one line vs the same no-op.
        let quiet = json!({"function": "pkg.jobs:noop", "bundle": bundle, "cluster": "local"});
        let chatty = json!({"function": "builtins:print", "args": ["one line"], "cluster": "local"});
        for _ in 0..10 {
            create_and_wait(&stack.client, &stack.url, &token, &quiet).await?;
            create_and_wait(&stack.client, &stack.url, &token, &chatty).await?;
        }
        let mut overheads = Vec::new();
        for _ in 0..plan.runs {
            let q = quantile(&sequential(&stack, &token, &quiet, plan.sequential).await?.latencies, 0.5);
            let c = quantile(&sequential(&stack, &token, &chatty, plan.sequential).await?.latencies, 0.5);
            overheads.push((c / q - 1.0) * 100.0);
        }
        figures.push(fig("log_overhead_pct", "printing one line vs a no-op (p50 over p50)", "%", "<= 10", overheads));
    }

    if plan.wants("cancel") {
        lap.next("cancel");
        // Cancel: from the cancel request to the worker process being gone.
        let cancel = cancel_to_gone(&stack, &token, &bundle, plan.cancels).await?;
        figures.push(fig("cancel_gone_p99_ms", "cancel -> worker process gone (p99)", "ms", "<= 1000", vec![cancel]));
    }

    if plan.wants("cold") {
        lap.next("cold start");
        // Cold start: POST /v1/clusters (local, 1 node) -> first result.
        let mut colds = Vec::new();
        for run in 0..plan.runs {
            colds.push(cold_start(&stack, &token, &format!("cold-{run}")).await?);
        }
        figures.push(fig(
            "cold_start_ms",
            "cold start: POST /v1/clusters (local, 1 node) -> first result",
            "ms",
            "<= 1000",
            colds,
        ));
    }

    if plan.wants("idle") {
        lap.next("idle memory");
        // Idle memory after many dispatches.
        let mut done = 0;
        while done < plan.rss_dispatches {
            let batch = plan.concurrency.min(plan.rss_dispatches - done);
            let calls = (0..batch).map(|_| create_and_wait(&stack.client, &stack.url, &token, &noop));
            for result in futures::future::join_all(calls).await {
                result?;
            }
            done += batch;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        let gateway_rss = rss_mb(stack.gateway.as_ref().unwrap().pid());
        let node_rss = rss_mb(node.pid());
        let workers_rss: f64 = children_of(node.pid()).into_iter().map(rss_mb).sum();
        figures.push(fig(
            "idle_rss_mb",
            "idle RSS, gateway + node daemon, after the dispatches above",
            "MB",
            "<= 80",
            vec![gateway_rss + node_rss],
        ));
        figures.push(fig("idle_rss_gateway_mb", "  of which the gateway", "MB", "", vec![gateway_rss]));
        figures.push(fig("idle_rss_node_mb", "  of which the node daemon", "MB", "", vec![node_rss]));
        figures.push(fig("idle_rss_workers_mb", "  (and the node's warm Python workers)", "MB", "", vec![workers_rss]));
    }

    if plan.wants("waiters") {
        lap.next("waiters");
        // Many concurrent long-poll waiters.
        let idle_gateway_rss = rss_mb(stack.gateway.as_ref().unwrap().pid());
        let (waiters_rss, wake_p99) = waiters(&stack, &token, plan.waiters).await?;
        figures.push(fig(
            "waiters_gateway_rss_mb",
            "gateway RSS with the long-poll waiters parked",
            "MB",
            "<= 128",
            vec![waiters_rss],
        ));
        let per_waiter_kb = (waiters_rss - idle_gateway_rss) * 1024.0 / plan.waiters as f64;
        figures.push(fig("waiter_kb", "  gateway memory per parked waiter", "KiB", "", vec![per_waiter_kb]));
        let floor_kb = park_floor_kb(&token, plan.waiters, true).await?;
        figures.push(fig(
            "floor_parked_http2_kb",
            "  floor: a parked request on a bare server, HTTP/2 streams (SDK)",
            "KiB",
            "",
            vec![floor_kb],
        ));
        let http1_kb = park_floor_kb(&token, plan.waiters, false).await?;
        figures.push(fig(
            "floor_parked_request_kb",
            "  the same over HTTP/1.1, a connection each",
            "KiB",
            "",
            vec![http1_kb],
        ));
        figures.push(fig(
            "waiters_wake_p99_ms",
            "wake-up after each waiter's dispatch ends (p99)",
            "ms",
            "<= 200",
            vec![wake_p99],
        ));
    }

    if plan.wants("listing") {
        lap.next("listing");
        // Listing with many rows in the table.
        let list_p99 = list_with_rows(&stack, &token, plan.list_rows).await?;
        figures.push(fig(
            "list_label_p99_ms",
            "GET /v1/dispatches?label=… (rare and common labels) (p99)",
            "ms",
            "<= 20",
            vec![list_p99],
        ));
    }

    if plan.wants("runs-page") {
        lap.next("runs page");
        // The dashboard's runs page over the same rows, rendered by the gateway.
        let (runs_p50, runs_p99) = runs_page_with_rows(&stack, &token).await?;
        figures.push(fig(
            "ui_runs_page_p50_ms",
            "GET /ui/runs at the listing's row count: unfiltered, by label, by function (p50)",
            "ms",
            "<= 50",
            vec![runs_p50],
        ));
        figures.push(fig("ui_runs_page_p99_ms", "GET /ui/runs, as above (p99)", "ms", "", vec![runs_p99]));
    }

    if plan.wants("replica-wake") {
        lap.next("replica wake");
        // Replicas: a dispatch created through this gateway, waited on through another.
        let wake = cross_replica_wake(&stack, &token, &noop, if plan.smoke { 5 } else { 300 }).await?;
        figures.push(fig(
            "cross_replica_wake_p99_ms",
            "wait through another replica: dispatch finished -> waiter answered (p99)",
            "ms",
            "<= 100",
            vec![wake],
        ));
    }

    if plan.wants("schedules") {
        lap.next("schedules");
        // Schedules: from a fire's instant to its dispatch being recorded.
        let (fire_p50, fire_p99) = fire_times(&stack, &token, if plan.smoke { 2 } else { 30 }).await?;
        figures.push(fig(
            "schedule_fire_p50_ms",
            "schedule fire: instant -> dispatch recorded (p50)",
            "ms",
            "",
            vec![fire_p50],
        ));
        figures.push(fig(
            "schedule_fire_p99_ms",
            "schedule fire: instant -> dispatch recorded (p99)",
            "ms",
            "<= 1000",
            vec![fire_p99],
        ));
    }

    if plan.wants("scale-nodes") {
        lap.next("scale: nodes and queues");
        // How the cost grows with nodes, queued work and replicas (simulated nodes).
        figures.extend(scale::nodes_and_queues(&stack, &token, &plan).await?);
    }

    if plan.wants("scale-replicas") {
        lap.next("scale: replicas");
        figures.extend(scale::replicas(&stack, &token, &plan).await?);
    }

    lap.next("table");

    let results_dir = e2e::workspace_root().join("bench/results");
    let previous = previous_run(&results_dir.join("latest.json"));
    print_table(&plan, &figures, floor_ms, &previous);
    println!("suite took {:.0} s", suite_started.elapsed().as_secs_f64());
    // A partial run (--only=, --scale-only) leaves the results file alone.
    if !plan.smoke && !plan.partial {
        let results = json!({
            "measured_at_unix": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs(),
            "machine": machine(),
            "runs": plan.runs,
            "floor_ms": floor_ms,
            "waiters": plan.waiters,
            "list_rows": plan.list_rows,
            "figures": figures.iter().map(|f| (f.key.to_owned(), json!({
                "median": f.median(),
                "min": f.runs.iter().copied().fold(f64::INFINITY, f64::min),
                "max": f.runs.iter().copied().fold(f64::NEG_INFINITY, f64::max),
                "unit": f.unit,
                "target": f.target,
                "ratio_to_floor": f.ratio(floor_ms),
            }))).collect::<serde_json::Map<_, _>>(),
        });
        let path = results_dir.join("latest.json");
        if path.exists() {
            std::fs::rename(&path, results_dir.join("previous.json"))?;
        }
        std::fs::write(&path, serde_json::to_string_pretty(&results)?)?;
        println!("written to {}", path.display());
    }
    Ok(())
}

fn fig(
    key: impl Into<String>,
    label: impl Into<String>,
    unit: &'static str,
    target: &'static str,
    runs: Vec<f64>,
) -> Figure {
    Figure { key: key.into(), label: label.into(), unit, target, runs, vs_floor: VsFloor::No }
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[sorted.len() / 2]
}

fn quantile(latencies_ms: &[f64], q: f64) -> f64 {
    let mut sorted = latencies_ms.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[((sorted.len() as f64 * q) as usize).min(sorted.len() - 1)]
}

async fn repeat<F, Fut>(runs: usize, mut measure: F) -> anyhow::Result<Vec<f64>>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<f64>>,
{
    let mut values = Vec::with_capacity(runs);
    for _ in 0..runs {
        values.push(measure().await?);
    }
    Ok(values)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// A trivial axum server on loopback (the floor's HTTP end): its URL, and
/// the task serving it (abort it when done).
async fn trivial_server() -> anyhow::Result<(String, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/", listener.local_addr()?);
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let server = tokio::spawn(async move {
        let app = axum::Router::new().route("/", axum::routing::get(|| async { "ok" }));
        let _ = axum::serve(listener, app).await;
    });
    Ok((url, server))
}

/// p50 of a GET to a trivial axum server on loopback.
async fn floor_http(samples: usize) -> anyhow::Result<f64> {
    let (url, server) = trivial_server().await?;
    let client = reqwest::Client::new();
    let mut latencies = Vec::with_capacity(samples);
    for i in 0..samples + 20 {
        let started = Instant::now();
        client.get(&url).send().await?.bytes().await?;
        if i >= 20 {
            latencies.push(ms(started.elapsed()));
        }
    }
    server.abort();
    Ok(quantile(&latencies, 0.5))
}

/// p50 of two sequential single-row inserts, each its own durable commit.
async fn floor_commits(database_url: &str, samples: usize) -> anyhow::Result<f64> {
    use sqlx::Connection;
    let mut db = sqlx::PgConnection::connect(database_url).await?;
    sqlx::raw_sql("create table if not exists bench_floor (id bigserial primary key, v text)").execute(&mut db).await?;
    let mut latencies = Vec::with_capacity(samples);
    for _ in 0..samples.max(10) {
        let started = Instant::now();
        for _ in 0..2 {
            sqlx::query("insert into bench_floor (v) values ($1)").bind("x").execute(&mut db).await?;
        }
        latencies.push(ms(started.elapsed()));
    }
    Ok(quantile(&latencies, 0.5))
}

/// A warm Python process answering length-prefixed JSON requests over a
/// Unix socket (the floor's Python end): it echoes `args[0]` as `result`.
struct PythonFloor {
    child: std::process::Child,
    stream: std::os::unix::net::UnixStream,
    dir: std::path::PathBuf,
}

impl PythonFloor {
    fn start(name: &str) -> anyhow::Result<PythonFloor> {
        let dir = std::env::temp_dir().join(format!("rh-bench-py-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let socket = dir.join("s");
        let script = r#"
import json, socket, struct, sys
server = socket.socket(socket.AF_UNIX)
server.bind(sys.argv[1]); server.listen(1)
conn, _ = server.accept()
while True:
    head = conn.recv(4, socket.MSG_WAITALL)
    if len(head) < 4: break
    body = conn.recv(struct.unpack(">I", head)[0], socket.MSG_WAITALL)
    out = json.dumps({"result": json.loads(body)["args"][0]}).encode()
    conn.sendall(struct.pack(">I", len(out)) + out)
"#;
        let child = std::process::Command::new("python3").args(["-c", script]).arg(&socket).spawn()?;
        let deadline = Instant::now() + Duration::from_secs(10);
        let stream = loop {
            match std::os::unix::net::UnixStream::connect(&socket) {
                Ok(stream) => break stream,
                // Polls for the socket with a deadline: the process signals nothing else when it listens.
                Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
                Err(err) => return Err(err).context("the Python floor process did not listen"),
            }
        };
        Ok(PythonFloor { child, stream, dir })
    }

    /// The request every floor round trip sends: a 1 KiB string, as the no-op's.
    fn request() -> Vec<u8> {
        let body = serde_json::to_vec(&json!({"args": ["x".repeat(1024)]})).expect("a request serializes");
        [&(body.len() as u32).to_be_bytes()[..], &body].concat()
    }

    /// Ends the process (it exits when its connection closes).
    fn stop(self) {
        let PythonFloor { mut child, stream, dir } = self;
        drop(stream);
        let _ = child.wait();
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// p50 of a length-prefixed JSON round trip to a warm Python process over a Unix socket.
fn floor_python(samples: usize) -> anyhow::Result<f64> {
    let mut python = PythonFloor::start("seq")?;
    let request = PythonFloor::request();
    let mut latencies = Vec::with_capacity(samples);
    for i in 0..samples + 20 {
        let started = Instant::now();
        python.stream.write_all(&request)?;
        let mut head = [0u8; 4];
        python.stream.read_exact(&mut head)?;
        let mut body = vec![0u8; u32::from_be_bytes(head) as usize];
        python.stream.read_exact(&mut body)?;
        if i >= 20 {
            latencies.push(ms(started.elapsed()));
        }
    }
    python.stop();
    Ok(quantile(&latencies, 0.5))
}

/// The floor under throughput: `clients` closed-loop clients each doing, per
/// "dispatch", the sequential floor's parts in a dispatch's order (a loopback
/// HTTP round trip, a durable single-row commit, a warm Python round trip,
/// another durable commit), all at once on this machine; completed per
/// second. The arrangement is the cheapest one: commits over as many
/// connections as the gateway's pool has (16), Python processes one per
/// core, the HTTP server in this process, so no dispatch path can beat it.
async fn floor_throughput(database_url: &str, clients: usize, window: Duration) -> anyhow::Result<f64> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (url, server) = trivial_server().await?;
    let http = reqwest::Client::new();
    let db = sqlx::postgres::PgPoolOptions::new().max_connections(16).connect(database_url).await?;
    sqlx::raw_sql("create table if not exists bench_floor (id bigserial primary key, v text)").execute(&db).await?;
    let cores = std::thread::available_parallelism().map_or(2, usize::from);
    let mut pythons = Vec::new();
    let mut streams = Vec::new();
    for i in 0..cores {
        let python = PythonFloor::start(&format!("tp{i}"))?;
        let stream = python.stream.try_clone()?;
        stream.set_nonblocking(true)?;
        streams.push(std::sync::Arc::new(tokio::sync::Mutex::new(tokio::net::UnixStream::from_std(stream)?)));
        pythons.push(python);
    }
    let request = std::sync::Arc::new(PythonFloor::request());
    let started = Instant::now();
    let deadline = started + window;
    let workers: Vec<_> = (0..clients)
        .map(|i| {
            let (http, url, db, request) = (http.clone(), url.clone(), db.clone(), request.clone());
            let python = streams[i % streams.len()].clone();
            tokio::spawn(async move {
                let mut done = 0u64;
                while Instant::now() < deadline {
                    http.get(&url).send().await?.bytes().await?;
                    sqlx::query("insert into bench_floor (v) values ($1)").bind("x").execute(&db).await?;
                    {
                        let mut python = python.lock().await;
                        python.write_all(&request).await?;
                        let mut head = [0u8; 4];
                        python.read_exact(&mut head).await?;
                        let mut body = vec![0u8; u32::from_be_bytes(head) as usize];
                        python.read_exact(&mut body).await?;
                    }
                    sqlx::query("insert into bench_floor (v) values ($1)").bind("x").execute(&db).await?;
                    done += 1;
                }
                anyhow::Ok(done)
            })
        })
        .collect();
    let mut completed = 0;
    for worker in workers {
        completed += worker.await??;
    }
    let rate = completed as f64 / started.elapsed().as_secs_f64();
    server.abort();
    db.close().await;
    drop(streams);
    for python in pythons {
        python.stop();
    }
    Ok(rate)
}

/// Warms `body`'s cluster with 20 calls, then times `plan.runs` runs of
/// `plan.sequential` calls.
async fn noop_runs(stack: &Stack, token: &str, body: &Value, plan: &Plan) -> anyhow::Result<Vec<Sequential>> {
    for _ in 0..20 {
        create_and_wait(&stack.client, &stack.url, token, body).await?;
    }
    let mut runs = Vec::with_capacity(plan.runs);
    for _ in 0..plan.runs {
        runs.push(sequential(stack, token, body, plan.sequential).await?);
    }
    Ok(runs)
}

/// The stages of a sequential no-op (key, label), from the client's clock
/// and the times the database recorded (each the start of a statement's
/// transaction, on the same machine's clock): the create's statement writes
/// `created_at`, the report's writes `finished_at`. The second stage overlaps
/// the third; the first, third and fourth add up to the whole.
const STAGES: [(&str, &str); 4] = [
    ("rest_noop_stage_request_ms", "  stage: create sent -> its statement begins (p50)"),
    ("rest_noop_stage_create_ms", "  stage: create's statement begins -> create answered (p50)"),
    ("rest_noop_stage_call_ms", "  stage: create's statement -> report's statement begins (p50)"),
    ("rest_noop_stage_report_ms", "  stage: report's statement begins -> result at the client (p50)"),
];

/// The `q` quantile of each run's latencies.
fn quantiles(runs: &[Sequential], q: f64) -> Vec<f64> {
    runs.iter().map(|run| quantile(&run.latencies, q)).collect()
}

/// One run of sequential calls.
struct Sequential {
    /// create → result, ms.
    latencies: Vec<f64>,
    /// Each call's id, and when (wall clock, s) it was sent, its create
    /// answered and its result in.
    marks: Vec<(uuid::Uuid, [f64; 3])>,
}

impl Sequential {
    /// Per stage of [`STAGES`], one value per call, ms.
    async fn stages(&self, stack: &Stack) -> anyhow::Result<[Vec<f64>; 4]> {
        use sqlx::Connection;
        let ids: Vec<uuid::Uuid> = self.marks.iter().map(|(id, _)| *id).collect();
        let mut db = sqlx::PgConnection::connect(&stack.database_url).await?;
        let recorded: std::collections::HashMap<uuid::Uuid, (f64, f64)> = sqlx::query_as::<_, (uuid::Uuid, f64, f64)>(
            "select dispatch_id, extract(epoch from created_at)::float8, extract(epoch from finished_at)::float8
             from dispatch where dispatch_id = any($1)",
        )
        .bind(&ids)
        .fetch_all(&mut db)
        .await?
        .into_iter()
        .map(|(id, created, finished)| (id, (created, finished)))
        .collect();
        db.close().await?;
        let mut stages: [Vec<f64>; 4] = Default::default();
        for (id, [sent, answered, done]) in &self.marks {
            let (created, finished) = recorded[id];
            for (stage, (from, to)) in
                stages.iter_mut().zip([(*sent, created), (created, *answered), (created, finished), (finished, *done)])
            {
                stage.push((to - from) * 1000.0);
            }
        }
        Ok(stages)
    }
}

/// How a client gets a call's result over REST.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Flow {
    /// `POST /v1/dispatches`, then `GET /v1/dispatches/{id}/wait`.
    CreateThenWait,
    /// `POST /v1/dispatches?wait_s=30`: the create's answer is the result.
    OneRequest,
}

async fn sequential(stack: &Stack, token: &str, body: &Value, n: usize) -> anyhow::Result<Sequential> {
    sequential_by(stack, token, body, n, Flow::CreateThenWait).await
}

/// `n` sequential calls made by `flow`. A one-request call's create is
/// answered with its result, so its `answered` mark is its end.
async fn sequential_by(stack: &Stack, token: &str, body: &Value, n: usize, flow: Flow) -> anyhow::Result<Sequential> {
    let wall = || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs_f64();
    let (mut latencies, mut marks) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for _ in 0..n {
        let (started, sent) = (Instant::now(), wall());
        let (done, answered) = match flow {
            Flow::CreateThenWait => {
                let id = create(&stack.client, &stack.url, token, body).await?;
                let answered = wall();
                (wait(&stack.client, &stack.url, token, &id, 30).await?, Some(answered))
            }
            Flow::OneRequest => (create_waiting(&stack.client, &stack.url, token, body).await?, None),
        };
        anyhow::ensure!(done["state"] == "succeeded", "dispatch did not succeed: {done}");
        latencies.push(ms(started.elapsed()));
        let end = wall();
        let id = uuid::Uuid::parse_str(done["id"].as_str().unwrap_or_default())?;
        marks.push((id, [sent, answered.unwrap_or(end), end]));
    }
    Ok(Sequential { latencies, marks })
}

/// Dispatches completed per second by `clients` closed-loop clients, each
/// getting its calls' results by `flow`, client `i` talking to `urls[i % len]`.
async fn throughput(
    client: &reqwest::Client,
    urls: &[String],
    token: &str,
    body: &Value,
    clients: usize,
    window: Duration,
    flow: Flow,
) -> anyhow::Result<f64> {
    let deadline = Instant::now() + window;
    let started = Instant::now();
    let workers: Vec<_> = (0..clients)
        .map(|i| {
            let (client, url, token, body) =
                (client.clone(), urls[i % urls.len()].clone(), token.to_owned(), body.clone());
            tokio::spawn(async move {
                let mut done = 0u64;
                while Instant::now() < deadline {
                    let ok = match flow {
                        Flow::CreateThenWait => create_and_wait(&client, &url, &token, &body).await.is_ok(),
                        Flow::OneRequest => create_waiting(&client, &url, &token, &body)
                            .await
                            .is_ok_and(|done| done["state"] == "succeeded"),
                    };
                    if ok {
                        done += 1;
                    }
                }
                done
            })
        })
        .collect();
    let mut completed = 0;
    for worker in workers {
        completed += worker.await?;
    }
    Ok(completed as f64 / started.elapsed().as_secs_f64())
}

async fn create(client: &reqwest::Client, url: &str, token: &str, body: &Value) -> anyhow::Result<String> {
    let created: Value =
        client.post(format!("{url}/v1/dispatches")).bearer_auth(token).json(body).send().await?.json().await?;
    Ok(created["id"].as_str().ok_or_else(|| anyhow::anyhow!("create failed: {created}"))?.to_owned())
}

async fn wait(client: &reqwest::Client, url: &str, token: &str, id: &str, timeout_s: u32) -> anyhow::Result<Value> {
    Ok(client
        .get(format!("{url}/v1/dispatches/{id}/wait?timeout_s={timeout_s}"))
        .bearer_auth(token)
        .send()
        .await?
        .json()
        .await?)
}

/// One request: a create answered once the call has ended (or after 30 s).
async fn create_waiting(client: &reqwest::Client, url: &str, token: &str, body: &Value) -> anyhow::Result<Value> {
    Ok(client.post(format!("{url}/v1/dispatches?wait_s=30")).bearer_auth(token).json(body).send().await?.json().await?)
}

async fn create_and_wait(client: &reqwest::Client, url: &str, token: &str, body: &Value) -> anyhow::Result<()> {
    let id = create(client, url, token, body).await?;
    let done = wait(client, url, token, &id, 30).await?;
    anyhow::ensure!(done["state"] == "succeeded", "dispatch did not succeed: {done}");
    Ok(())
}

/// p99 of: cancel request sent → the worker's pid no longer runs.
async fn cancel_to_gone(stack: &Stack, token: &str, bundle: &str, n: usize) -> anyhow::Result<f64> {
    let mut latencies = Vec::with_capacity(n);
    for _ in 0..n {
        let body = json!({"function": "pkg.jobs:sleepy", "args": [600], "bundle": bundle, "cluster": "local"});
        let id = create(&stack.client, &stack.url, token, &body).await?;
        let pid = loop {
            let page: Value = stack
                .client
                .get(format!("{}/v1/dispatches/{id}/logs", stack.url))
                .bearer_auth(token)
                .send()
                .await?
                .json()
                .await?;
            let text: String =
                page["entries"].as_array().into_iter().flatten().filter_map(|e| e["text"].as_str()).collect();
            if let Some(pid) = text.strip_prefix("pid ").and_then(|t| t.trim().parse::<i32>().ok()) {
                break pid;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        let started = Instant::now();
        stack
            .client
            .post(format!("{}/v1/dispatches/{id}/cancel", stack.url))
            .bearer_auth(token)
            .json(&json!({"reason": "bench"}))
            .send()
            .await?;
        while std::path::Path::new(&format!("/proc/{pid}")).exists() && !is_zombie(pid) {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        latencies.push(ms(started.elapsed()));
    }
    Ok(quantile(&latencies, 0.99))
}

/// `n` dispatches created through the stack's gateway and long-polled
/// through a second replica: p99 of (answer received - `finished_at`), in ms.
async fn cross_replica_wake(stack: &Stack, token: &str, body: &Value, n: usize) -> anyhow::Result<f64> {
    let (_replica, other) = stack.replica().await?;
    let mut latencies = Vec::with_capacity(n);
    for _ in 0..n {
        let id = create(&stack.client, &stack.url, token, body).await?;
        let done = wait(&stack.client, &other, token, &id, 30).await?;
        let answered = chrono::Utc::now();
        let finished: chrono::DateTime<chrono::Utc> =
            done["finished_at"].as_str().context("the wait answered before the dispatch ended")?.parse()?;
        latencies.push((answered - finished).num_microseconds().unwrap_or(0) as f64 / 1000.0);
    }
    Ok(quantile(&latencies, 0.99))
}

/// A schedule firing every second for `fires` instants: p50 and p99 of
/// (dispatch `created_at` - `scheduled_for`), in ms.
async fn fire_times(stack: &Stack, token: &str, fires: usize) -> anyhow::Result<(f64, f64)> {
    let url = &stack.url;
    let body = json!({"name": "bench-fire", "cron": "* * * * * *",
        "dispatch": {"function": "json:dumps", "args": [1], "cluster": "local"}});
    let response = stack.client.post(format!("{url}/v1/schedules")).bearer_auth(token).json(&body).send().await?;
    anyhow::ensure!(response.status().is_success(), "schedule create: {}", response.text().await?);
    let runs = || async {
        let page: Value = stack
            .client
            .get(format!("{url}/v1/schedules/bench-fire/runs?limit=500"))
            .bearer_auth(token)
            .send()
            .await?
            .json()
            .await?;
        Ok::<_, anyhow::Error>(page["items"].as_array().cloned().unwrap_or_default())
    };
    let deadline = Instant::now() + Duration::from_secs(fires as u64 + 30);
    let items = loop {
        let items = runs().await?;
        if items.len() >= fires {
            break items;
        }
        anyhow::ensure!(Instant::now() < deadline, "the schedule fired only {} times", items.len());
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    stack.client.delete(format!("{url}/v1/schedules/bench-fire")).bearer_auth(token).send().await?;
    let mut lateness: Vec<f64> = items
        .iter()
        .filter_map(|run| {
            let created: chrono::DateTime<chrono::Utc> = run["created_at"].as_str()?.parse().ok()?;
            let due: chrono::DateTime<chrono::Utc> = run["labels"]["scheduled_for"].as_str()?.parse().ok()?;
            Some((created - due).num_microseconds()? as f64 / 1000.0)
        })
        .collect();
    lateness.sort_by(f64::total_cmp);
    Ok((quantile(&lateness, 0.5), quantile(&lateness, 0.99)))
}

fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next().map(|st| st == "Z")))
        .unwrap_or(true)
}

/// POST /v1/clusters (local, 1 node), a dispatch to it, its result; then delete the cluster.
async fn cold_start(stack: &Stack, token: &str, name: &str) -> anyhow::Result<f64> {
    let started = Instant::now();
    let response = stack
        .client
        .post(format!("{}/v1/clusters", stack.url))
        .bearer_auth(token)
        .json(&json!({"name": name, "spec": {"provider": "local", "count": 1}}))
        .send()
        .await?;
    anyhow::ensure!(response.status() == 201, "cluster create failed: {}", response.text().await?);
    let body = json!({"function": "json:dumps", "args": [1], "cluster": name});
    create_and_wait(&stack.client, &stack.url, token, &body).await?;
    let took = ms(started.elapsed());
    stack.client.delete(format!("{}/v1/clusters/{name}", stack.url)).bearer_auth(token).send().await?;
    Ok(took)
}

/// Parks `n` long-polls on dispatches of a cluster with no nodes, reads the
/// gateway's RSS, then cancels them (64 at a time) and measures, for each
/// waiter, the time from its cancel being acknowledged to its wait returning.
async fn waiters(stack: &Stack, token: &str, n: usize) -> anyhow::Result<(f64, f64)> {
    let body = json!({"function": "json:dumps", "args": [1], "cluster": "nowhere"});
    let mut ids = Vec::with_capacity(n);
    for chunk in (0..n).collect::<Vec<_>>().chunks(64) {
        let creates = chunk.iter().map(|_| create(&stack.client, &stack.url, token, &body));
        for id in futures::future::join_all(creates).await {
            ids.push(id?);
        }
    }
    // The waits go as the SDK sends them (one process waiting on many
    // dispatches, as an orchestrator's triggerer does).
    let client = runhouse_gateway::Client::new(&stack.url, token)?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(String, Instant)>();
    let mut tasks = Vec::with_capacity(n);
    for id in &ids {
        let (client, id, tx) = (client.clone(), id.clone(), tx.clone());
        tasks.push(tokio::spawn(async move {
            let Ok(dispatch_id) = id.parse() else { return };
            if let Ok(done) = client.dispatch_wait_once(dispatch_id, 120).await {
                if done.state == wire::DispatchState::Cancelled {
                    let _ = tx.send((id, Instant::now()));
                }
            }
        }));
    }
    drop(tx);
    // Every wait has reached the gateway and parked once the gateway watches all n dispatches.
    let deadline = Instant::now() + Duration::from_secs(60);
    while stack.metric("rh_dispatches_watched").await < n as f64 {
        anyhow::ensure!(Instant::now() < deadline, "the waiters did not all park within 60 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let rss = rss_mb(stack.gateway.as_ref().unwrap().pid());
    let acked = std::sync::Arc::new(std::sync::Mutex::new(std::collections::HashMap::new()));
    for chunk in ids.chunks(64) {
        let cancels = chunk.iter().map(|id| {
            let (client, acked) = (stack.client.clone(), acked.clone());
            async move {
                let response = client
                    .post(format!("{}/v1/dispatches/{id}/cancel", stack.url))
                    .bearer_auth(token)
                    .json(&json!({}))
                    .send()
                    .await;
                if response.is_ok() {
                    acked.lock().unwrap().insert(id.clone(), Instant::now());
                }
            }
        });
        futures::future::join_all(cancels).await;
    }
    let mut wakes = Vec::with_capacity(n);
    while let Some((id, woke)) = rx.recv().await {
        if let Some(acked) = acked.lock().unwrap().get(&id) {
            wakes.push(ms(woke.saturating_duration_since(*acked)));
        }
    }
    for task in tasks {
        let _ = task.await;
    }
    anyhow::ensure!(wakes.len() * 10 >= n * 9, "only {} of {n} waiters woke on their cancel", wakes.len());
    Ok((rss, quantile(&wakes, 0.99)))
}

/// Fills the dispatch table to `rows` rows (straight SQL), then times
/// filtered list requests: alternately a label value on 0.1 % of the rows
/// and one on every row.
async fn list_with_rows(stack: &Stack, token: &str, rows: i64) -> anyhow::Result<f64> {
    use sqlx::Connection;
    let mut db = sqlx::PgConnection::connect(&stack.database_url).await?;
    let existing: i64 = sqlx::query_scalar("select count(*) from dispatch").fetch_one(&mut db).await?;
    let missing = (rows - existing).max(0);
    let started = Instant::now();
    let mut inserted = 0;
    while inserted < missing {
        let batch = (missing - inserted).min(100_000);
        sqlx::query(
            "with rows as (
                 insert into dispatch (dispatch_id, project, request_hash, function_ref, args, kwargs, cluster, cluster_project, requester, labels, state)
                 select gen_random_uuid(), 'default', 'bench', 'json:dumps', '[]', '{}', 'archive', 'default', 'bench',
                        jsonb_build_object('batch', (g % 1000)::text, 'dag_id', 'bench'), 'succeeded'
                 from generate_series(1, $1) g
                 returning *
             ),
             indexed as (
                 insert into dispatch_index (dispatch_id, project, cluster_project, cluster, is_method, state, updated_at)
                 select dispatch_id, project, cluster_project, cluster, false, state, updated_at from rows
             )
             insert into dispatch_label (project, key, value, dispatch_id)
             select r.project, l.key, l.value, r.dispatch_id from rows r, jsonb_each_text(r.labels) l",
        )
        .bind(batch)
        .execute(&mut db)
        .await?;
        inserted += batch;
    }
    sqlx::raw_sql("analyze dispatch, dispatch_index").execute(&mut db).await?;
    if missing > 0 {
        println!("(inserted {missing} rows in {:.0} s)", started.elapsed().as_secs_f64());
    }
    let mut latencies = Vec::new();
    for i in 0..220 {
        let started = Instant::now();
        let page: Value = stack
            .client
            // Alternately a label on 0.1 % of the rows and one on all of them.
            .get(if i % 2 == 0 {
                format!("{}/v1/dispatches?label=batch={}&limit=50", stack.url, i % 1000)
            } else {
                format!("{}/v1/dispatches?label=dag_id=bench&limit=50", stack.url)
            })
            .bearer_auth(token)
            .send()
            .await?
            .json()
            .await?;
        anyhow::ensure!(page["items"].is_array(), "list failed: {page}");
        if i >= 20 {
            latencies.push(ms(started.elapsed()));
        }
    }
    Ok(quantile(&latencies, 0.99))
}

/// Times the dashboard's runs page (50 rows, rendered server-side) over the
/// rows `list_with_rows` left in the table: alternately unfiltered, filtered by
/// a label on every row, and by the function every row has. Signs in the way
/// a browser does: a one-time link, then its session cookie.
async fn runs_page_with_rows(stack: &Stack, token: &str) -> anyhow::Result<(f64, f64)> {
    let link: Value = stack
        .client
        .post(format!("{}/v1/ui/login-links", stack.url))
        .bearer_auth(token)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let browser = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build()?;
    let signed_in = browser.get(format!("{}{}", stack.url, link["path"].as_str().unwrap_or_default())).send().await?;
    let cookie = signed_in
        .headers()
        .get(reqwest::header::SET_COOKIE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .context("the login link set no session cookie")?
        .to_owned();
    let mut latencies = Vec::new();
    for i in 0..150 {
        let query = match i % 3 {
            0 => "",
            1 => "?label=dag_id%3Dbench",
            _ => "?function=json%3Adumps",
        };
        let started = Instant::now();
        let response = browser.get(format!("{}/ui/runs{query}", stack.url)).header("cookie", &cookie).send().await?;
        anyhow::ensure!(response.status().is_success(), "runs page failed: {}", response.status());
        let html = response.text().await?;
        anyhow::ensure!(html.contains("<table class=\"runs\">"), "the runs page listed nothing");
        if i >= 15 {
            latencies.push(ms(started.elapsed()));
        }
    }
    Ok((quantile(&latencies, 0.5), quantile(&latencies, 0.99)))
}

/// `rh-bench --park-server`: a bare axum server served as the gateway serves
/// (same runtime settings, same connection handling), whose `/park` never
/// answers and `/parked` counts those waiting.
/// Prints its port, then serves until killed.
async fn park_server() -> anyhow::Result<()> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static PARKED: AtomicUsize = AtomicUsize::new(0);
    let router = axum::Router::new()
        .route(
            "/park",
            axum::routing::get(|| async {
                PARKED.fetch_add(1, Ordering::Relaxed);
                std::future::pending::<()>().await
            }),
        )
        .route("/parked", axum::routing::get(|| async { PARKED.load(Ordering::Relaxed).to_string() }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    println!("{}", listener.local_addr()?.port());
    std::io::stdout().flush()?;
    let max_streams = gateway::config::Settings::default().http.max_streams_per_connection;
    gateway::startup::serve(listener, router, max_streams, std::future::pending()).await;
    Ok(())
}

/// The floor under a parked waiter's memory: parks `n` requests (the same
/// headers as the waiters; as streams of one HTTP/2 connection, as the SDK
/// sends them, or over a connection each) on a bare axum server in its own
/// process and returns its RSS growth per request, in KiB.
async fn park_floor_kb(token: &str, n: usize, http2: bool) -> anyhow::Result<f64> {
    let mut child = std::process::Command::new(std::env::current_exe()?)
        .arg("--park-server")
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.take().expect("piped")), &mut line)?;
    let url = format!("http://127.0.0.1:{}", line.trim());
    let client = if http2 {
        reqwest::Client::builder().http2_prior_knowledge().build()?
    } else {
        reqwest::Client::builder().pool_max_idle_per_host(0).build()?
    };
    let parked = || async { client.get(format!("{url}/parked")).send().await?.text().await };
    parked().await?;
    let before = rss_mb(child.id());
    let waits: Vec<_> = (0..n)
        .map(|_| {
            let (client, url, token) = (client.clone(), url.clone(), token.to_owned());
            tokio::spawn(async move { client.get(format!("{url}/park?timeout_s=120")).bearer_auth(token).send().await })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    while parked().await?.trim().parse::<usize>()? < n {
        anyhow::ensure!(Instant::now() < deadline, "the requests did not all park within 60 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let after = rss_mb(child.id());
    let _ = child.kill();
    let _ = child.wait();
    for wait in waits {
        wait.abort();
    }
    Ok((after - before) * 1024.0 / n as f64)
}

/// CPU time of processes (each with its children), dispatches recorded and
/// WAL written, at one moment.
struct Usage {
    cpu_s: [f64; 3],
    dispatches: f64,
    wal_bytes: f64,
}

impl Usage {
    async fn now(stack: &Stack, pids: [u32; 3]) -> anyhow::Result<Usage> {
        use sqlx::Connection;
        let mut db = sqlx::PgConnection::connect(&stack.database_url).await?;
        let (dispatches, wal): (i64, f64) = sqlx::query_as(
            "select (select count(*) from dispatch), pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::float8",
        )
        .fetch_one(&mut db)
        .await?;
        db.close().await?;
        Ok(Usage { cpu_s: pids.map(tree_cpu_s), dispatches: dispatches as f64, wal_bytes: wal })
    }

    fn since(&self, before: &Usage) -> Usage {
        Usage {
            cpu_s: std::array::from_fn(|i| self.cpu_s[i] - before.cpu_s[i]),
            dispatches: (self.dispatches - before.dispatches).max(1.0),
            wal_bytes: self.wal_bytes - before.wal_bytes,
        }
    }
}

/// The Postgres server's postmaster, from the data directory's `postmaster.pid`.
async fn postmaster_pid(stack: &Stack) -> anyhow::Result<u32> {
    use sqlx::Connection;
    let mut db = sqlx::PgConnection::connect(&stack.database_url).await?;
    let dir: String = sqlx::query_scalar("select current_setting('data_directory')").fetch_one(&mut db).await?;
    db.close().await?;
    let file = std::fs::read_to_string(std::path::Path::new(&dir).join("postmaster.pid"))?;
    Ok(file.lines().next().unwrap_or_default().trim().parse()?)
}

/// CPU seconds (user and system) of a process, of its children that ended,
/// and of its live children.
fn tree_cpu_s(pid: u32) -> f64 {
    // After the command's closing parenthesis, utime is the 12th field, then stime, cutime and cstime.
    let ticks = |pid: u32| -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let rest = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
        rest.split_whitespace().skip(11).take(4).filter_map(|t| t.parse::<f64>().ok()).sum()
    };
    let per_s = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok().flatten().unwrap_or(100) as f64;
    (ticks(pid) + children_of(pid).into_iter().map(ticks).sum::<f64>()) / per_s
}

fn rss_mb(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

fn children_of(pid: u32) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|child| {
            std::fs::read_to_string(format!("/proc/{child}/stat")).ok().is_some_and(|stat| {
                stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok())
                    == Some(pid)
            })
        })
        .collect()
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines().find(|l| l.starts_with("model name")).map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    format!("{cores} cores, {cpu}")
}

/// A figure of an earlier run: its median, and its ratio to that run's floor.
struct Previous {
    median: f64,
    ratio_to_floor: Option<f64>,
}

/// The figures of the last full run (the results file this run replaces), by key.
fn previous_run(path: &std::path::Path) -> std::collections::HashMap<String, Previous> {
    let Ok(text) = std::fs::read_to_string(path) else { return Default::default() };
    let Ok(results) = serde_json::from_str::<Value>(&text) else { return Default::default() };
    let Some(figures) = results["figures"].as_object() else { return Default::default() };
    figures
        .iter()
        .filter_map(|(key, figure)| {
            let median = figure["median"].as_f64()?;
            Some((key.clone(), Previous { median, ratio_to_floor: figure["ratio_to_floor"].as_f64() }))
        })
        .collect()
}

fn print_table(plan: &Plan, figures: &[Figure], floor_ms: f64, previous: &std::collections::HashMap<String, Previous>) {
    println!();
    println!(
        "Runhouse Gateway benchmarks ({}; {}; median of {} run(s), min-max)",
        machine(),
        if plan.smoke { "SMOKE: tiny sizes, numbers mean nothing" } else { "release build, durable commits" },
        plan.runs
    );
    println!(
        "{:<72} {:>10} {:>19} {:>9} {:>8} {:>16}",
        "measure", "median", "min-max", "target", "vs floor", "previous run"
    );
    for f in figures {
        let min = f.runs.iter().copied().fold(f64::INFINITY, f64::min);
        let max = f.runs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let ratio = f.ratio(floor_ms).map_or_else(String::new, |r| format!("{r:.1}x"));
        let before = match previous.get(&f.key) {
            Some(Previous { median, ratio_to_floor: Some(r) }) => format!("{median:.2} ({r:.1}x)"),
            Some(Previous { median, ratio_to_floor: None }) => format!("{median:.2}"),
            None => "-".to_owned(),
        };
        println!(
            "{:<72} {:>7.2} {:<2} {:>8.2}-{:<10.2} {:>9} {:>8} {:>16}",
            f.label,
            f.median(),
            short(f.unit),
            min,
            max,
            f.target,
            ratio,
            before
        );
    }
    println!("floor (sum of the three floor parts): {floor_ms:.2} ms");
    println!("vs floor: a time as a multiple of that sum; a rate as how many times below the floor's own rate");
}

fn short(unit: &str) -> &str {
    match unit {
        "dispatches/s" => "/s",
        other => other,
    }
}

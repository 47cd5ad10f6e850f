//! How the gateway's cost grows: with the number of nodes, with the
//! dispatches already queued, and with a second replica. The nodes are
//! simulated (`e2e::simnodes`): they answer every call at once, so what is
//! measured is the gateway and Postgres, not Python.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use e2e::simnodes::{SimNodes, SimSpec};
use e2e::Stack;
use serde_json::json;
use sqlx::{Connection, PgConnection};

use super::{create, fig, ms, quantile, repeat, rss_mb, throughput, Figure, Flow, Plan};

/// Slots across each set of simulated nodes, so 1 node and 1,000 offer
/// (nearly) the same capacity and only the count of nodes changes.
const TOTAL_SLOTS: usize = 1024;
/// Where the backlog waits: a cluster with no nodes, so it stays queued.
const PARKED: &str = "sim-parked";

/// Per node count: create → call at the node (p50, p99) and placements/s
/// under closed-loop clients, with 0, 10k and 100k dispatches queued
/// elsewhere; and how fast a backlog of that size on the nodes' own cluster
/// is placed.
pub async fn nodes_and_queues(stack: &Stack, token: &str, plan: &Plan) -> anyhow::Result<Vec<Figure>> {
    let mut db = PgConnection::connect(&stack.database_url).await?;
    let mut figures = Vec::new();
    for &nodes in &plan.sim_nodes {
        let cluster = format!("sim-{nodes}");
        let started = Instant::now();
        let sim = SimNodes::start(
            &stack.keys,
            SimSpec {
                gateways: std::slice::from_ref(&stack.url),
                project: "default",
                cluster: &cluster,
                nodes,
                slots: (TOTAL_SLOTS / nodes).max(1) as u32,
            },
        )
        .await?;
        println!("({nodes} simulated nodes registered and linked in {:.1} s)", started.elapsed().as_secs_f64());
        let gateway = stack.gateway.as_ref().expect("the stack's gateway").pid();
        let linked_rss = rss_mb(gateway);
        let mut parked = 0;
        for &queued in &plan.sim_queued {
            queue_rows(&mut db, PARKED, queued - parked).await?;
            parked = queued;
            let (p50, p99, rate) = create_to_call(stack, &mut db, token, &cluster, &sim, plan).await?;
            let at = format!("{nodes} node(s), {queued} queued elsewhere");
            figures.push(fig(
                format!("sim_place_p50_ms_n{nodes}_q{queued}"),
                format!("create -> call at node, {at} (p50)"),
                "ms",
                "",
                vec![p50],
            ));
            figures.push(fig(format!("sim_place_p99_ms_n{nodes}_q{queued}"), "  (p99)", "ms", "", vec![p99]));
            figures.push(fig(
                format!("sim_place_rate_n{nodes}_q{queued}"),
                format!("  placements/s, {} closed-loop clients", plan.sim_clients),
                "dispatches/s",
                "",
                vec![rate],
            ));
            if queued > 0 {
                let drained = drain(&mut db, &cluster, &sim, queued).await?;
                let target = if nodes >= 1000 && queued >= 100_000 { ">= 5000" } else { "" };
                figures.push(fig(
                    format!("sim_drain_per_s_n{nodes}_q{queued}"),
                    format!("placing {queued} already queued on {nodes} node(s) (placements/s)"),
                    "dispatches/s",
                    target,
                    vec![drained],
                ));
            }
        }
        figures.push(fig(
            format!("sim_gateway_rss_linked_mb_n{nodes}"),
            format!("gateway RSS, {nodes} node(s) linked"),
            "MB",
            "",
            vec![linked_rss],
        ));
        figures.push(fig(
            format!("sim_gateway_rss_after_mb_n{nodes}"),
            "  and after the measures above",
            "MB",
            "",
            vec![rss_mb(gateway)],
        ));
        // The next node count starts from an empty backlog again.
        // Both copies of the state (migrations/0015_dispatch_index.sql).
        sqlx::query(
            "with cancelled as (
                 update dispatch set state = 'cancelled', finished_at = now(), updated_at = now()
                 where cluster = $1 and state = 'queued'
                 returning dispatch_id, state, finished_at, updated_at
             )
             update dispatch_index q set state = c.state, finished_at = c.finished_at, updated_at = c.updated_at
             from cancelled c where q.dispatch_id = c.dispatch_id",
        )
        .bind(PARKED)
        .execute(&mut db)
        .await?;
        anyhow::ensure!(
            sim.stats.report_failures.load(Ordering::Relaxed) == 0,
            "the gateway refused simulated reports"
        );
    }
    Ok(figures)
}

/// Throughput of 64 closed-loop clients against one replica and against two
/// on the same Postgres (clients and nodes split between them).
pub async fn replicas(stack: &Stack, token: &str, plan: &Plan) -> anyhow::Result<Vec<Figure>> {
    let (_replica, second) = stack.replica().await?;
    let mut figures = Vec::new();
    for urls in [vec![stack.url.clone()], vec![stack.url.clone(), second]] {
        let cluster = format!("sim-replicas-{}", urls.len());
        let spec = SimSpec { gateways: &urls, project: "default", cluster: &cluster, nodes: 64, slots: 16 };
        let sim = SimNodes::start(&stack.keys, spec).await?;
        let body = json!({"function": "json:dumps", "args": ["x".repeat(1024)], "cluster": cluster});
        throughput(
            &stack.client,
            &urls,
            token,
            &body,
            plan.concurrency,
            Duration::from_millis(500),
            Flow::CreateThenWait,
        )
        .await?;
        let calls_before = sim.stats.calls.load(Ordering::Relaxed);
        let http_before = sim.stats.over_http.load(Ordering::Relaxed);
        let rates = repeat(plan.runs, || {
            throughput(&stack.client, &urls, token, &body, plan.concurrency, plan.window, Flow::CreateThenWait)
        })
        .await?;
        let calls = sim.stats.calls.load(Ordering::Relaxed) - calls_before;
        let http = sim.stats.over_http.load(Ordering::Relaxed) - http_before;
        let (key, label) = if urls.len() == 1 {
            (
                "sim_throughput_1_replica",
                format!("throughput, {} clients, 64 simulated nodes, 1 replica", plan.concurrency),
            )
        } else {
            ("sim_throughput_2_replicas", "  the same, 2 replicas on one Postgres (clients and nodes split)".to_owned())
        };
        figures.push(fig(key, label, "dispatches/s", "", rates));
        if urls.len() == 2 {
            let share = 100.0 * http as f64 / calls.max(1) as f64;
            figures.push(fig(
                "sim_replicas_http_pct",
                "  calls that reached their node over HTTP, not its link",
                "%",
                "",
                vec![share],
            ));
        }
    }
    Ok(figures)
}

/// Creates `plan.sim_creates` dispatches on `cluster` from `plan.sim_clients`
/// closed-loop clients; returns the p50 and p99 of create sent → call at its
/// node, and calls placed per second.
async fn create_to_call(
    stack: &Stack,
    db: &mut PgConnection,
    token: &str,
    cluster: &str,
    sim: &SimNodes,
    plan: &Plan,
) -> anyhow::Result<(f64, f64, f64)> {
    sim.track_arrivals();
    let sent = Arc::new(Mutex::new(Vec::with_capacity(plan.sim_creates)));
    let left = Arc::new(std::sync::atomic::AtomicUsize::new(plan.sim_creates));
    let started = Instant::now();
    let clients: Vec<_> = (0..plan.sim_clients)
        .map(|_| {
            let (client, url, token) = (stack.client.clone(), stack.url.clone(), token.to_owned());
            let (sent, left) = (sent.clone(), left.clone());
            let cluster = cluster.to_owned();
            tokio::spawn(async move {
                while left.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1)).is_ok() {
                    let body = json!({"function": "json:dumps", "args": [1], "cluster": cluster});
                    let at = Instant::now();
                    let id: uuid::Uuid = create(&client, &url, &token, &body).await?.parse()?;
                    sent.lock().expect("lock poisoned").push((id, at));
                }
                anyhow::Ok(())
            })
        })
        .collect();
    for client in clients {
        client.await??;
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while sim.arrived() < plan.sim_creates {
        anyhow::ensure!(Instant::now() < deadline, "the created dispatches did not all reach their nodes");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let arrivals = sim.take_arrivals();
    let sent = std::mem::take(&mut *sent.lock().expect("lock poisoned"));
    let latencies: Vec<f64> = sent.iter().map(|(id, at)| ms(arrivals[id].duration_since(*at))).collect();
    let last = arrivals.values().max().copied().unwrap_or(started);
    let rate = plan.sim_creates as f64 / last.duration_since(started).as_secs_f64();
    wait_idle(db, cluster).await?;
    Ok((quantile(&latencies, 0.5), quantile(&latencies, 0.99), rate))
}

/// Queues `count` dispatches on `cluster` in one commit and times their
/// placement, first call to last; returns placements per second.
async fn drain(db: &mut PgConnection, cluster: &str, sim: &SimNodes, count: i64) -> anyhow::Result<f64> {
    let before = sim.stats.calls.load(Ordering::Relaxed);
    let placed = || sim.stats.calls.load(Ordering::Relaxed) - before;
    queue_rows(db, cluster, count).await?;
    let deadline = Instant::now() + Duration::from_secs(900);
    while placed() == 0 {
        anyhow::ensure!(Instant::now() < deadline, "nothing of the backlog was placed");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let first = Instant::now();
    while placed() < count as u64 {
        anyhow::ensure!(Instant::now() < deadline, "the backlog was not placed in time");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let rate = (count - 1).max(1) as f64 / first.elapsed().as_secs_f64();
    wait_idle(db, cluster).await?;
    Ok(rate)
}

/// Waits until nothing on `cluster` is queued or running.
async fn wait_idle(db: &mut PgConnection, cluster: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let active: i64 = sqlx::query_scalar(
            "select count(*) from dispatch_index where cluster = $1 and state in ('queued', 'running', 'cancelling')",
        )
        .bind(cluster)
        .fetch_one(&mut *db)
        .await?;
        if active == 0 {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "{active} dispatches on {cluster} never finished");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Writes `count` queued dispatches (each with its `queued` event) on
/// `cluster`, as creates would, in one commit, and refreshes the planner's
/// statistics as autovacuum would.
async fn queue_rows(db: &mut PgConnection, cluster: &str, count: i64) -> anyhow::Result<()> {
    if count <= 0 {
        return Ok(());
    }
    sqlx::query(
        "with rows as (
             insert into dispatch (dispatch_id, project, request_hash, function_ref, args, kwargs, cluster,
                                   cluster_project, requester, state)
             select gen_random_uuid(), 'default', 'bench', 'json:dumps', jsonb_build_array(g), '{}', $2,
                    'default', 'bench', 'queued'
             from generate_series(1, $1) g
             returning *
         ),
         indexed as (
             insert into dispatch_index (dispatch_id, project, cluster_project, cluster, is_method, state, updated_at)
             select dispatch_id, project, cluster_project, cluster, false, state, updated_at from rows
         )
         insert into dispatch_event (dispatch_id, from_state, to_state, generation, actor, reason)
         select dispatch_id, null, 'queued', 1, 'bench', 'created' from rows",
    )
    .bind(count)
    .bind(cluster)
    .execute(&mut *db)
    .await?;
    sqlx::raw_sql("analyze dispatch, dispatch_index").execute(&mut *db).await?;
    Ok(())
}

//! `rh-bench`: the full-stack baseline. Starts Postgres (durable commits),
//! `rh-gateway` and one `rh-node`, then measures a no-op dispatch from create
//! to result: sequential latency, and throughput with concurrent clients.
//! Prints a table and writes `bench/results/latest.json`.
//!
//! `rh-bench --smoke` runs a few iterations only, to keep the code from rotting.

use std::time::{Duration, Instant};

use e2e::Stack;
use serde_json::json;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let smoke = std::env::args().any(|a| a == "--smoke");
    if !smoke {
        std::env::set_var("RH_E2E_DURABLE", "1");
    }
    let (sequential_n, concurrency, window) =
        if smoke { (20, 8, Duration::from_secs(1)) } else { (1000, 64, Duration::from_secs(10)) };

    let stack = Stack::start().await?;
    let _node = stack.start_node("bench-1", "local", 64).await?;
    let token = stack.admin_token();
    let body = json!({"function": "json:dumps", "args": ["x".repeat(1024)], "cluster": "local"});

    // Warm up: the first calls start workers.
    for _ in 0..20 {
        create_and_wait(&stack, &token, &body).await?;
    }

    let mut latencies = Vec::with_capacity(sequential_n);
    for _ in 0..sequential_n {
        let started = Instant::now();
        create_and_wait(&stack, &token, &body).await?;
        latencies.push(started.elapsed());
    }
    latencies.sort();
    let quantile = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    let (p50, p99) = (quantile(0.50), quantile(0.99));

    let deadline = Instant::now() + window;
    let started = Instant::now();
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let (client, url, token, body) = (stack.client.clone(), stack.url.clone(), token.clone(), body.clone());
            tokio::spawn(async move {
                let mut done = 0u64;
                while Instant::now() < deadline {
                    if create_and_wait_with(&client, &url, &token, &body).await.is_ok() {
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
    let throughput = completed as f64 / started.elapsed().as_secs_f64();

    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!("full stack, no-op dispatch with a 1 KiB argument (create -> long-poll wait -> result)");
    println!("  sequential ({sequential_n} calls):      p50 {:.2} ms   p99 {:.2} ms", ms(p50), ms(p99));
    println!("  {concurrency} concurrent clients ({:.0} s):  {throughput:.0} dispatches/s", window.as_secs_f64());
    if !smoke {
        let results = json!({
            "measured_at": chrono_now(),
            "sequential_p50_ms": ms(p50),
            "sequential_p99_ms": ms(p99),
            "concurrency": concurrency,
            "throughput_per_s": throughput,
            "durable_commits": true,
        });
        let path = e2e::workspace_root().join("bench/results/latest.json");
        std::fs::write(&path, serde_json::to_string_pretty(&results)?)?;
        println!("written to {}", path.display());
    }
    Ok(())
}

async fn create_and_wait(stack: &Stack, token: &str, body: &serde_json::Value) -> anyhow::Result<()> {
    create_and_wait_with(&stack.client, &stack.url, token, body).await
}

async fn create_and_wait_with(
    client: &reqwest::Client,
    url: &str,
    token: &str,
    body: &serde_json::Value,
) -> anyhow::Result<()> {
    let created: serde_json::Value =
        client.post(format!("{url}/v1/dispatches")).bearer_auth(token).json(body).send().await?.json().await?;
    let id = created["id"].as_str().ok_or_else(|| anyhow::anyhow!("create failed: {created}"))?;
    let done: serde_json::Value = client
        .get(format!("{url}/v1/dispatches/{id}/wait?timeout_s=30"))
        .bearer_auth(token)
        .send()
        .await?
        .json()
        .await?;
    anyhow::ensure!(done["state"] == "succeeded", "dispatch did not succeed: {done}");
    Ok(())
}

fn chrono_now() -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    format!("unix:{secs}")
}

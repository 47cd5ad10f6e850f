//! Schedules on three real gateway replicas: exactly one dispatch per instant
//! while one replica is killed with SIGKILL and started again.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use e2e::Stack;
use serde_json::{json, Value};

/// Every dispatch of schedule `tick`, by its `scheduled_for` label, with
/// how late each was recorded (ms).
async fn fires(stack: &Stack, url: &str) -> BTreeMap<DateTime<Utc>, Vec<f64>> {
    let mut counts: BTreeMap<DateTime<Utc>, Vec<f64>> = BTreeMap::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut request = stack
            .client
            .get(format!("{url}/v1/schedules/tick/runs"))
            .bearer_auth(stack.admin_token())
            .query(&[("limit", "500")]);
        if let Some(cursor) = &cursor {
            request = request.query(&[("cursor", cursor)]);
        }
        let page: Value = request.send().await.unwrap().json().await.unwrap();
        for run in page["items"].as_array().unwrap() {
            let at: DateTime<Utc> = run["labels"]["scheduled_for"].as_str().unwrap().parse().unwrap();
            let created: DateTime<Utc> = run["created_at"].as_str().unwrap().parse().unwrap();
            counts.entry(at).or_default().push((created - at).num_microseconds().unwrap() as f64 / 1000.0);
        }
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => return counts,
        }
    }
}

#[tokio::test]
async fn three_replicas_fire_every_second_exactly_once_while_one_is_killed_and_restarted() {
    let mut stack = Stack::start().await.unwrap();
    drop(stack.gateway.take());
    let mut replicas = Vec::new();
    for _ in 0..3 {
        replicas.push(stack.replica().await.unwrap());
    }
    let response = stack
        .client
        .post(format!("{}/v1/schedules", replicas[0].1))
        .bearer_auth(stack.admin_token())
        .json(&json!({
            "name": "tick", "cron": "* * * * * *", "catchup": "all", "max_catchup": 100,
            // No such cluster: each run stays queued, so only the firing is measured.
            "dispatch": {"function": "json:dumps", "args": [1], "cluster": "nowhere"}
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201, "{}", response.text().await.unwrap());
    let url = replicas[2].1.clone();
    let total = |n: usize| {
        let (stack, url) = (&stack, url.clone());
        async move { fires(stack, &url).await.len() >= n }
    };
    stack.wait_until(Duration::from_secs(60), "5 fires", || total(5)).await.unwrap();
    // SIGKILL: no shutdown, its claims and connections die with it.
    let (mut killed, _) = replicas.remove(1);
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(killed.0.id() as i32), nix::sys::signal::Signal::SIGKILL)
        .unwrap();
    let _ = killed.0.wait();
    stack.wait_until(Duration::from_secs(60), "10 fires", || total(10)).await.unwrap();
    replicas.push(stack.replica().await.unwrap());
    stack.wait_until(Duration::from_secs(60), "15 fires", || total(15)).await.unwrap();
    let response = stack
        .client
        .patch(format!("{}/v1/schedules/tick", replicas[0].1))
        .bearer_auth(stack.admin_token())
        .json(&json!({"paused": true}))
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success());

    let counts = fires(&stack, &url).await;
    let twice: Vec<_> = counts.iter().filter(|(_, n)| n.len() != 1).collect();
    assert!(twice.is_empty(), "instants fired more than once: {twice:?}");
    let instants: Vec<_> = counts.keys().collect();
    let gaps: Vec<_> = instants.windows(2).filter(|w| (*w[1] - *w[0]).num_seconds() != 1).collect();
    assert!(gaps.is_empty(), "seconds never fired: {gaps:?}");
    let mut late: Vec<f64> = counts.values().flatten().copied().collect();
    late.sort_by(f64::total_cmp);
    let at = |q: f64| late[((late.len() as f64 * q) as usize).min(late.len() - 1)];
    println!(
        "[schedules] {} instants over the kill and restart, each fired exactly once; instant -> dispatch recorded: \
         p50 {:.0} ms, p99 {:.0} ms (debug build, 3 replicas)",
        counts.len(),
        at(0.5),
        at(0.99)
    );
}

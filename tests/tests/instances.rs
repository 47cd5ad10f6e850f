//! Remote objects end to end: a real gateway, a real node, real Python.

use std::time::{Duration, Instant};

use e2e::Stack;
use serde_json::{json, Value};

async fn instance(stack: &Stack, body: Value) -> Value {
    let (status, created) = stack.post("/v1/instances", &body).await;
    assert!(status.is_success(), "{status} {created}");
    created
}

async fn wait_instance(stack: &Stack, name: &str, state: &str) -> Value {
    let path = format!("/v1/instances/{name}");
    let reached = stack
        .wait_until(Duration::from_secs(60), &format!("instance {name} to be {state}"), || async {
            stack.get(&path).await.1["state"] == state
        })
        .await;
    let now = stack.get(&path).await.1;
    if let Err(err) = reached {
        panic!("{err}: {now}");
    }
    now
}

/// Calls `method` of `name`; returns the dispatch id.
async fn call(stack: &Stack, name: &str, method: &str, args: Value) -> String {
    let (status, dispatch) =
        stack.post("/v1/dispatches", &json!({"instance": name, "method": method, "args": args})).await;
    assert_eq!(status, 201, "{dispatch}");
    dispatch["id"].as_str().unwrap().to_owned()
}

async fn result(stack: &Stack, id: &str) -> Value {
    let done = stack.wait(id, 60).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    done["result"].clone()
}

#[tokio::test]
async fn an_instance_keeps_its_state_over_100_calls_and_a_second_client_sees_it() {
    let stack = Stack::start().await.unwrap();
    let _node = stack.start_node("n1", "local", 4).await.unwrap();
    let bundle = stack.fixture_bundle().await;
    let created = instance(
        &stack,
        json!({"name": "counter", "class": "pkg.objects:Counter", "bundle": bundle, "cluster": "local",
               "kwargs": {"start": 10, "label": "c1"}}),
    )
    .await;
    assert_eq!(created["state"], "starting", "{created}");
    // Calls made while it is starting wait behind the constructor.
    let first = call(&stack, "counter", "incr", json!([])).await;
    assert_eq!(result(&stack, &first).await, 11);
    for expected in 12..=110 {
        let id = call(&stack, "counter", "incr", json!([])).await;
        assert_eq!(result(&stack, &id).await, expected);
    }
    let ready = wait_instance(&stack, "counter", "ready").await;
    let state = result(&stack, &call(&stack, "counter", "state", json!([])).await).await;
    assert_eq!(state["count"], 110);
    assert_eq!(state["constructed"], 1, "the constructor ran once: {state}");
    // The constructor's output is its dispatch's log.
    let (stdout, _) = stack.logs(ready["constructor_id"].as_str().unwrap()).await;
    assert_eq!(stdout, "constructing c1 from 10\n");
    // Creating it again with the same fields attaches (200); with others it is a 409.
    let body = json!({"name": "counter", "class": "pkg.objects:Counter", "bundle": bundle, "cluster": "local",
                      "kwargs": {"start": 10, "label": "c1"}});
    let (status, again) = stack.post("/v1/instances", &body).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["id"], ready["id"]);
    let mut other = body.clone();
    other["kwargs"]["start"] = json!(0);
    let (status, conflict) = stack.post("/v1/instances", &other).await;
    assert_eq!(status, 409, "{conflict}");
    assert!(conflict["message"].as_str().unwrap().contains("other arguments"), "{conflict}");
    // Method calls are dispatches: labelled, listed, with events.
    let (_, listed) = stack.get("/v1/dispatches?label=instance=counter&limit=500").await;
    assert_eq!(listed["items"].as_array().unwrap().len(), 102, "100 + state + the constructor");
    let (_, instances) = stack.get("/v1/instances").await;
    assert_eq!(instances["items"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn calls_from_8_threads_run_at_once_and_each_output_lands_in_its_own_log() {
    let stack = Stack::start().await.unwrap();
    let _node = stack.start_node("n1", "local", 2).await.unwrap();
    let bundle = stack.fixture_bundle().await;
    instance(&stack, json!({"name": "c", "class": "pkg.objects:Counter", "bundle": bundle, "cluster": "local"})).await;
    wait_instance(&stack, "c", "ready").await;
    // One call alone, for scale.
    let started = Instant::now();
    let id = call(&stack, "c", "nap", json!([1.0])).await;
    result(&stack, &id).await;
    let one = started.elapsed();
    let started = Instant::now();
    let mut ids = Vec::new();
    for tag in 0..8 {
        ids.push((tag, call(&stack, "c", "shout", json!([format!("t{tag}"), 50])).await));
    }
    let naps: Vec<String> = futures::future::join_all((0..8).map(|_| call(&stack, "c", "nap", json!([1.0])))).await;
    for id in &naps {
        result(&stack, id).await;
    }
    let eight = started.elapsed();
    assert!(eight < one * 4, "8 naps of 1 s took {eight:?}, one took {one:?}: they did not overlap");
    for (tag, id) in ids {
        assert_eq!(result(&stack, &id).await, json!(format!("t{tag}")));
        let (stdout, stderr) = stack.logs(&id).await;
        let expected: String = (0..50).map(|i| format!("t{tag} line {i}\n")).collect();
        assert_eq!(stdout, expected, "call t{tag}'s log holds exactly its own lines");
        assert_eq!(stderr, "");
    }
    println!(
        "[instances] 8 one-second naps on one instance: {:.2} s (one alone {:.2} s)",
        eight.as_secs_f64(),
        one.as_secs_f64()
    );
}

#[tokio::test]
async fn bad_classes_and_methods_get_clear_errors() {
    let stack = Stack::start().await.unwrap();
    let _node = stack.start_node("n1", "local", 2).await.unwrap();
    let bundle = stack.fixture_bundle().await;
    // Input the gateway can check: 422 naming the field, nothing stored.
    for (body, field) in [
        (json!({"name": "bad name!", "class": "pkg.objects:Counter", "cluster": "local"}), "name"),
        (json!({"name": "x", "class": "pkg.objects", "cluster": "local"}), "class"),
        (
            json!({"name": "x", "class": "pkg.objects:Counter", "cluster": "local", "max_concurrency": 0}),
            "max_concurrency",
        ),
        (
            json!({"name": "x", "class": "pkg.objects:Counter", "cluster": "local", "idle_stop_minutes": -1}),
            "idle_stop_minutes",
        ),
        (json!({"name": "x", "class": "pkg.objects:Counter", "cluster": "local", "bundle": "00"}), "bundle"),
    ] {
        let (status, error) = stack.post("/v1/instances", &body).await;
        assert_eq!(status, 422, "{body} -> {error}");
        assert_eq!(error["field"], field, "{error}");
    }
    let (status, error) =
        stack.post("/v1/instances", &json!({"name": "x", "class": "a:B", "cluster": "local", "colour": 1})).await;
    assert_eq!(status, 422, "{error}");
    assert!(error["message"].as_str().unwrap().contains("colour"), "{error}");
    let (_, listed) = stack.get("/v1/instances?all=true").await;
    assert_eq!(listed["items"], json!([]));

    // An unknown class and a function: the constructor fails, naming it.
    instance(&stack, json!({"name": "ghost", "class": "pkg.objects:Nope", "bundle": bundle, "cluster": "local"})).await;
    let ghost = wait_instance(&stack, "ghost", "failed").await;
    assert_eq!(ghost["failure"]["code"], "entrypoint_not_found", "{ghost}");
    assert!(ghost["failure"]["message"].as_str().unwrap().contains("pkg.objects:Nope"), "{ghost}");
    instance(&stack, json!({"name": "fn", "class": "pkg.objects:not_a_class", "bundle": bundle, "cluster": "local"}))
        .await;
    let function = wait_instance(&stack, "fn", "failed").await;
    assert_eq!(function["failure"]["code"], "not_a_class", "{function}");

    // A constructor that raises: failed, with its traceback; calls get 409.
    instance(&stack, json!({"name": "broken", "class": "pkg.objects:Broken", "bundle": bundle, "cluster": "local"}))
        .await;
    let broken = wait_instance(&stack, "broken", "failed").await;
    assert_eq!(broken["failure"]["remote_type"], "RuntimeError", "{broken}");
    assert!(broken["failure"]["traceback"].as_str().unwrap().contains("no GPU here"), "{broken}");
    let (status, refused) = stack.post("/v1/dispatches", &json!({"instance": "broken", "method": "go"})).await;
    assert_eq!(status, 409, "{refused}");
    assert_eq!(refused["code"], "instance_failed", "{refused}");
    assert!(refused["message"].as_str().unwrap().contains("no GPU here"), "{refused}");

    // Bad method calls.
    instance(&stack, json!({"name": "c", "class": "pkg.objects:Counter", "bundle": bundle, "cluster": "local"})).await;
    for (body, status, field) in [
        (json!({"instance": "c"}), 422, "method"),
        (json!({"instance": "c", "method": "__class__"}), 422, "method"),
        (json!({"instance": "c", "method": "incr", "cluster": "local"}), 422, "cluster"),
        (json!({"method": "incr", "function": "a:b", "cluster": "local"}), 422, "method"),
        (json!({"instance": "nobody", "method": "incr"}), 422, "instance"),
    ] {
        let (got, error) = stack.post("/v1/dispatches", &body).await;
        assert_eq!(got, status, "{body} -> {error}");
        assert_eq!(error["field"], field, "{body} -> {error}");
    }
    let missing = stack.wait(&call(&stack, "c", "fly", json!([])).await, 60).await;
    assert_eq!(missing["state"], "failed", "{missing}");
    assert_eq!(missing["failure"]["code"], "method_not_found", "{missing}");
    assert!(missing["failure"]["message"].as_str().unwrap().contains("`fly`"), "{missing}");
    let attribute = stack.wait(&call(&stack, "c", "not_callable", json!([])).await, 60).await;
    assert_eq!(attribute["failure"]["code"], "method_not_found", "{attribute}");
    let raised = stack.wait(&call(&stack, "c", "fail", json!(["bad input"])).await, 60).await;
    assert_eq!(raised["failure"]["remote_type"], "ValueError", "{raised}");
    // The instance is unharmed.
    assert_eq!(result(&stack, &call(&stack, "c", "incr", json!([])).await).await, 1);

    // Deleted: calls get 409, and its worker goes.
    let ready = wait_instance(&stack, "c", "ready").await;
    let pid = result(&stack, &call(&stack, "c", "state", json!([])).await).await["pid"].as_i64().unwrap() as i32;
    let (status, deleted) = stack.delete("/v1/instances/c").await;
    assert_eq!(status, 200, "{deleted}");
    assert_eq!(deleted["state"], "deleted");
    let (status, refused) = stack.post("/v1/dispatches", &json!({"instance": "c", "method": "incr"})).await;
    assert_eq!(status, 409, "{refused}");
    assert_eq!(refused["code"], "instance_deleted", "{refused}");
    stack
        .wait_until(Duration::from_secs(10), "the instance's worker to exit", || async {
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_err()
        })
        .await
        .unwrap();
    assert_eq!(ready["state"], "ready");
}

#[tokio::test]
async fn cancelling_a_method_call_leaves_the_instance_answering() {
    let stack = Stack::start().await.unwrap();
    let _node = stack.start_node("n1", "local", 2).await.unwrap();
    let bundle = stack.fixture_bundle().await;
    instance(&stack, json!({"name": "c", "class": "pkg.objects:Counter", "bundle": bundle, "cluster": "local"})).await;
    wait_instance(&stack, "c", "ready").await;

    // In time.sleep: it stops at once, and the instance answers the next call.
    let id = call(&stack, "c", "nap", json!([600])).await;
    stack
        .wait_until(Duration::from_secs(30), "the nap to run", || async {
            stack.get(&format!("/v1/dispatches/{id}")).await.1["state"] == "running"
        })
        .await
        .unwrap();
    let asked = Instant::now();
    let (status, _) = stack.post(&format!("/v1/dispatches/{id}/cancel"), &json!({"reason": "enough"})).await;
    assert!(status.is_success());
    let done = stack.wait(&id, 30).await;
    let took = asked.elapsed();
    assert_eq!(done["state"], "cancelled", "{done}");
    assert!(took < Duration::from_secs(1), "cancelled in {took:?}");
    assert_eq!(result(&stack, &call(&stack, "c", "incr", json!([])).await).await, 1);
    let (_, events) = stack.get(&format!("/v1/dispatches/{id}/events")).await;
    assert!(!events.to_string().contains("left to finish"), "it stopped, nothing was abandoned: {events}");

    // Blocked in C: recorded cancelled after the grace, its thread left to finish.
    let id = call(&stack, "c", "blocked_in_c", json!([3])).await;
    stack
        .wait_until(Duration::from_secs(30), "the blocked call to run", || async {
            stack.get(&format!("/v1/dispatches/{id}")).await.1["state"] == "running"
        })
        .await
        .unwrap();
    let asked = Instant::now();
    stack.post(&format!("/v1/dispatches/{id}/cancel"), &json!({})).await;
    let done = stack.wait(&id, 30).await;
    let took = asked.elapsed();
    assert_eq!(done["state"], "cancelled", "{done}");
    assert!(took < Duration::from_secs(2), "recorded cancelled in {took:?}");
    let (_, events) = stack.get(&format!("/v1/dispatches/{id}/events")).await;
    assert!(events.to_string().contains("left to finish"), "{events}");
    let (_, instance) = stack.get("/v1/instances/c").await;
    assert!(instance["events"].as_array().unwrap().iter().any(|e| e["kind"] == "call_abandoned"), "{instance}");
    assert_eq!(instance["state"], "ready");
    assert_eq!(result(&stack, &call(&stack, "c", "incr", json!([])).await).await, 2);
    println!(
        "[instances] cancel of a method blocked in C: recorded cancelled after {:.0} ms",
        took.as_secs_f64() * 1e3
    );
}

#[tokio::test]
async fn a_killed_node_loses_its_instance_and_restart_on_lost_constructs_it_again() {
    let stack = Stack::start().await.unwrap();
    let mut node = stack.start_node("n1", "local", 2).await.unwrap();
    let bundle = stack.fixture_bundle().await;
    for (name, restart) in [("keep", "never"), ("phoenix", "on_lost")] {
        instance(
            &stack,
            json!({"name": name, "class": "pkg.objects:Counter", "bundle": bundle, "cluster": "local", "restart": restart}),
        )
        .await;
        wait_instance(&stack, name, "ready").await;
    }
    assert_eq!(result(&stack, &call(&stack, "phoenix", "incr", json!([5])).await).await, 5);
    let in_flight = call(&stack, "keep", "nap", json!([600])).await;
    stack
        .wait_until(Duration::from_secs(30), "the nap to run", || async {
            stack.get(&format!("/v1/dispatches/{in_flight}")).await.1["state"] == "running"
        })
        .await
        .unwrap();
    node.kill_9();
    let lost = wait_instance(&stack, "keep", "lost").await;
    assert!(lost["state_reason"].as_str().unwrap().contains("n1"), "{lost}");
    let failed = stack.wait(&in_flight, 60).await;
    assert_eq!(failed["state"], "failed", "{failed}");
    assert_eq!(failed["failure"]["code"], "node_lost", "{failed}");
    let (status, refused) = stack.post("/v1/dispatches", &json!({"instance": "keep", "method": "incr"})).await;
    assert_eq!(status, 409, "{refused}");
    assert_eq!(refused["code"], "instance_lost", "{refused}");

    // restart: on_lost: the next call constructs it again (on the new node), state from scratch.
    wait_instance(&stack, "phoenix", "lost").await;
    let _node = stack.start_node("n2", "local", 2).await.unwrap();
    let id = call(&stack, "phoenix", "incr", json!([1])).await;
    assert_eq!(result(&stack, &id).await, 1);
    let (_, phoenix) = stack.get("/v1/instances/phoenix").await;
    assert_eq!(phoenix["restarts"], 1, "{phoenix}");
    assert_eq!(phoenix["state"], "ready", "{phoenix}");
    let kinds: Vec<&str> = phoenix["events"].as_array().unwrap().iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["created", "ready", "lost", "restarted", "ready"], "{phoenix}");
}

#[tokio::test]
async fn an_idle_instance_stops_itself_and_then_its_cluster_autostops() {
    let stack = Stack::start_with(&[("RH_GATEWAY_COMPUTE__RECONCILE_INTERVAL_S", "1")]).await.unwrap();
    let bundle = stack.fixture_bundle().await;
    let (status, cluster) = stack
        .post("/v1/clusters", &json!({"name": "cpu", "spec": {"provider": "local", "autostop_idle_minutes": 0.05}}))
        .await;
    assert_eq!(status, 201, "{cluster}");
    instance(
        &stack,
        json!({"name": "idle", "class": "pkg.objects:Counter", "bundle": bundle, "cluster": "cpu",
               "idle_stop_minutes": 0.1, "restart": "on_lost"}),
    )
    .await;
    wait_instance(&stack, "idle", "ready").await;
    let made = Instant::now();
    assert_eq!(result(&stack, &call(&stack, "idle", "incr", json!([])).await).await, 1);
    // The cluster's own limit (3 s) passes first, but a live instance keeps it up
    // until the instance's limit (6 s) stops the instance; then the cluster stops.
    let stopped = wait_instance(&stack, "idle", "lost").await;
    assert!(made.elapsed() >= Duration::from_secs(5), "stopped after {:?}", made.elapsed());
    assert!(stopped["state_reason"].as_str().unwrap().contains("idle"), "{stopped}");
    let idle_stopped = stopped["events"].as_array().unwrap().iter().find(|e| e["kind"] == "idle_stopped").cloned();
    let idle_stopped: chrono::DateTime<chrono::Utc> =
        idle_stopped.expect("an idle_stopped event")["at"].as_str().unwrap().parse().unwrap();
    let ended = stack.wait_cluster("cpu", "terminated", Duration::from_secs(30)).await.unwrap();
    assert!(ended["state_reason"].as_str().unwrap().contains("autostop"), "{ended}");
    let terminated: chrono::DateTime<chrono::Utc> = ended["terminated_at"].as_str().unwrap().parse().unwrap();
    assert!(terminated > idle_stopped, "the cluster outlived its own idle limit while the instance lived: {ended}");
}

//! End to end: real gateway and node processes, real Postgres, real Python.

use std::time::{Duration, Instant};

use e2e::{pack, process_alive, Stack};
use serde_json::json;

async fn stack_with_node(max_concurrent: u32) -> (Stack, e2e::Process, String) {
    let stack = Stack::start().await.expect("start the gateway");
    let node = stack.start_node("n1", "local", max_concurrent).await.expect("start a node");
    let bundle = stack.fixture_bundle().await;
    (stack, node, bundle)
}

#[tokio::test]
async fn a_function_runs_on_the_node_and_returns_its_json_result() {
    let (stack, _node, bundle) = stack_with_node(4).await;
    let id = stack.dispatch(&bundle, "pkg.jobs:hello", json!(["ada"]), json!({})).await;
    let done = stack.wait(&id, 30).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(done["result"]["greeting"], "hi ada");
    assert_eq!(done["bundle"], bundle.as_str(), "the run records the bundle it ran from");
    assert_eq!(done["function"], "pkg.jobs:hello");
    let (stdout, stderr) = stack.logs(&id).await;
    assert_eq!(stdout, "hello ada\n");
    assert_eq!(stderr, "a warning\n");
}

#[tokio::test]
async fn a_create_with_wait_s_answers_with_the_calls_result_in_one_request() {
    let (stack, _node, bundle) = stack_with_node(4).await;
    let body = json!({"function": "pkg.jobs:hello", "args": ["ada"], "cluster": "local", "bundle": bundle});
    let (status, done) = stack.post("/v1/dispatches?wait_s=30", &body).await;
    assert_eq!(status, 201, "{done}");
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(done["result"]["greeting"], "hi ada");
    // A call that outlasts the wait is answered as it stands, still running.
    let sleepy = json!({"function": "pkg.jobs:sleepy", "args": [600], "cluster": "local", "bundle": bundle});
    let (status, running) = stack.post("/v1/dispatches?wait_s=1", &sleepy).await;
    assert_eq!(status, 201, "{running}");
    assert!(["queued", "running"].contains(&running["state"].as_str().unwrap()), "{running}");
    let id = running["id"].as_str().unwrap();
    let (status, _) = stack.post(&format!("/v1/dispatches/{id}/cancel"), &json!({})).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn repeated_calls_reuse_a_warm_worker() {
    let (stack, _node, bundle) = stack_with_node(4).await;
    let mut pids = Vec::new();
    for _ in 0..3 {
        let id = stack.dispatch(&bundle, "pkg.jobs:hello", json!(["x"]), json!({})).await;
        pids.push(stack.wait(&id, 30).await["result"]["pid"].clone());
    }
    assert!(pids.windows(2).all(|w| w[0] == w[1]), "each call spawned a new Python: {pids:?}");
}

#[tokio::test]
async fn a_user_exception_fails_the_dispatch_with_its_type_and_traceback() {
    let (stack, _node, bundle) = stack_with_node(4).await;
    let id = stack.dispatch(&bundle, "pkg.jobs:boom", json!([]), json!({})).await;
    let done = stack.wait(&id, 30).await;
    assert_eq!(done["state"], "failed");
    let failure = &done["failure"];
    assert_eq!(failure["code"], "user_exception");
    assert_eq!(failure["remote_type"], "ValueError");
    assert_eq!(failure["message"], "learning rate must be positive");
    let traceback = failure["traceback"].as_str().unwrap();
    assert!(traceback.starts_with("Traceback (most recent call last):"), "{traceback}");
    assert!(traceback.contains("pkg/jobs.py") && traceback.contains("in boom"), "{traceback}");
    assert!(!traceback.contains("rh_runner"), "the runner's own frame leaked: {traceback}");
}

#[tokio::test]
async fn a_result_that_is_not_json_fails_naming_its_type() {
    let (stack, _node, bundle) = stack_with_node(4).await;
    let id = stack.dispatch(&bundle, "pkg.jobs:not_json", json!([]), json!({})).await;
    let done = stack.wait(&id, 30).await;
    assert_eq!(done["failure"]["code"], "result_not_json");
    assert!(done["failure"]["message"].as_str().unwrap().contains("set"), "{done}");
}

#[tokio::test]
async fn a_missing_entrypoint_fails_clearly() {
    let (stack, _node, bundle) = stack_with_node(4).await;
    let id = stack.dispatch(&bundle, "pkg.jobs:nope", json!([]), json!({})).await;
    let done = stack.wait(&id, 30).await;
    assert_eq!(done["failure"]["code"], "entrypoint_not_found");
    assert!(done["failure"]["message"].as_str().unwrap().contains("pkg.jobs:nope"), "{done}");
}

#[tokio::test]
async fn logs_can_be_followed_live_while_the_call_runs() {
    let (stack, _node, bundle) = stack_with_node(4).await;
    let id = stack.dispatch(&bundle, "pkg.jobs:ticker", json!([5, 0.3]), json!({})).await;
    let mut response = stack
        .client
        .get(format!("{}/v1/dispatches/{id}/logs?follow=true", stack.url))
        .bearer_auth(stack.admin_token())
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut body = String::new();
    let mut first_tick_state = None;
    while let Some(chunk) = response.chunk().await.unwrap() {
        body.push_str(&String::from_utf8_lossy(&chunk));
        if first_tick_state.is_none() && body.contains("tick 0") {
            first_tick_state = Some(stack.get(&format!("/v1/dispatches/{id}")).await.1["state"].clone());
        }
    }
    assert_eq!(first_tick_state, Some(json!("running")), "the first line arrived only after the call ended");
    for i in 0..5 {
        assert!(body.contains(&format!("tick {i}")), "{body}");
    }
    // The stream closes after `end`, whose data is the dispatch as it ended.
    let end = body.split("event: end\n").nth(1).expect("the stream ends with `event: end`");
    let data = end.lines().find_map(|line| line.strip_prefix("data: ")).expect("`end` carries data");
    let ended: serde_json::Value = serde_json::from_str(data).unwrap();
    assert_eq!(ended["id"], json!(id));
    assert_eq!(ended["state"], "succeeded");
}

#[tokio::test]
async fn cancelling_a_running_sleep_kills_its_worker_within_a_second() {
    let (stack, _node, bundle) = stack_with_node(4).await;
    let id = stack.dispatch(&bundle, "pkg.jobs:sleepy", json!([600]), json!({})).await;
    let pid = wait_for_pid(&stack, &id).await;
    assert!(process_alive(pid));
    let started = Instant::now();
    let (status, dispatch) =
        stack.post(&format!("/v1/dispatches/{id}/cancel"), &json!({"reason": "no longer needed"})).await;
    assert!(status.is_success());
    assert_eq!(dispatch["state"], "cancelling");
    while process_alive(pid) {
        assert!(started.elapsed() < Duration::from_secs(1), "the worker outlived the cancel by a second");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let done = stack.wait(&id, 30).await;
    assert_eq!(done["state"], "cancelled");
    assert_eq!(done["cancellation"]["by"], "e2e");
    assert_eq!(done["cancellation"]["reason"], "no longer needed");
}

#[tokio::test]
async fn a_call_past_its_timeout_is_stopped_as_timed_out() {
    let (stack, _node, bundle) = stack_with_node(4).await;
    let id = stack.dispatch(&bundle, "pkg.jobs:sleepy", json!([600]), json!({"timeout_s": 1})).await;
    let pid = wait_for_pid(&stack, &id).await;
    let done = stack.wait(&id, 30).await;
    assert_eq!(done["state"], "timed_out");
    assert_eq!(done["failure"]["code"], "timed_out");
    stack
        .wait_until(Duration::from_secs(5), "the timed-out worker to be gone", || async { !process_alive(pid) })
        .await
        .unwrap();
}

#[tokio::test]
async fn a_worker_crash_fails_the_call_and_the_node_keeps_serving() {
    let (stack, _node, bundle) = stack_with_node(4).await;
    for function in ["pkg.jobs:crash", "pkg.jobs:segfault"] {
        let id = stack.dispatch(&bundle, function, json!([]), json!({})).await;
        let done = stack.wait(&id, 30).await;
        assert_eq!(done["state"], "failed", "{function}: {done}");
        assert_eq!(done["failure"]["code"], "worker_crashed", "{function}: {done}");
    }
    let id = stack.dispatch(&bundle, "pkg.jobs:hello", json!(["still here"]), json!({})).await;
    assert_eq!(stack.wait(&id, 30).await["state"], "succeeded");
}

#[tokio::test]
async fn fifty_concurrent_calls_on_one_node_keep_their_logs_apart() {
    let (stack, _node, bundle) = stack_with_node(50).await;
    let mut ids = Vec::new();
    for i in 0..50 {
        ids.push((i, stack.dispatch(&bundle, "pkg.jobs:tagged", json!([format!("call-{i:02}"), 5]), json!({})).await));
    }
    for (i, id) in &ids {
        let done = stack.wait(id, 120).await;
        assert_eq!(done["state"], "succeeded", "{done}");
        let (stdout, stderr) = stack.logs(id).await;
        let tag = format!("call-{i:02}");
        let expected_out: String = (0..5).map(|n| format!("{tag} line {n}\n")).collect();
        let expected_err: String = (0..5).map(|n| format!("{tag} err {n}\n")).collect();
        assert_eq!(stdout, expected_out);
        assert_eq!(stderr, expected_err);
    }
}

#[tokio::test]
async fn a_dispatch_waits_in_the_queue_until_a_slot_frees() {
    let (stack, _node, bundle) = stack_with_node(1).await;
    let first = stack.dispatch(&bundle, "pkg.jobs:sleepy", json!([1]), json!({})).await;
    let second = stack.dispatch(&bundle, "pkg.jobs:hello", json!(["next"]), json!({})).await;
    wait_for_pid(&stack, &first).await;
    assert_eq!(stack.get(&format!("/v1/dispatches/{second}")).await.1["state"], "queued");
    assert_eq!(stack.wait(&second, 30).await["state"], "succeeded");
    assert_eq!(stack.wait(&first, 30).await["state"], "succeeded");
}

#[tokio::test]
async fn killing_the_node_fails_its_call_with_node_lost_within_30_seconds() {
    let (stack, mut node, bundle) = stack_with_node(4).await;
    let id = stack.dispatch(&bundle, "pkg.jobs:sleepy", json!([600]), json!({})).await;
    let pid = wait_for_pid(&stack, &id).await;
    let killed = Instant::now();
    node.kill_9();
    let done = stack.wait(&id, 30).await;
    assert_eq!(done["state"], "failed", "{done}");
    assert_eq!(done["failure"]["code"], "node_lost");
    assert!(killed.elapsed() <= Duration::from_secs(30), "took {:?}", killed.elapsed());
    assert!(!process_alive(pid), "the worker outlived its node");
}

#[tokio::test]
async fn killing_the_gateway_mid_call_still_records_the_result_exactly_once() {
    let (mut stack, _node, bundle) = stack_with_node(4).await;
    let marker = stack.work.join("finished");
    let id =
        stack.dispatch(&bundle, "pkg.jobs:sleepy_then_mark", json!([1, marker.display().to_string()]), json!({})).await;
    wait_for_pid(&stack, &id).await;
    stack.gateway.as_mut().unwrap().kill_9();
    // The call finishes while the gateway is down; the node keeps retrying its report.
    stack.wait_until(Duration::from_secs(30), "the call to finish", || async { marker.exists() }).await.unwrap();
    stack.start_gateway().await.unwrap();
    let done = stack.wait(&id, 30).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(done["result"], 1);
    let (_, events) = stack.get(&format!("/v1/dispatches/{id}/events")).await;
    let succeeded = events["items"].as_array().unwrap().iter().filter(|e| e["to_state"] == "succeeded").count();
    assert_eq!(succeeded, 1, "{events}");
}

#[tokio::test]
async fn an_unchanged_bundle_is_stored_once() {
    let stack = Stack::start().await.unwrap();
    let data = pack(&e2e::workspace_root().join("tests/fixtures/project"));
    let (first, a) = stack.upload(data.clone()).await;
    let (second, b) = stack.upload(data).await;
    assert_eq!(first, reqwest::StatusCode::CREATED);
    assert_eq!(second, reqwest::StatusCode::OK);
    assert_eq!(a["sha256"], b["sha256"]);
    let pool = sqlx::PgPool::connect(&stack.database_url).await.unwrap();
    let count: i64 = sqlx::query_scalar("select count(*) from bundle").fetch_one(&pool).await.unwrap();
    assert_eq!(count, 1);
}

#[tokio::test]
async fn a_hostile_or_broken_bundle_is_refused_and_nothing_is_stored() {
    let stack = Stack::start_with(&[("RH_GATEWAY_BUNDLES__MAX_BYTES", "100000")]).await.unwrap();
    let traversal = {
        let mut header = tar::Header::new_gnu();
        header.set_size(4);
        header.set_mode(0o644);
        header.set_entry_type(tar::EntryType::Regular);
        header.as_old_mut().name[..13].copy_from_slice(b"../../evil.py");
        header.set_cksum();
        let mut builder = tar::Builder::new(Vec::new());
        builder.append(&header, &b"evil"[..]).unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &builder.into_inner().unwrap()).unwrap();
        gz.finish().unwrap()
    };
    let random: Vec<u8> = (0..200_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        ("path traversal", traversal, 422, "outside"),
        ("not gzip", b"print('hi')".to_vec(), 422, "not gzip"),
        ("too large", random, 413, "max_bytes"),
    ];
    for (what, data, status, message) in cases {
        let (got, body) = stack.upload(data).await;
        assert_eq!(got.as_u16(), status, "{what}: {body}");
        assert!(body["message"].as_str().unwrap().contains(message), "{what}: {body}");
    }
    let pool = sqlx::PgPool::connect(&stack.database_url).await.unwrap();
    let count: i64 = sqlx::query_scalar("select count(*) from bundle").fetch_one(&pool).await.unwrap();
    assert_eq!(count, 0);
}

#[tokio::test]
async fn a_named_function_runs_by_name_with_its_bundle_and_cluster() {
    let (stack, _node, bundle) = stack_with_node(4).await;
    let (status, _) = stack
        .post(
            "/v1/functions",
            &json!({"name": "greet", "function": "pkg.jobs:hello", "bundle": bundle, "cluster": "local"}),
        )
        .await;
    assert!(status.is_success());
    let (status, dispatch) =
        stack.post("/v1/dispatches", &json!({"function_name": "greet", "args": ["by name"]})).await;
    assert!(status.is_success(), "{dispatch}");
    let done = stack.wait(dispatch["id"].as_str().unwrap(), 30).await;
    assert_eq!(done["result"]["greeting"], "hi by name");
    assert_eq!(done["function_name"], "greet");
}

/// Waits until the call has printed its worker's pid (`pkg.jobs:sleepy` does first).
async fn wait_for_pid(stack: &Stack, id: &str) -> u32 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (stdout, _) = stack.logs(id).await;
        if let Some(pid) = stdout.lines().find_map(|l| l.strip_prefix("pid ")).and_then(|p| p.trim().parse().ok()) {
            return pid;
        }
        assert!(
            Instant::now() < deadline,
            "the call never started: {:?}",
            stack.get(&format!("/v1/dispatches/{id}")).await
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn requirements_are_installed_once_into_a_cached_environment() {
    let (stack, _node, _bundle) = stack_with_node(4).await;
    // A tiny wheel built here, so pip installs it without any package index.
    let wheel = stack.work.join("tinypkg_rh-0.1-py3-none-any.whl");
    let script = r#"
import sys, zipfile, hashlib, base64
path = sys.argv[1]
files = {
    "tinypkg_rh.py": "def answer():\n    return 42\n",
    "tinypkg_rh-0.1.dist-info/METADATA": "Metadata-Version: 2.1\nName: tinypkg-rh\nVersion: 0.1\n",
    "tinypkg_rh-0.1.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: e2e\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
}
record = []
with zipfile.ZipFile(path, "w") as z:
    for name, text in files.items():
        z.writestr(name, text)
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{name},sha256={digest},{len(text)}")
    record.append("tinypkg_rh-0.1.dist-info/RECORD,,")
    z.writestr("tinypkg_rh-0.1.dist-info/RECORD", "\n".join(record) + "\n")
"#;
    let status = std::process::Command::new("python3").args(["-c", script]).arg(&wheel).status().unwrap();
    assert!(status.success());
    let requirement = wheel.display().to_string();
    for _ in 0..2 {
        let (status, dispatch) = stack
            .post(
                "/v1/dispatches",
                &json!({"function": "tinypkg_rh:answer", "cluster": "local", "requirements": [requirement]}),
            )
            .await;
        assert!(status.is_success(), "{dispatch}");
        let done = stack.wait(dispatch["id"].as_str().unwrap(), 120).await;
        assert_eq!(done["result"], 42, "{done}");
    }
    let envs: Vec<_> = std::fs::read_dir(stack.work.join("node-n1/envs")).unwrap().flatten().collect();
    assert_eq!(envs.len(), 1, "one environment per requirement set");

    // The run record: the requirement as asked and as resolved in the node's environment.
    let (_, listed) = stack.get("/v1/dispatches?limit=1").await;
    let id = listed["items"][0]["id"].as_str().unwrap().to_owned();
    let path = format!("/v1/dispatches/{id}/record");
    stack
        .wait_until(Duration::from_secs(30), "the run record", || async { stack.get(&path).await.0.is_success() })
        .await
        .unwrap();
    let (_, record) = stack.get(&path).await;
    assert_eq!(record["requirements"], json!([requirement]), "{record}");
    assert_eq!(record["packages"], json!([{"name": "tinypkg-rh", "version": "0.1"}]), "{record}");
    assert!(record["python"].as_str().unwrap().starts_with("3.11"), "{record}");
    assert!(record["platform"].as_str().unwrap().starts_with("linux "), "{record}");
    let names: Vec<&str> = record["env_names"].as_array().unwrap().iter().map(|n| n.as_str().unwrap()).collect();
    assert!(names.contains(&"PYTHONUNBUFFERED") && names.contains(&"HOME"), "{names:?}");
    assert!(names.iter().all(|n| !n.starts_with("RH_") && *n != "DATABASE_URL"), "no credentials: {names:?}");
    assert_eq!(record["place"]["node"], "n1", "{record}");
    assert_eq!(record["function"], "tinypkg_rh:answer");
    assert_eq!(record["state"], "succeeded");
    assert_eq!(record["args_hash"].as_str().unwrap().len(), 64);

    // `rh reproduce` installs exactly the resolved packages into a virtualenv cached by that set;
    // when they cannot be installed here it names them and offers --no-install.
    let reproduce = |envs: &[(&str, &std::path::Path)]| {
        let mut command = std::process::Command::new(e2e::bin_dir().join("rh"));
        command
            .args(["reproduce", &id, "--json"])
            .env("RH_GATEWAY_URL", &stack.url)
            .env("RH_TOKEN", stack.admin_token())
            .env("RH_REPRODUCE_CACHE", stack.work.join("reproduce-cache"))
            .env("PIP_NO_INDEX", "1");
        for (name, value) in envs {
            command.env(name, value);
        }
        command.output().unwrap()
    };
    let refused = reproduce(&[("PIP_FIND_LINKS", &stack.work.join("no-wheels-here"))]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("tinypkg-rh==0.1") && stderr.contains("--no-install"), "{stderr}");
    let installed = reproduce(&[("PIP_FIND_LINKS", &stack.work)]);
    let stdout = String::from_utf8_lossy(&installed.stdout);
    assert!(installed.status.success(), "{stdout}{}", String::from_utf8_lossy(&installed.stderr));
    assert_eq!(stdout.trim(), r#"{"ok":true,"result":42}"#);
    let cached: Vec<_> = std::fs::read_dir(stack.work.join("reproduce-cache")).unwrap().flatten().collect();
    assert_eq!(cached.len(), 1, "one environment per package set");
}

#[tokio::test]
async fn a_cached_call_answers_identical_ones_without_running_them_and_a_failure_is_never_cached() {
    let (stack, _node, bundle) = stack_with_node(4).await;
    let marker = stack.work.join("counted-runs");
    let runs = || std::fs::read_to_string(&marker).map(|t| t.lines().count()).unwrap_or(0);
    let create = |kwargs: serde_json::Value, cache: serde_json::Value| {
        let mut body = json!({"function": "pkg.jobs:count_run", "args": [marker.display().to_string()],
                              "kwargs": kwargs, "cluster": "local", "bundle": bundle.clone()});
        body.as_object_mut().unwrap().extend(cache.as_object().unwrap().clone());
        let stack = &stack;
        async move {
            let (status, created) = stack.post("/v1/dispatches", &body).await;
            assert_eq!(status, 201, "{created}");
            created
        }
    };
    let first = create(json!({"a": 1, "b": 2}), json!({"cache": true})).await;
    let done = stack.wait(first["id"].as_str().unwrap(), 60).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    // The same call, keyword arguments in another order: answered at once, the node not asked.
    let started = Instant::now();
    let hit = create(json!({"b": 2, "a": 1}), json!({"cache": true})).await;
    let hit_latency = started.elapsed();
    assert_eq!(hit["state"], "succeeded", "{hit}");
    assert_eq!(hit["cached_from"], first["id"], "{hit}");
    assert_eq!(hit["result"], done["result"]);
    assert_eq!(runs(), 1, "the node ran the call once");
    let (_, events) = stack.get(&format!("/v1/dispatches/{}/events", hit["id"].as_str().unwrap())).await;
    assert!(events.to_string().contains("result cached from dispatch"), "{events}");
    // Other arguments, no cache asked, or a result older than the ttl: it runs.
    let other = create(json!({"a": 1, "b": 3}), json!({"cache": true})).await;
    assert_eq!(stack.wait(other["id"].as_str().unwrap(), 60).await["state"], "succeeded");
    let uncached = create(json!({"a": 1, "b": 2}), json!({})).await;
    assert_eq!(stack.wait(uncached["id"].as_str().unwrap(), 60).await["state"], "succeeded");
    assert!(uncached["cached_from"].is_null());
    assert_eq!(runs(), 3);

    // Ten identical requests at once: one runs, nine take its result.
    let concurrent =
        futures::future::join_all((0..10).map(|_| create(json!({"seconds": 1.0}), json!({"cache_key": "slow"})))).await;
    let mut results = Vec::new();
    for created in &concurrent {
        let done = stack.wait(created["id"].as_str().unwrap(), 60).await;
        assert_eq!(done["state"], "succeeded", "{done}");
        results.push(done);
    }
    assert_eq!(runs(), 4, "ten identical requests ran once");
    let leaders: Vec<_> = results.iter().filter(|d| d["cached_from"].is_null()).collect();
    assert_eq!(leaders.len(), 1, "{results:?}");
    assert!(results.iter().all(|d| d["result"] == leaders[0]["result"]));

    // A failure is never cached: both run.
    for _ in 0..2 {
        let (status, failed) = stack
            .post(
                "/v1/dispatches",
                &json!({"function": "pkg.jobs:boom", "cluster": "local", "bundle": bundle.clone(), "cache": true}),
            )
            .await;
        assert_eq!(status, 201, "{failed}");
        assert!(failed["cached_from"].is_null(), "{failed}");
        assert_eq!(stack.wait(failed["id"].as_str().unwrap(), 60).await["state"], "failed");
    }
    // Bad cache fields name themselves.
    for (body, field) in [
        (json!({"function": "pkg.jobs:noop", "cluster": "local", "cache_key": ""}), "cache_key"),
        (json!({"function": "pkg.jobs:noop", "cluster": "local", "cache": true, "cache_ttl_s": 0}), "cache_ttl_s"),
    ] {
        let (status, error) = stack.post("/v1/dispatches", &body).await;
        assert_eq!(status, 422, "{error}");
        assert_eq!(error["field"], field, "{error}");
    }
    println!("[cache] a hit answered in {:.1} ms (debug build, create to response)", hit_latency.as_secs_f64() * 1e3);
}

#[tokio::test]
async fn a_call_many_times_a_links_read_buffer_crosses_the_link_both_ways() {
    let (stack, _node, _bundle) = stack_with_node(4).await;
    stack
        .wait_until(Duration::from_secs(30), "the node's link to open", || async {
            stack.metric("rh_node_links").await >= 1.0
        })
        .await
        .unwrap();
    let sent = r#"rh_node_link_messages_total{direction="to_nodes"}"#;
    let before = stack.metric(sent).await;
    // 600 KiB of argument in, as much result out: 75 times the link's read buffer.
    let big = "x".repeat(600 * 1024);
    let (status, dispatch) =
        stack.post("/v1/dispatches", &json!({"function": "json:dumps", "args": [big], "cluster": "local"})).await;
    assert!(status.is_success(), "{dispatch}");
    let done = stack.wait(dispatch["id"].as_str().unwrap(), 30).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(done["result"].as_str().unwrap(), format!("\"{big}\""));
    assert!(stack.metric(sent).await > before, "the call did not go over the link");
}

//! Hostile callers: node credentials bound to their node, projects kept
//! apart on every write, text the database cannot store, outcomes that must
//! still land, nodes that refuse every call, clients that vanish mid-request,
//! and an unauthenticated surface that cannot grow.

use std::time::{Duration, Instant};

use gateway::auth::Scope;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;

use crate::helpers::{fresh_database, spawn_app, spawn_app_with, test_settings, TestApp};

/// Polls `check` every 20 ms until it returns `Some`, or panics after `timeout`.
async fn eventually<T, F, Fut>(timeout: Duration, what: &str, check: F) -> T
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn registration(name: &str, address: &str) -> Value {
    json!({
        "name": name, "cluster": "local", "address": address,
        "api_secret": "s".repeat(40), "max_concurrent": 4,
        "resources": {"cpus": 2, "memory_bytes": 1024}
    })
}

async fn upload(app: &TestApp, token: &str) -> String {
    let mut builder = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(4);
    header.set_mode(0o644);
    header.set_cksum();
    builder.append_data(&mut header, "pkg.py", &b"x=1\n"[..]).unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &builder.into_inner().unwrap()).unwrap();
    let response = app
        .client
        .post(format!("{}/v1/bundles", app.address))
        .bearer_auth(token)
        .header("content-type", "application/gzip")
        .body(gz.finish().unwrap())
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success());
    response.json::<Value>().await.unwrap()["sha256"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn a_node_credential_acts_only_as_the_node_it_was_issued_to() {
    let app = spawn_app().await;
    let (node1_id, node1) = app.fake_node("node-1", 4).await;
    let (_, node2) = app.fake_node("node-2", 4).await;
    let bundle = upload(&app, &app.user_token()).await;
    // Placed on node-1 (every node's first slot fills before any second; node-1 registered first).
    let dispatch = app.create(&app.user_token(), json!({"bundle": bundle})).await;
    let id = dispatch["id"].as_str().unwrap().to_owned();
    let on_node1 = dispatch["node_id"] == node1_id;
    let (mine, other) = if on_node1 { (&node1, &node2) } else { (&node2, &node1) };

    // Another node of the same project cannot act for it.
    let (status, error) = app.post("/v1/nodes", &node2, &registration("node-1", "http://127.0.0.1:9")).await;
    assert_eq!((status, error["field"].clone()), (StatusCode::UNPROCESSABLE_ENTITY, json!("name")), "{error}");
    let forged = json!({"kind": "succeeded", "result": "FORGED"});
    let (status, _) = app.post(&format!("/v1/dispatches/{id}/reports"), other, &forged).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "a report for another node's dispatch");
    let batch = json!({"entries": [{"seq": 1, "stream": "stdout", "text": "forged\n"}]});
    let (status, _) = app.post(&format!("/v1/dispatches/{id}/logs"), other, &batch).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "log lines for another node's dispatch");
    let (status, _) = app.get(&format!("/v1/bundles/{bundle}"), other).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "the code of another node's dispatch");
    let (status, _) = app.post(&format!("/v1/nodes/{node1_id}/heartbeat"), &node2, &json!({"running": []})).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "a heartbeat for another node");

    // Admin tokens, of this project or another, carry no node rights.
    let other_admin = app.token("x", &[Scope::Admin]);
    for token in [app.admin_token(), other_admin.clone()] {
        let (status, _) = app.post("/v1/nodes", &token, &registration("node-1", "http://127.0.0.1:9")).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
    }
    let (status, _) = app.post(&format!("/v1/dispatches/{id}/reports"), &other_admin, &forged).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "another project's admin cannot report");

    // Project x registering its own `local/node-1` takes nothing from `default`.
    let x_node = app.keys.mint_node(
        "x",
        &"local/node-1".parse().unwrap(),
        Duration::from_secs(60),
        &uuid::Uuid::new_v4().to_string(),
    );
    let (status, _) = app.post("/v1/nodes", &x_node.unwrap().0, &registration("node-1", "http://127.0.0.1:9")).await;
    assert_eq!(status, StatusCode::OK);
    let (_, nodes) = app.get("/v1/nodes", &app.admin_token()).await;
    assert!(nodes["items"].as_array().unwrap().iter().all(|n| n["address"] != "http://127.0.0.1:9"), "{nodes}");

    // The node the dispatch is on can report; the result is the real one.
    let (_, still) = app.get(&format!("/v1/dispatches/{id}"), &app.user_token()).await;
    assert_eq!(still["state"], "running", "nothing forged landed: {still}");
    let (status, bytes) = app.get(&format!("/v1/bundles/{bundle}"), mine).await;
    assert_eq!(status, StatusCode::OK, "{bytes}");
    let real = json!({"kind": "succeeded", "result": "real"});
    let (status, done) = app.post(&format!("/v1/dispatches/{id}/reports"), mine, &real).await;
    assert_eq!((status, done["result"].clone()), (StatusCode::OK, json!("real")));
    let (status, _) = app.get(&format!("/v1/bundles/{bundle}"), mine).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "once the dispatch ended, its node has no use for the code");
}

#[tokio::test]
async fn a_project_cannot_write_to_read_or_use_another_projects_clusters_unless_shared() {
    let app = spawn_app().await;
    let a = app.token("a", &[Scope::Admin]);
    let b = app.token("b", &[Scope::Admin]);
    let spec = json!({"provider": "static", "count": 1});
    for (name, shared) in [("private", json!([])), ("shared", json!(["b"]))] {
        let (status, body) =
            app.post("/v1/clusters", &a, &json!({"name": name, "spec": spec, "shared_with": shared})).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    // B sees none of A's clusters, cannot delete them or mint join tokens for them.
    let (_, list) = app.get("/v1/clusters", &b).await;
    assert_eq!(list["items"], json!([]));
    for name in ["private", "shared"] {
        let (status, _) = app.get(&format!("/v1/clusters/{name}"), &b).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        let (status, _) = app.call(Method::DELETE, &format!("/v1/clusters/{name}"), Some(&b), None).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "B deleting A's `{name}`");
        let (status, _) = app.post(&format!("/v1/clusters/{name}/join-tokens"), &b, &json!({})).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }
    let (_, mine) = app.get("/v1/clusters/private", &a).await;
    assert_eq!(mine["state"], "provisioning", "A's cluster is untouched: {mine}");
    // B may dispatch to the shared one (by its owner's name for it), not to the other.
    let dispatch = json!({"function": "m:f", "cluster": "a/shared"});
    let (status, created) = app.post("/v1/dispatches", &b, &dispatch).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["cluster"], "a/shared");
    let (status, error) = app.post("/v1/dispatches", &b, &json!({"function": "m:f", "cluster": "a/private"})).await;
    assert_eq!((status, error["field"].clone()), (StatusCode::UNPROCESSABLE_ENTITY, json!("cluster")), "{error}");
    // Log lines need a node credential: B's admin cannot append to A's dispatch.
    let (status, a_dispatch) = app.post("/v1/dispatches", &a, &json!({"function": "m:f", "cluster": "private"})).await;
    assert_eq!(status, StatusCode::CREATED);
    let batch = json!({"entries": [{"seq": 1, "stream": "stdout", "text": "x"}]});
    let (status, _) =
        app.post(&format!("/v1/dispatches/{}/logs", a_dispatch["id"].as_str().unwrap()), &b, &batch).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn node_addresses_are_shown_only_to_admins_of_their_project() {
    let app = spawn_app().await;
    app.fake_node("node-1", 2).await;
    let (_, nodes) = app.get("/v1/nodes", &app.admin_token()).await;
    assert!(nodes["items"][0]["address"].is_string());
    let (status, _) = app.get("/v1/nodes", &app.user_token()).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (_, other) = app.get("/v1/nodes", &app.token("x", &[Scope::Admin])).await;
    assert_eq!(other["items"], json!([]));
}

#[tokio::test]
async fn a_nul_anywhere_in_a_request_is_a_422_naming_where_and_nothing_is_stored() {
    let app = spawn_app().await;
    let token = app.user_token();
    for (body, field) in [
        (json!({"function": "m:f", "cluster": "c", "args": ["a\u{0}b"]}), "args[0]"),
        (json!({"function": "m:f", "cluster": "c", "kwargs": {"k": {"deep": ["\u{0}"]}}}), "kwargs.k.deep[0]"),
        (json!({"function": "m:f", "cluster": "c", "labels": {"k": "v\u{0}"}}), "labels.k"),
        (json!({"function": "m:f", "cluster": "c", "idempotency_key": "\u{0}"}), "idempotency_key"),
    ] {
        let (status, error) = app.post("/v1/dispatches", &token, &body).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}: {error}");
        assert_eq!(error["field"], field, "{error}");
        assert!(error["message"].as_str().unwrap().contains("NUL"), "{error}");
    }
    assert_eq!(app.count("dispatch").await, 0);
    let id = app.create(&token, json!({})).await["id"].as_str().unwrap().to_owned();
    let (status, error) = app.post(&format!("/v1/dispatches/{id}/cancel"), &token, &json!({"reason": "\u{0}"})).await;
    assert_eq!((status, error["field"].clone()), (StatusCode::UNPROCESSABLE_ENTITY, json!("reason")));
    let (status, error) = app.get("/v1/dispatches?label=a%3Db%00", &token).await;
    assert_eq!((status, error["field"].clone()), (StatusCode::UNPROCESSABLE_ENTITY, json!("label")));
    let (status, _) = app.get("/v1/clusters/a%00b", &token).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = app.get("/v1/functions/a%00b", &token).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn what_a_node_reports_is_stored_byte_for_byte_even_with_nuls() {
    let app = spawn_app().await;
    let (id, node) = app.placed_dispatch().await;
    let report = json!({
        "kind": "succeeded", "result": {"text": "x\u{0}y", "back\\slash": "\\0"},
        "reason": "done\u{0}",
        "logs": [{"seq": 1, "stream": "stdout", "text": "a\u{0}b\\0c\n"}]
    });
    let (status, done) = app.post(&format!("/v1/dispatches/{id}/reports"), &node, &report).await;
    assert_eq!(status, StatusCode::OK, "{done}");
    assert_eq!(done["result"], report["result"]);
    let (_, logs) = app.get(&format!("/v1/dispatches/{id}/logs"), &app.user_token()).await;
    assert_eq!(logs["entries"][0]["text"], "a\u{0}b\\0c\n");

    let (id, node) = app.placed_dispatch().await;
    let failure = json!({"kind": "failed", "failure": {
        "code": "user_exception", "message": "bad\u{0}value", "remote_type": "ValueError", "traceback": "T\u{0}"
    }});
    let (status, failed) = app.post(&format!("/v1/dispatches/{id}/reports"), &node, &failure).await;
    assert_eq!(status, StatusCode::OK, "{failed}");
    assert_eq!(failed["failure"]["message"], "bad\u{0}value");
}

#[tokio::test]
async fn a_result_over_the_limit_fails_the_dispatch_once_naming_the_limit() {
    let mut settings = test_settings(&fresh_database().await);
    settings.results.max_bytes = 1000;
    let app = spawn_app_with(settings).await;
    let (id, node) = app.placed_dispatch().await;
    let report = json!({"kind": "succeeded", "result": "x".repeat(1_500_000)});
    let (status, done) = app.post(&format!("/v1/dispatches/{id}/reports"), &node, &report).await;
    assert_eq!(status, StatusCode::OK, "{done}");
    assert_eq!(done["state"], "failed");
    assert_eq!(done["failure"]["code"], "result_too_large");
    assert!(done["failure"]["message"].as_str().unwrap().contains("1000"), "{done}");
    // A re-sent report changes nothing: the call is over, and was never requeued.
    let (status, again) = app.post(&format!("/v1/dispatches/{id}/reports"), &node, &report).await;
    assert_eq!((status, again["state"].clone()), (StatusCode::OK, json!("failed")));
    let (_, events) = app.get(&format!("/v1/dispatches/{id}/events"), &app.user_token()).await;
    let states: Vec<_> = events["items"].as_array().unwrap().iter().map(|e| e["to_state"].clone()).collect();
    assert_eq!(states, [json!("queued"), json!("running"), json!("failed")]);
}

#[tokio::test]
async fn a_node_that_refuses_every_connection_is_backed_off_and_its_dispatch_fails_after_a_few_tries() {
    let app = spawn_app().await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let token = app.node_token_for("gone");
    let (status, _) = app.post("/v1/nodes", &token, &registration("gone", &format!("http://127.0.0.1:{closed}"))).await;
    assert_eq!(status, StatusCode::OK);
    let id = app.create(&app.user_token(), json!({})).await["id"].as_str().unwrap().to_owned();
    let done = eventually(Duration::from_secs(30), "the dispatch to give up", || async {
        let (_, d) = app.get(&format!("/v1/dispatches/{id}"), &app.user_token()).await;
        d["state"].as_str().is_some_and(|s| s != "queued" && s != "running").then_some(d)
    })
    .await;
    assert_eq!(done["state"], "failed", "{done}");
    assert_eq!(done["failure"]["code"], "placement_failed");
    let (_, events) = app.get(&format!("/v1/dispatches/{id}/events"), &app.user_token()).await;
    let count = events["items"].as_array().unwrap().len();
    assert!(count <= 2 * 5 + 2, "the event log stays bounded: {count} events");
    let (_, nodes) = app.get("/v1/nodes", &app.admin_token()).await;
    assert_eq!(nodes["items"][0]["state"], "unreachable", "{nodes}");
    // Re-registering (a fixed address, say) makes it placeable again.
    app.post("/v1/nodes", &token, &registration("gone", &format!("http://127.0.0.1:{closed}"))).await;
    let (_, nodes) = app.get("/v1/nodes", &app.admin_token()).await;
    assert_eq!(nodes["items"][0]["state"], "ready");
}

#[tokio::test]
async fn a_client_that_disconnects_right_after_its_create_commits_still_gets_the_dispatch_forwarded() {
    let app = spawn_app().await;
    // A node that records each call it is handed.
    let (calls_tx, mut calls_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = format!("http://{}", listener.local_addr().unwrap());
    let recorder = axum::Router::new().fallback(move || {
        let calls_tx = calls_tx.clone();
        async move {
            let _ = calls_tx.send(());
            StatusCode::ACCEPTED
        }
    });
    tokio::spawn(async move { axum::serve(listener, recorder).await });
    let (status, _) = app.post("/v1/nodes", &app.node_token(), &registration("node-1", &address)).await;
    assert_eq!(status, StatusCode::OK);
    // Every insert now takes 300 ms, so the client is gone before the commit.
    sqlx::raw_sql(
        "create function slow_insert() returns trigger language plpgsql as $$ \
         begin perform pg_sleep(0.3); return new; end $$; \
         create trigger slow_insert before insert on dispatch for each row execute function slow_insert();",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    let body = json!({"function": "m:f", "cluster": "local"}).to_string();
    let request = format!(
        "POST /v1/dispatches HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        app.user_token(),
        body.len()
    );
    let mut socket = tokio::net::TcpStream::connect(app.address.trim_start_matches("http://")).await.unwrap();
    socket.write_all(request.as_bytes()).await.unwrap();
    // Wait until the insert is under way, then hang up.
    eventually(Duration::from_secs(10), "the insert to start", || async {
        let busy: i64 = sqlx::query_scalar(
            "select count(*) from pg_stat_activity where query like '%insert into dispatch%' and state = 'active'",
        )
        .fetch_one(&app.pool)
        .await
        .unwrap();
        (busy > 0).then_some(())
    })
    .await;
    drop(socket);
    // The heartbeat repair would take 15 s; the forward must not wait for it.
    tokio::time::timeout(Duration::from_secs(5), calls_rx.recv())
        .await
        .expect("the node got the call although its client went away")
        .unwrap();
    assert_eq!(app.count("dispatch").await, 1);
}

#[tokio::test]
async fn no_request_can_add_a_metric_series() {
    let app = spawn_app().await;
    let series = |text: &str| text.lines().filter(|l| !l.starts_with('#')).count();
    let (_, _) = app.call(Method::GET, "/healthz", None, None).await;
    let before = app.client.get(format!("{}/metrics", app.address)).send().await.unwrap().text().await.unwrap();
    for i in 0..50 {
        let method = Method::from_bytes(format!("X{i}").as_bytes()).unwrap();
        app.call(method, &format!("/nope/{i}"), None, None).await;
        app.call(Method::GET, &format!("/v1/dispatches/{}", uuid::Uuid::now_v7()), None, None).await;
    }
    let after = app.client.get(format!("{}/metrics", app.address)).send().await.unwrap().text().await.unwrap();
    // At most the few new (method, route, status) combinations these requests can make.
    assert!(series(&after) <= series(&before) + 3 * 20, "{} → {} series", series(&before), series(&after));
    assert!(!after.contains("X1") && !after.contains("/nope/"), "{after}");
}

#[tokio::test]
async fn a_bad_cluster_name_is_blamed_on_the_field_that_carried_it() {
    let app = spawn_app().await;
    let (status, error) =
        app.post("/v1/clusters", &app.admin_token(), &json!({"name": "bad name", "spec": {"provider": "local"}})).await;
    assert_eq!((status, error["field"].clone()), (StatusCode::UNPROCESSABLE_ENTITY, json!("name")), "{error}");
    assert!(error["message"].as_str().unwrap().contains("1 to 64"), "{error}");
    let (status, error) =
        app.post("/v1/dispatches", &app.user_token(), &json!({"function": "m:f", "cluster": "bad name"})).await;
    assert_eq!((status, error["field"].clone()), (StatusCode::UNPROCESSABLE_ENTITY, json!("cluster")), "{error}");
}

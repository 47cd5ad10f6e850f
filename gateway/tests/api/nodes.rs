//! Node registration, heartbeats, placement's requeue, and node loss, with
//! node daemons played by plain HTTP calls (the end-to-end suite runs real ones).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{fresh_database, spawn_app, spawn_app_with, test_settings, until, TestApp};

fn registration(name: &str, address: &str) -> Value {
    json!({
        "name": name, "cluster": "local", "address": address,
        "api_secret": "s".repeat(40), "max_concurrent": 2,
        "resources": {"cpus": 2, "memory_bytes": 1024}
    })
}

async fn register(app: &TestApp, name: &str, address: &str) -> String {
    register_with(app, name, address, 2).await
}

/// Registers node `name` with `max_concurrent` slots; its id.
async fn register_with(app: &TestApp, name: &str, address: &str, max_concurrent: u32) -> String {
    let mut registration = registration(name, address);
    registration["max_concurrent"] = json!(max_concurrent);
    let (status, body) = app.post("/v1/nodes", &app.node_token_for(name), &registration).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["node_id"].as_str().unwrap().to_owned()
}

async fn events(app: &TestApp, id: &str) -> Vec<(Value, Value)> {
    let (_, events) = app.get(&format!("/v1/dispatches/{id}/events"), &app.user_token()).await;
    events["items"].as_array().unwrap().iter().map(|e| (e["to_state"].clone(), e["reason"].clone())).collect()
}

#[tokio::test]
async fn a_bad_registration_names_the_field() {
    let app = spawn_app().await;
    for (field, value) in [
        ("address", json!("ftp://x")),
        ("api_secret", json!("short")),
        ("max_concurrent", json!(0)),
        ("cluster", json!("")),
        ("name", json!("someone-else")),
    ] {
        let mut body = registration("n", "http://127.0.0.1:1");
        body[field] = value;
        let (status, error) = app.post("/v1/nodes", &app.node_token_for("n"), &body).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{field}");
        assert_eq!(error["field"], field);
    }
    let (status, _) = app.post("/v1/nodes", &app.user_token(), &registration("n", "http://127.0.0.1:1")).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, error) = app.post("/v1/nodes", &app.admin_token(), &registration("n", "http://127.0.0.1:1")).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "admin tokens carry no node rights: {error}");
}

#[tokio::test]
async fn a_node_that_registers_again_keeps_its_id() {
    let app = spawn_app().await;
    let first = register(&app, "n1", "http://127.0.0.1:1").await;
    let again = register(&app, "n1", "http://127.0.0.1:2").await;
    assert_eq!(first, again);
    let (_, nodes) = app.get("/v1/nodes", &app.token("default", &[gateway::auth::Scope::Admin])).await;
    assert_eq!(nodes["items"].as_array().unwrap().len(), 1);
    assert_eq!(nodes["items"][0]["address"], "http://127.0.0.1:2");
}

#[tokio::test]
async fn a_heartbeat_from_an_unknown_node_asks_it_to_register() {
    let app = spawn_app().await;
    let (status, error) = app
        .post(
            &format!("/v1/nodes/{}/heartbeat", uuid::Uuid::now_v7()),
            &app.node_token_for("n1"),
            &json!({"running": []}),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(error["message"].as_str().unwrap().contains("register again"), "{error}");
}

#[tokio::test]
async fn a_dispatch_whose_node_refuses_it_goes_back_to_the_queue() {
    let app = spawn_app().await;
    // Nothing listens on this port: the forward is refused outright.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    register(&app, "gone", &format!("http://127.0.0.1:{closed}")).await;
    let id = app.create(&app.user_token(), json!({})).await["id"].as_str().unwrap().to_owned();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let states: Vec<Value> = events(&app, &id).await.into_iter().map(|(s, _)| s).collect();
        if states.len() >= 3 {
            assert_eq!(&states[..3], [json!("queued"), json!("running"), json!("queued")]);
            break;
        }
        assert!(Instant::now() < deadline, "never requeued: {states:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let reasons = events(&app, &id).await;
    assert!(reasons[2].1.as_str().unwrap().contains("refused"), "{reasons:?}");
}

#[tokio::test]
async fn a_silent_node_is_lost_and_its_dispatches_fail_with_node_lost() {
    let mut settings = test_settings(&fresh_database().await);
    settings.nodes.lost_after_s = 1;
    let app = spawn_app_with(settings).await;
    // A fake node that accepts every call and then goes silent.
    register(&app, "silent", &accept_all_node().await).await;
    let id = app.create(&app.user_token(), json!({})).await["id"].as_str().unwrap().to_owned();
    let (_, done) = app.get(&format!("/v1/dispatches/{id}/wait?timeout_s=20"), &app.user_token()).await;
    assert_eq!(done["state"], "failed", "{done}");
    assert_eq!(done["failure"]["code"], "node_lost");
    let (_, nodes) = app.get("/v1/nodes", &app.token("default", &[gateway::auth::Scope::Admin])).await;
    assert_eq!(nodes["items"][0]["state"], "lost");
}

/// A node whose link is open needs no heartbeat request to stay alive: the
/// replica pings the link, and the liveness step records when each link last
/// heard from its node. A silent node without a link is lost as before, and
/// so is the linked one once its link closes.
#[tokio::test]
async fn a_linked_node_stays_alive_on_its_links_pongs_without_heartbeats() {
    let mut settings = test_settings(&fresh_database().await);
    settings.nodes.heartbeat_interval_s = 1;
    settings.nodes.lost_after_s = 3;
    let app = spawn_app_with(settings).await;
    let address = accept_all_node().await;
    let linked = register(&app, "linked", &address).await;
    register(&app, "unlinked", &address).await;
    let socket = link::client::connect(&app.address, &linked, &app.node_token_for("linked")).await.unwrap();
    let (peer, outgoing) = link::Peer::new();
    let handler = link::Handler { router: axum::Router::new(), token: None };
    let timing = link::Timing { idle: Duration::from_secs(300), ping_every: None };
    let running = tokio::spawn(link::client::run(socket, peer, outgoing, handler, timing));
    let state = |name: &'static str| {
        let pool = app.pool.clone();
        async move {
            sqlx::query_as::<_, (String, f64)>(
                "select state::text, extract(epoch from now() - last_heartbeat_at)::float8 from node where name = $1",
            )
            .bind(name)
            .fetch_one(&pool)
            .await
            .unwrap()
        }
    };
    until("the silent node without a link to be lost", Duration::from_secs(20), || async {
        state("unlinked").await.0 == "lost"
    })
    .await;
    let (linked_state, silent_for) = state("linked").await;
    assert_eq!(linked_state, "ready", "no heartbeat request was sent, but its link answered the pings");
    assert!(silent_for < 2.5, "its liveness is at most a ping and a step old: {silent_for} s");
    // The node's end of the link goes away: nothing keeps it alive any more.
    running.abort();
    until("the node whose link closed to be lost", Duration::from_secs(20), || async {
        state("linked").await.0 == "lost"
    })
    .await;
}

#[tokio::test]
async fn a_restarted_node_that_no_longer_runs_a_dispatch_fails_it_with_node_lost() {
    let app = spawn_app().await;
    let address = accept_all_node().await;
    register(&app, "n1", &address).await;
    let id = app.create(&app.user_token(), json!({})).await["id"].as_str().unwrap().to_owned();
    let deadline = Instant::now() + Duration::from_secs(10);
    while app.get(&format!("/v1/dispatches/{id}"), &app.user_token()).await.1["state"] != "running" {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    register(&app, "n1", &address).await; // restarted, running nothing
    let (_, done) = app.get(&format!("/v1/dispatches/{id}"), &app.user_token()).await;
    assert_eq!(done["state"], "failed");
    assert_eq!(done["failure"]["code"], "node_lost");
    assert!(done["failure"]["message"].as_str().unwrap().contains("restarted"));
}

/// A stand-in node that accepts every request (calls and cancels alike) and
/// reports nothing.
async fn accept_all_node() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = format!("http://{}", listener.local_addr().unwrap());
    let accept_all = axum::Router::new().fallback(|| async { StatusCode::ACCEPTED });
    tokio::spawn(async move { axum::serve(listener, accept_all).await });
    address
}

/// A stand-in node API that accepts every call (the end-to-end suite runs real nodes).
async fn accepting_node() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = format!("http://{}", listener.local_addr().unwrap());
    let app = axum::Router::new().route("/calls", axum::routing::post(|| async { StatusCode::ACCEPTED }));
    tokio::spawn(async move { axum::serve(listener, app).await });
    address
}

/// A stand-in node API that accepts every request, counting the calls it is handed.
async fn counting_node() -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = format!("http://{}", listener.local_addr().unwrap());
    let forwards = Arc::new(AtomicUsize::new(0));
    let counted = forwards.clone();
    let app = axum::Router::new()
        .route(
            "/calls",
            axum::routing::post(move || {
                counted.fetch_add(1, Ordering::SeqCst);
                async { StatusCode::ACCEPTED }
            }),
        )
        .fallback(|| async { StatusCode::ACCEPTED });
    tokio::spawn(async move { axum::serve(listener, app).await });
    (address, forwards)
}

#[tokio::test]
async fn concurrent_creates_fill_a_nodes_slots_and_no_more_and_a_freed_slot_takes_the_oldest_queued() {
    let app = spawn_app().await;
    register(&app, "n1", &accepting_node().await).await;
    let token = app.user_token();
    let creates = (0..24).map(|_| app.create(&token, json!({})));
    let created = futures::future::join_all(creates).await;
    // A create is placed in its own commit, or (grouped with others) by the placement task just after.
    assert!(created.iter().filter(|d| d["state"] == "running").count() <= 2);
    let states = || async {
        sqlx::query_as::<_, (String, String)>(
            "select dispatch_id::text, state::text from dispatch order by dispatch_id",
        )
        .fetch_all(&app.pool)
        .await
        .unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let running = loop {
        let running: Vec<String> =
            states().await.into_iter().filter(|(_, state)| state == "running").map(|(id, _)| id).collect();
        assert!(running.len() <= 2, "a node with max_concurrent 2 runs two dispatches at once, never more");
        if running.len() == 2 {
            break running;
        }
        assert!(Instant::now() < deadline, "the node's two slots were not filled");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let queued: Vec<String> =
        states().await.into_iter().filter(|(_, state)| state == "queued").map(|(id, _)| id).collect();
    assert_eq!(queued.len(), 22);
    let oldest = queued[0].clone();
    let finished = &running[0];
    let report = json!({"kind": "succeeded", "result": null});
    app.post(&format!("/v1/dispatches/{finished}/reports"), &app.node_token_for("n1"), &report).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, dispatch) = app.get(&format!("/v1/dispatches/{oldest}"), &token).await;
        if dispatch["state"] == "running" {
            break;
        }
        assert!(Instant::now() < deadline, "the oldest queued dispatch was not placed: {dispatch}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let running = sqlx::query_scalar::<_, i64>("select count(*) from dispatch where state = 'running'")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(running, 2, "the freed slot went to one queued dispatch");
}

#[tokio::test]
async fn heartbeats_are_recorded_in_the_background_and_a_lost_node_stays_lost() {
    let app = spawn_app().await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let address = format!("http://127.0.0.1:{closed}");
    let mut ids = Vec::new();
    for name in ["n1", "n2", "n3"] {
        ids.push(register(&app, name, &address).await.parse::<uuid::Uuid>().unwrap());
    }
    let registered: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("select max(last_heartbeat_at) from node").fetch_one(&app.pool).await.unwrap();
    sqlx::query("update node set state = 'lost', lost_at = now() where name = 'n3'").execute(&app.pool).await.unwrap();
    for (name, warm) in [("n1", 3), ("n2", 5)] {
        let id = ids[if name == "n1" { 0 } else { 1 }];
        let (status, node) = app
            .post(
                &format!("/v1/nodes/{id}/heartbeat"),
                &app.node_token_for(name),
                &json!({"running": [], "warm_workers": warm}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{node}");
        assert_eq!(node["warm_workers"], warm, "{node}");
    }
    let (status, error) =
        app.post(&format!("/v1/nodes/{}/heartbeat", ids[2]), &app.node_token_for("n3"), &json!({"running": []})).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "a lost node registers again: {error}");
    // The times land soon after, without the heartbeats having waited for them.
    let recorded = || async {
        sqlx::query_as::<_, (chrono::DateTime<chrono::Utc>, Option<i32>)>(
            "select last_heartbeat_at, warm_workers from node where name <> 'n3' order by name",
        )
        .fetch_all(&app.pool)
        .await
        .unwrap()
    };
    until("the heartbeats' times", Duration::from_secs(10), || async {
        recorded().await.iter().all(|(at, _)| *at > registered)
    })
    .await;
    let warm: Vec<Option<i32>> = recorded().await.iter().map(|r| r.1).collect();
    assert_eq!(warm, [Some(3), Some(5)]);
    // A heartbeat queued just before its node was declared lost leaves it lost.
    let db = gateway::db::DataStore::from_pool(app.pool.clone());
    db.node_heartbeats_record(&ids[2..], &[Some(9)]).await.unwrap();
    let (state, warm): (String, Option<i32>) =
        sqlx::query_as("select state::text, warm_workers from node where name = 'n3'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!((state.as_str(), warm), ("lost", None));
}

#[tokio::test]
async fn the_slot_tables_are_vacuumed_by_a_background_step() {
    let app = spawn_app().await;
    until("the slot tables' vacuum", Duration::from_secs(20), || async {
        let (_, tasks) = app.get("/v1/admin/background-tasks", &app.admin_token()).await;
        let vacuumed: i64 = sqlx::query_scalar(
            "select coalesce(sum(vacuum_count), 0)::bigint from pg_stat_user_tables
             where relname in ('node_slot', 'object_slot')",
        )
        .fetch_one(&app.pool)
        .await
        .unwrap();
        tasks["slot_vacuum"]["last_result"]["vacuumed"] == json!(["node_slot", "object_slot"]) && vacuumed >= 2
    })
    .await;
}

/// A heartbeat reconciles the gateway's view of its node by the rules: a
/// listed call is acknowledged (the node had it); an unlisted `cancelling`
/// one is cancelled; an unlisted one no heartbeat ever listed goes back to the
/// queue (a call the node had would still be listed); an unlisted one a
/// heartbeat listed before fails with `outcome_lost` (it may have run: never
/// run twice).
#[tokio::test]
async fn a_heartbeat_reconciles_what_the_gateway_believes_runs_on_its_node() {
    let mut settings = test_settings(&fresh_database().await);
    settings.nodes.unacknowledged_requeue_s = 0;
    let app = spawn_app_with(settings).await;
    // Cancels stay `cancelling`: the node accepts them and never confirms.
    let (address, forwards) = counting_node().await;
    let node_id = register_with(&app, "n1", &address, 4).await;
    let token = app.user_token();
    let node_token = app.node_token_for("n1");
    let heartbeat = |running: Vec<String>| {
        let app = &app;
        let (node_id, node_token) = (&node_id, &node_token);
        async move {
            let (status, seen) =
                app.post(&format!("/v1/nodes/{node_id}/heartbeat"), node_token, &json!({ "running": running })).await;
            assert_eq!(status, StatusCode::OK, "{seen}");
            seen
        }
    };
    let acked = |id: String| {
        let pool = app.pool.clone();
        async move {
            sqlx::query_scalar::<_, bool>("select acked_at is not null from dispatch where dispatch_id = $1::uuid")
                .bind(id)
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(app.create(&token, json!({})).await["id"].as_str().unwrap().to_owned());
    }
    let [listed, cancelling, had] = [&ids[0], &ids[1], &ids[2]];
    until("the three calls to reach the node", Duration::from_secs(10), || async {
        forwards.load(Ordering::SeqCst) == 3
    })
    .await;
    assert!(!acked(had.clone()).await, "an accepted forward writes nothing");
    heartbeat(vec![listed.clone(), cancelling.clone(), had.clone()]).await;
    for id in [listed, cancelling, had] {
        assert!(acked(id.clone()).await, "a listed call counts as acknowledged");
    }
    let (status, cancel) = app.post(&format!("/v1/dispatches/{cancelling}/cancel"), &token, &json!({})).await;
    assert_eq!((status, &cancel["state"]), (StatusCode::OK, &json!("cancelling")), "{cancel}");
    // Forwarded and accepted, but no heartbeat lists it.
    let unacked = app.create(&token, json!({})).await["id"].as_str().unwrap().to_owned();
    until("the fourth call to reach the node", Duration::from_secs(10), || async {
        forwards.load(Ordering::SeqCst) == 4
    })
    .await;

    let seen = heartbeat(vec![listed.clone()]).await;
    assert_eq!(seen["running"], 4, "the view before the repairs: {seen}");

    let state = |id: String| {
        let app = &app;
        async move { app.get(&format!("/v1/dispatches/{id}"), &app.user_token()).await.1 }
    };
    let listed_now = state(listed.clone()).await;
    assert_eq!(listed_now["state"], "running", "{listed_now}");
    assert_eq!(state(cancelling.clone()).await["state"], "cancelled");
    let had_now = state(had.clone()).await;
    assert_eq!(had_now["state"], "failed", "{had_now}");
    assert_eq!(had_now["failure"]["code"], "outcome_lost");
    let requeued = events(&app, &unacked).await;
    assert_eq!(requeued[2].0, "queued", "{requeued:?}");
    assert!(requeued[2].1.as_str().unwrap().contains("no heartbeat listed it"), "{requeued:?}");
}

/// A forward that gets through clears the node's earlier failed forwards,
/// so later failures back off from the start again.
#[tokio::test]
async fn a_forward_that_gets_through_clears_the_nodes_failed_forwards() {
    let app = spawn_app().await;
    let (address, forwards) = counting_node().await;
    let node_id: uuid::Uuid = register_with(&app, "n1", &address, 2).await.parse().unwrap();
    sqlx::query("update node set forward_failures = 3 where node_id = $1")
        .bind(node_id)
        .execute(&app.pool)
        .await
        .unwrap();
    app.create(&app.user_token(), json!({})).await;
    until("the forward to reach the node", Duration::from_secs(10), || async { forwards.load(Ordering::SeqCst) == 1 })
        .await;
    until("the node's failures to clear", Duration::from_secs(10), || async {
        sqlx::query_scalar::<_, i32>("select forward_failures from node where node_id = $1")
            .bind(node_id)
            .fetch_one(&app.pool)
            .await
            .unwrap()
            == 0
    })
    .await;
}

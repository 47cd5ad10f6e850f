//! Node registration, heartbeats, placement's requeue, and node loss, with
//! node daemons played by plain HTTP calls (the end-to-end suite runs real ones).

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
/// listed call is acknowledged; an unlisted `cancelling` one is cancelled; an
/// unlisted, unacknowledged one goes back to the queue; an unlisted one the
/// node had fails with `outcome_lost` (it may have run: never run twice).
#[tokio::test]
async fn a_heartbeat_reconciles_what_the_gateway_believes_runs_on_its_node() {
    let mut settings = test_settings(&fresh_database().await);
    settings.nodes.unacknowledged_requeue_s = 0;
    let app = spawn_app_with(settings).await;
    // Cancels stay `cancelling`: the node accepts them and never confirms.
    let node_id = register_with(&app, "n1", &accept_all_node().await, 4).await;
    let token = app.user_token();
    let mut ids = Vec::new();
    for _ in 0..4 {
        ids.push(app.create(&token, json!({})).await["id"].as_str().unwrap().to_owned());
    }
    let [listed, cancelling, unacked, had] = [&ids[0], &ids[1], &ids[2], &ids[3]];
    let acked = || async {
        sqlx::query_scalar::<_, i64>("select count(*) from dispatch where state = 'running' and acked_at is not null")
            .fetch_one(&app.pool)
            .await
            .unwrap()
    };
    until("the four calls to be placed and acknowledged", Duration::from_secs(10), || async { acked().await == 4 })
        .await;
    let (status, cancel) = app.post(&format!("/v1/dispatches/{cancelling}/cancel"), &token, &json!({})).await;
    assert_eq!((status, &cancel["state"]), (StatusCode::OK, &json!("cancelling")), "{cancel}");
    sqlx::query("update dispatch set acked_at = null where dispatch_id = any($1::uuid[])")
        .bind(vec![listed.parse::<uuid::Uuid>().unwrap(), unacked.parse::<uuid::Uuid>().unwrap()])
        .execute(&app.pool)
        .await
        .unwrap();

    let (status, seen) = app
        .post(&format!("/v1/nodes/{node_id}/heartbeat"), &app.node_token_for("n1"), &json!({"running": [listed]}))
        .await;
    assert_eq!(status, StatusCode::OK, "{seen}");
    assert_eq!(seen["running"], 4, "the view before the repairs: {seen}");

    let state = |id: String| {
        let app = &app;
        async move { app.get(&format!("/v1/dispatches/{id}"), &app.user_token()).await.1 }
    };
    let listed_now = state(listed.clone()).await;
    assert_eq!(listed_now["state"], "running", "{listed_now}");
    let listed_acked: bool =
        sqlx::query_scalar("select acked_at is not null from dispatch where dispatch_id = $1::uuid")
            .bind(listed)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert!(listed_acked, "a listed call counts as acknowledged");
    assert_eq!(state(cancelling.clone()).await["state"], "cancelled");
    let had_now = state(had.clone()).await;
    assert_eq!(had_now["state"], "failed", "{had_now}");
    assert_eq!(had_now["failure"]["code"], "outcome_lost");
    let requeued = events(&app, unacked).await;
    assert_eq!(requeued[2].0, "queued", "{requeued:?}");
    assert!(requeued[2].1.as_str().unwrap().contains("never acknowledged"), "{requeued:?}");
}

/// Acks are written without waiting on rows other transactions hold, except
/// the few held ones, which a second statement waits for: none is dropped,
/// and a call that finished meanwhile gets none.
#[tokio::test]
async fn an_ack_waits_only_for_the_calls_it_found_held_and_skips_finished_ones() {
    let app = spawn_app().await;
    let node_id: uuid::Uuid = register_with(&app, "n1", &accepting_node().await, 3).await.parse().unwrap();
    let token = app.user_token();
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(app.create(&token, json!({})).await["id"].as_str().unwrap().parse::<uuid::Uuid>().unwrap());
    }
    let acked = |id: uuid::Uuid| {
        let pool = app.pool.clone();
        async move {
            sqlx::query_scalar::<_, bool>("select acked_at is not null from dispatch where dispatch_id = $1")
                .bind(id)
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    until("the calls' acks", Duration::from_secs(10), || async {
        acked(ids[0]).await && acked(ids[1]).await && acked(ids[2]).await
    })
    .await;
    let [free, held, finished] = [ids[0], ids[1], ids[2]];
    let report = json!({"kind": "succeeded", "result": null});
    let (status, _) = app.post(&format!("/v1/dispatches/{finished}/reports"), &app.node_token_for("n1"), &report).await;
    assert!(status.is_success(), "{status}");
    sqlx::query("update dispatch set acked_at = null where dispatch_id = any($1)")
        .bind(&ids)
        .execute(&app.pool)
        .await
        .unwrap();

    let mut holder = app.pool.begin().await.unwrap();
    sqlx::query("select 1 from dispatch where dispatch_id = $1 for no key update")
        .bind(held)
        .execute(&mut *holder)
        .await
        .unwrap();
    let db = gateway::db::DataStore::from_pool(app.pool.clone());
    let acks = [(free, node_id), (held, node_id), (finished, node_id)];
    let writing = tokio::spawn(async move { db.dispatch_acked(&acks).await });
    // The free call is acknowledged at once; the held one waits for its lock.
    until("the free call's ack", Duration::from_secs(10), || async { acked(free).await }).await;
    until("the ack to wait on the held row", Duration::from_secs(10), || async {
        sqlx::query_scalar::<_, i64>(
            "select count(*) from pg_stat_activity where datname = current_database() and wait_event_type = 'Lock' \
             and query like '%update dispatch d%'",
        )
        .fetch_one(&app.pool)
        .await
        .unwrap()
            == 1
    })
    .await;
    assert!(!acked(held).await);
    holder.commit().await.unwrap();
    writing.await.unwrap().unwrap();
    assert!(acked(held).await, "the held call is acknowledged once its lock is released");
    assert!(!acked(finished).await, "a finished call needs no ack");
}

//! Create, read, list, cancel and events.

use std::collections::HashSet;

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::spawn_app;
use uuid::Uuid;

#[tokio::test]
async fn creating_a_dispatch_records_it_queued_with_its_creation_event() {
    let app = spawn_app().await;
    let token = app.user_token();
    let body = json!({
        "function": "pipeline.train:fit", "args": [1, "two"], "kwargs": {"epochs": 3},
        "cluster": "train", "labels": {"dag_id": "ml"}, "timeout_s": 60
    });
    let (status, dispatch) = app.post("/v1/dispatches", &token, &body).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(dispatch["state"], "queued");
    assert_eq!(dispatch["generation"], 1);
    assert_eq!(dispatch["project"], "default");
    assert_eq!(dispatch["requester"], "tester");
    assert_eq!(dispatch["args"], json!([1, "two"]));
    assert_eq!(dispatch["kwargs"], json!({"epochs": 3}));
    assert_eq!(dispatch["labels"], json!({"dag_id": "ml"}));
    assert_eq!(dispatch["timeout_s"], 60);

    let id = dispatch["id"].as_str().unwrap();
    let (status, fetched) = app.get(&format!("/v1/dispatches/{id}"), &token).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(fetched, dispatch);

    let (_, events) = app.get(&format!("/v1/dispatches/{id}/events"), &token).await;
    let events = events["items"].as_array().unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["from_state"], Value::Null);
    assert_eq!(events[0]["to_state"], "queued");
    assert_eq!(events[0]["actor"], "tester");
}

#[tokio::test]
async fn the_same_idempotency_key_and_body_return_the_existing_dispatch() {
    let app = spawn_app().await;
    let token = app.user_token();
    let body = json!({"function": "m:f", "cluster": "c", "idempotency_key": "k1", "args": [1]});
    let (first_status, first) = app.post("/v1/dispatches", &token, &body).await;
    let (second_status, second) = app.post("/v1/dispatches", &token, &body).await;
    assert_eq!(first_status, StatusCode::CREATED);
    assert_eq!(second_status, StatusCode::OK);
    assert_eq!(first["id"], second["id"]);
    assert_eq!(app.count("dispatch").await, 1);
}

#[tokio::test]
async fn the_same_idempotency_key_with_another_body_is_a_conflict() {
    let app = spawn_app().await;
    let token = app.user_token();
    app.post("/v1/dispatches", &token, &json!({"function": "m:f", "cluster": "c", "idempotency_key": "k1"})).await;
    let (status, error) =
        app.post("/v1/dispatches", &token, &json!({"function": "m:g", "cluster": "c", "idempotency_key": "k1"})).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(error["code"], "idempotency_conflict");
    assert_eq!(error["field"], "idempotency_key");
    assert!(error["message"].as_str().unwrap().contains("k1"));
    assert_eq!(app.count("dispatch").await, 1);
}

#[tokio::test]
async fn idempotency_keys_are_scoped_to_the_project() {
    let app = spawn_app().await;
    let body = json!({"function": "m:f", "cluster": "c", "idempotency_key": "shared"});
    let a = app.token("alpha", &[gateway::auth::Scope::DispatchWrite]);
    let b = app.token("beta", &[gateway::auth::Scope::DispatchWrite]);
    let (_, first) = app.post("/v1/dispatches", &a, &body).await;
    let (status, second) = app.post("/v1/dispatches", &b, &body).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_ne!(first["id"], second["id"]);
}

#[tokio::test]
async fn concurrent_duplicate_creates_yield_exactly_one_row() {
    let app = spawn_app().await;
    let token = app.user_token();
    let body = json!({"function": "m:f", "cluster": "c", "idempotency_key": "race"});
    let requests = (0..32).map(|_| app.post("/v1/dispatches", &token, &body));
    let results = futures::future::join_all(requests).await;
    let ids: HashSet<_> = results.iter().map(|(_, d)| d["id"].as_str().unwrap().to_owned()).collect();
    let created = results.iter().filter(|(s, _)| *s == StatusCode::CREATED).count();
    assert!(results.iter().all(|(s, _)| s.is_success()), "{results:?}");
    assert_eq!(ids.len(), 1);
    assert_eq!(created, 1);
    assert_eq!(app.count("dispatch").await, 1);
    assert_eq!(app.count("dispatch_event").await, 1);
}

#[tokio::test]
async fn a_client_that_disconnects_mid_create_never_leaves_half_a_dispatch() {
    let app = spawn_app().await;
    let token = app.user_token();
    // Abort each request at a different moment, from before the send to after the commit.
    for i in 0..40u64 {
        let body = json!({"function": "m:f", "cluster": "c", "idempotency_key": format!("k{i}")});
        let request = app.post("/v1/dispatches", &token, &body);
        let _ = tokio::time::timeout(std::time::Duration::from_micros(i * 150), request).await;
    }
    // Retrying every key after the disconnects yields one complete dispatch per key.
    for i in 0..40u64 {
        let body = json!({"function": "m:f", "cluster": "c", "idempotency_key": format!("k{i}")});
        let (status, _) = app.post("/v1/dispatches", &token, &body).await;
        assert!(status.is_success());
    }
    assert_eq!(app.count("dispatch").await, 40);
    let without_event: i64 = sqlx::query_scalar(
        "select count(*) from dispatch d where not exists
           (select 1 from dispatch_event e where e.dispatch_id = d.dispatch_id and e.to_state = 'queued')",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(without_event, 0);
    assert_eq!(app.count("dispatch_event").await, 40);
}

/// The harness's check (helpers.rs, `INDEX_IN_STEP`) that keeps every other
/// test honest about the narrow index row: it refuses a commit that changes a
/// dispatch's state on one copy only.
#[tokio::test]
async fn a_state_change_written_to_the_dispatch_row_alone_does_not_commit() {
    let app = spawn_app().await;
    let token = app.user_token();
    let id = app.create(&token, json!({})).await["id"].as_str().unwrap().parse::<Uuid>().unwrap();
    let alone = sqlx::query("update dispatch set state = 'cancelled' where dispatch_id = $1")
        .bind(id)
        .execute(&app.pool)
        .await
        .expect_err("the commit is refused");
    assert!(alone.to_string().contains("dispatch_index is out of step"), "{alone}");
    let both = sqlx::query(
        "with d as (update dispatch set state = 'cancelled' where dispatch_id = $1 returning dispatch_id)
         update dispatch_index q set state = 'cancelled' from d where q.dispatch_id = d.dispatch_id",
    )
    .bind(id)
    .execute(&app.pool)
    .await;
    assert!(both.is_ok(), "{both:?}");
}

#[tokio::test]
async fn cancelling_a_queued_dispatch_cancels_it_and_records_who_and_why() {
    let app = spawn_app().await;
    let token = app.user_token();
    let id = app.create(&token, json!({})).await["id"].as_str().unwrap().to_owned();
    let (status, dispatch) =
        app.post(&format!("/v1/dispatches/{id}/cancel"), &token, &json!({"reason": "superseded"})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(dispatch["state"], "cancelled");
    assert_eq!(dispatch["generation"], 2);
    assert_eq!(dispatch["cancellation"]["by"], "tester");
    assert_eq!(dispatch["cancellation"]["reason"], "superseded");
    assert!(dispatch["finished_at"].is_string());
    let (_, events) = app.get(&format!("/v1/dispatches/{id}/events"), &token).await;
    let last = events["items"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["from_state"], "queued");
    assert_eq!(last["to_state"], "cancelled");
    assert_eq!(last["reason"], "superseded");
}

#[tokio::test]
async fn cancelling_a_terminal_dispatch_returns_it_unchanged() {
    let app = spawn_app().await;
    let token = app.user_token();
    let id = app.create(&token, json!({})).await["id"].as_str().unwrap().to_owned();
    let (_, first) = app.post(&format!("/v1/dispatches/{id}/cancel"), &token, &json!({"reason": "one"})).await;
    let (status, second) = app.post(&format!("/v1/dispatches/{id}/cancel"), &token, &json!({"reason": "two"})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(first, second);
    assert_eq!(app.count("dispatch_event").await, 2);
}

#[tokio::test]
async fn listing_filters_by_state_cluster_label_and_creation_time() {
    let app = spawn_app().await;
    let token = app.user_token();
    let a = app.create(&token, json!({"cluster": "cpu", "labels": {"dag_id": "etl", "task_id": "a"}})).await;
    let b = app.create(&token, json!({"cluster": "gpu", "labels": {"dag_id": "etl", "task_id": "b"}})).await;
    let c = app.create(&token, json!({"cluster": "gpu", "labels": {"dag_id": "ml"}})).await;
    app.post(&format!("/v1/dispatches/{}/cancel", c["id"].as_str().unwrap()), &token, &json!({})).await;

    let ids =
        |page: &Value| -> Vec<Value> { page["items"].as_array().unwrap().iter().map(|d| d["id"].clone()).collect() };
    let (_, all) = app.get("/v1/dispatches", &token).await;
    assert_eq!(ids(&all), vec![c["id"].clone(), b["id"].clone(), a["id"].clone()]);
    let (_, gpu) = app.get("/v1/dispatches?cluster=gpu", &token).await;
    assert_eq!(ids(&gpu), vec![c["id"].clone(), b["id"].clone()]);
    let (_, queued) = app.get("/v1/dispatches?state=queued", &token).await;
    assert_eq!(ids(&queued), vec![b["id"].clone(), a["id"].clone()]);
    let (_, both) = app.get("/v1/dispatches?state=queued&state=cancelled&cluster=gpu", &token).await;
    assert_eq!(ids(&both), vec![c["id"].clone(), b["id"].clone()]);
    let (_, etl) = app.get("/v1/dispatches?label=dag_id=etl", &token).await;
    assert_eq!(ids(&etl), vec![b["id"].clone(), a["id"].clone()]);
    let (_, etl_b) = app.get("/v1/dispatches?label=dag_id=etl&label=task_id=b", &token).await;
    assert_eq!(ids(&etl_b), vec![b["id"].clone()]);

    let b_created = b["created_at"].as_str().unwrap();
    let encoded = b_created.replace(':', "%3A").replace('+', "%2B");
    let (_, since_b) = app.get(&format!("/v1/dispatches?created_after={encoded}"), &token).await;
    assert_eq!(ids(&since_b), vec![c["id"].clone(), b["id"].clone()]);
    let (_, before_b) = app.get(&format!("/v1/dispatches?created_before={encoded}"), &token).await;
    assert_eq!(ids(&before_b), vec![a["id"].clone()]);
}

#[tokio::test]
async fn pagination_is_stable_while_new_dispatches_arrive() {
    let app = spawn_app().await;
    let token = app.user_token();
    let mut created = Vec::new();
    for _ in 0..25 {
        created.push(app.create(&token, json!({})).await["id"].clone());
    }
    created.reverse(); // newest first, as listed
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/dispatches?limit=10&cursor={c}"),
            None => "/v1/dispatches?limit=10".to_owned(),
        };
        let (status, page) = app.get(&path, &token).await;
        assert_eq!(status, StatusCode::OK);
        seen.extend(page["items"].as_array().unwrap().iter().map(|d| d["id"].clone()));
        // New work arriving between pages must not shift or repeat what is left to read.
        app.create(&token, json!({})).await;
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen, created);
}

#[tokio::test]
async fn a_bad_list_filter_names_the_parameter() {
    let app = spawn_app().await;
    let token = app.user_token();
    for (query, field) in [
        ("state=sleeping", "state"),
        ("label=novalue", "label"),
        ("limit=0", "limit"),
        ("limit=501", "limit"),
        ("cursor=garbage", "cursor"),
    ] {
        let (status, error) = app.get(&format!("/v1/dispatches?{query}"), &token).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{query}");
        assert_eq!(error["field"], field, "{query}: {error}");
    }
    let (status, error) = app.get("/v1/dispatches?colour=red", &token).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(error["message"].as_str().unwrap().contains("colour"), "{error}");
}

/// A create as the API would build it, in project `default`, cluster `train`.
fn new_dispatch(key: Option<&str>) -> gateway::db::NewDispatch {
    gateway::db::NewDispatch {
        dispatch_id: uuid::Uuid::now_v7(),
        project: "default".into(),
        function_ref: "json:dumps".into(),
        function_name: None,
        bundle: None,
        requirements: json!([]),
        args: json!([1]),
        kwargs: json!({}),
        cluster: "train".into(),
        cluster_project: "default".into(),
        idempotency_key: key.map(str::to_owned),
        request_hash: "h".into(),
        requester: "tester".into(),
        labels: json!({"batch": "yes"}),
        timeout_s: None,
        object_id: None,
        method: None,
        cache_key: None,
    }
}

#[tokio::test]
async fn a_grouped_create_with_one_item_the_database_refuses_fails_only_that_item_and_stores_the_others() {
    let app = spawn_app().await;
    let settings = crate::helpers::test_settings(&app.database_url);
    let db = gateway::db::DataStore::connect_lazy(&settings.database).unwrap();
    let (first, third) = (new_dispatch(None), new_dispatch(Some("k1")));
    // A method call without an object: the `dispatch_method_needs_object` check refuses it.
    let mut refused = new_dispatch(None);
    refused.method = Some("fit".into());
    let results = db.dispatch_insert_group(&[&first, &refused, &third]).await;
    assert_eq!(results.len(), 3);
    // No node in cluster `train`: stored as queued, placed by nobody.
    let (stored, node) = results[0].as_ref().unwrap().as_ref().unwrap();
    assert_eq!((stored.dispatch_id, stored.state.to_string()), (first.dispatch_id, "queued".to_owned()));
    assert!(node.is_none());
    // Its own error: the database's refusal (a 500 over the API, with the cause kept for the log).
    let err = results[1].as_ref().unwrap_err();
    let cause = std::error::Error::source(err).map(|s| s.to_string()).unwrap_or_default();
    assert!(matches!(err, gateway::Error::Internal(_)) && cause.contains("dispatch_method_needs_object"), "{cause}");
    assert_eq!(results[2].as_ref().unwrap().as_ref().unwrap().0.dispatch_id, third.dispatch_id);
    // Stored whole: rows, creation events and labels; nothing of the refused item.
    assert_eq!(app.count("dispatch").await, 2);
    assert_eq!(app.count("dispatch_event").await, 2);
    assert_eq!(app.count("dispatch_label").await, 2);

    // The same idempotency key again, grouped with a new item: `None` for the key, the other stored.
    let (again, fourth) = (new_dispatch(Some("k1")), new_dispatch(None));
    let results = db.dispatch_insert_group(&[&again, &fourth]).await;
    assert!(results[0].as_ref().unwrap().is_none());
    assert_eq!(results[1].as_ref().unwrap().as_ref().unwrap().0.dispatch_id, fourth.dispatch_id);
    assert_eq!(app.count("dispatch").await, 3);
}

#[tokio::test]
async fn a_grouped_create_places_as_many_as_there_are_free_slots_in_order_and_queues_the_rest() {
    let app = spawn_app().await;
    let settings = crate::helpers::test_settings(&app.database_url);
    let db = gateway::db::DataStore::connect_lazy(&settings.database).unwrap();
    let (node_id, _) = app.fake_node("node-1", 3).await;
    let on_local = || gateway::db::NewDispatch { cluster: "local".into(), ..new_dispatch(None) };
    // Five calls in one group, three free slots: the first three run, in order, the rest queue.
    let news: Vec<_> = (0..5).map(|_| on_local()).collect();
    let results = db.dispatch_insert_group(&news.iter().collect::<Vec<_>>()).await;
    let placed: Vec<_> = results
        .iter()
        .map(|r| {
            let (row, node) = r.as_ref().unwrap().as_ref().unwrap();
            assert_eq!(row.node_id, node.as_ref().map(|n| n.node_id), "{row:?}");
            (row.state.to_string(), node.as_ref().map(|n| n.node_id.to_string()))
        })
        .collect();
    let running = ("running".to_owned(), Some(node_id.clone()));
    let queued = ("queued".to_owned(), None);
    assert_eq!(placed, vec![running.clone(), running.clone(), running, queued.clone(), queued.clone()]);
    // Each placed call holds a slot of its own, and has both events.
    let pool = sqlx::PgPool::connect(&app.database_url).await.unwrap();
    let held: Vec<uuid::Uuid> =
        sqlx::query_scalar("select dispatch_id from node_slot where dispatch_id is not null order by dispatch_id")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(held, news[..3].iter().map(|n| n.dispatch_id).collect::<Vec<_>>());
    let placed_events: i64 = sqlx::query_scalar("select count(*) from dispatch_event where to_state = 'running'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(placed_events, 3);

    // A slot frees, but older calls are queued: a new group queues behind them, even with a slot free.
    sqlx::query("update node_slot set dispatch_id = null where dispatch_id = $1")
        .bind(news[0].dispatch_id)
        .execute(&pool)
        .await
        .unwrap();
    let late = on_local();
    let results = db.dispatch_insert_group(&[&late, &on_local()]).await;
    for result in &results {
        let (row, node) = result.as_ref().unwrap().as_ref().unwrap();
        assert_eq!((row.state.to_string(), node.is_none()), ("queued".to_owned(), true));
    }
}

fn cancel_change(dispatch_id: uuid::Uuid, reason: &str) -> gateway::db::Transition {
    use gateway::dispatch::DispatchState;
    gateway::db::Transition {
        dispatch_id,
        project: Some("default".into()),
        node: None,
        moves: vec![(DispatchState::Queued, DispatchState::Cancelled)],
        expected_generation: None,
        actor: "tester".into(),
        reason: Some(reason.into()),
        result: None,
        failure: None,
        cancelled_by: Some("tester".into()),
        logs: Vec::new(),
        log_limit: 1 << 20,
    }
}

/// A gateway, its data store, and `n` queued dispatches stored in it.
async fn queued_in_a_store(
    n: usize,
) -> (crate::helpers::TestApp, gateway::db::DataStore, Vec<gateway::db::NewDispatch>) {
    let app = spawn_app().await;
    let settings = crate::helpers::test_settings(&app.database_url);
    let db = gateway::db::DataStore::connect_lazy(&settings.database).unwrap();
    let news: Vec<_> = (0..n).map(|_| new_dispatch(None)).collect();
    let refs: Vec<_> = news.iter().collect();
    assert!(db.dispatch_insert_group(&refs).await.iter().all(|r| r.is_ok()));
    (app, db, news)
}

#[tokio::test]
async fn a_grouped_change_with_one_item_the_database_refuses_fails_only_that_item_and_applies_the_others() {
    let (app, db, news) = queued_in_a_store(4).await;
    let mut changes: Vec<_> = news.iter().map(|n| cancel_change(n.dispatch_id, "no longer needed")).collect();
    // Text holding a NUL byte: Postgres refuses it.
    changes[1].reason = Some("bad\0reason".into());
    // Another project's dispatch: the change writes nothing (not an error).
    changes[3].project = Some("elsewhere".into());
    let results = db.dispatch_transition_group(&changes).await;
    assert_eq!(results.len(), 4);
    assert_eq!(results[0].as_ref().unwrap().as_ref().unwrap().state.to_string(), "cancelled");
    let err = results[1].as_ref().unwrap_err();
    assert!(matches!(err, gateway::Error::InvalidField { message, .. } if message.contains("NUL")), "{err:?}");
    assert_eq!(results[2].as_ref().unwrap().as_ref().unwrap().state.to_string(), "cancelled");
    assert!(results[3].as_ref().unwrap().is_none());
    // Each applied change has its one event; the refused and the foreign ones have none.
    assert_eq!(app.count("dispatch_event").await, 4 + 2);
    let states: Vec<String> = sqlx::query_scalar("select state::text from dispatch order by created_at, dispatch_id")
        .fetch_all(&app.pool)
        .await
        .unwrap();
    assert_eq!(states.iter().filter(|s| *s == "cancelled").count(), 2, "{states:?}");

    // Applied again (a retried group): nothing moves twice.
    let again = db.dispatch_transition_group(&[changes[0].clone(), changes[2].clone()]).await;
    assert!(again.iter().all(|r| matches!(r, Ok(None))));
    assert_eq!(app.count("dispatch_event").await, 4 + 2);
}

#[tokio::test]
async fn a_group_changing_one_dispatch_twice_applies_both_in_order_with_their_output() {
    use gateway::db::LogStream;
    use gateway::dispatch::DispatchState::{Queued, Running, Succeeded};
    let (app, db, news) = queued_in_a_store(2).await;
    let (a, b) = (news[0].dispatch_id, news[1].dispatch_id);
    let mut start = cancel_change(a, "started");
    (start.moves, start.cancelled_by) = (vec![(Queued, Running)], None);
    let mut finish = cancel_change(a, "finished");
    (finish.moves, finish.cancelled_by) = (vec![(Running, Succeeded)], None);
    finish.result = Some(json!({"answer": 42}));
    finish.logs = vec![(0, LogStream::Stdout, "last line\n".into())];
    // One statement updates a row once: the second change to `a` must see the first's effect.
    let results = db.dispatch_transition_group(&[start, cancel_change(b, "not needed"), finish]).await;
    let states: Vec<String> = results.iter().map(|r| r.as_ref().unwrap().as_ref().unwrap().state.to_string()).collect();
    assert_eq!(states, ["running", "cancelled", "succeeded"]);
    let done = results[2].as_ref().unwrap().as_ref().unwrap();
    assert_eq!(done.result, Some(json!({"answer": 42})));
    assert_eq!(done.generation, 3, "created at 1, then two changes");
    let events: Vec<(String, String)> =
        sqlx::query_as("select to_state::text, reason from dispatch_event where dispatch_id = $1 order by event_id")
            .bind(a)
            .fetch_all(&app.pool)
            .await
            .unwrap();
    let events: Vec<(&str, &str)> = events.iter().map(|(s, r)| (s.as_str(), r.as_str())).collect();
    assert_eq!(events[1..], [("running", "started"), ("succeeded", "finished")], "{events:?}");
    let logged: Vec<String> = sqlx::query_scalar("select text from dispatch_log where dispatch_id = $1")
        .bind(a)
        .fetch_all(&app.pool)
        .await
        .unwrap();
    assert_eq!(logged, ["last line\n"]);
}

#[tokio::test]
async fn many_concurrent_creates_are_each_stored_once_with_their_events_and_labels() {
    let app = spawn_app().await;
    let token = app.user_token();
    let creates = (0..200).map(|i| {
        let body = json!({"function": "json:dumps", "args": [i], "cluster": "train", "labels": {"n": i.to_string()},
                          "idempotency_key": format!("key-{}", i % 150)});
        let (app, token) = (&app, &token);
        async move { app.post("/v1/dispatches", token, &body).await }
    });
    let answers = futures::future::join_all(creates).await;
    let mut ids = HashSet::new();
    for (status, dispatch) in &answers {
        // 50 keys are used twice with different bodies: the second is a conflict, never a second row.
        assert!(status.is_success() || *status == StatusCode::CONFLICT, "{status} {dispatch}");
        if status.is_success() {
            assert_eq!(dispatch["state"], "queued", "{dispatch}");
            ids.insert(dispatch["id"].as_str().unwrap().to_owned());
        }
    }
    assert_eq!(ids.len(), 150);
    assert_eq!(app.count("dispatch").await, 150);
    assert_eq!(app.count("dispatch_event").await, 150);
    assert_eq!(app.count("dispatch_label").await, 150);
}

//! Schedules: the API, bad input, and the firer (exactly once per instant, across replicas, by overlap policy).

use std::collections::BTreeMap;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::helpers::{spawn_app, spawn_app_with, test_settings, until, TestApp};

fn every_second(name: &str, overlap: &str) -> Value {
    json!({
        "name": name, "cron": "* * * * * *", "overlap": overlap,
        // No cluster of that name exists, so every run stays queued: a run that never ends.
        "dispatch": {"function": "pipeline.train:fit", "args": [1], "cluster": "nowhere"}
    })
}

/// The schedule's dispatches, oldest first.
async fn runs(app: &TestApp, name: &str) -> Vec<Value> {
    let (status, page) = app.get(&format!("/v1/schedules/{name}/runs?limit=500"), &app.user_token()).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let mut items = page["items"].as_array().unwrap().clone();
    items.reverse();
    items
}

#[tokio::test]
async fn a_schedule_is_created_shown_with_its_next_fires_changed_and_deleted() {
    let app = spawn_app().await;
    let token = app.user_token();
    let body = json!({
        "name": "nightly", "cron": "30 2 * * *", "timezone": "Europe/Berlin",
        "dispatch": {"function": "pipeline.train:fit", "args": [0.01], "cluster": "train", "timeout_s": 600},
        "overlap": "skip", "catchup": "all", "max_catchup": 3
    });
    let (status, created) = app.post("/v1/schedules", &token, &body).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["timezone"], "Europe/Berlin");
    assert_eq!(created["overlap"], "skip");
    assert_eq!(created["upcoming"].as_array().unwrap().len(), 5, "{created}");
    assert_eq!(created["next_fire_at"], created["upcoming"][0]);
    // 02:30 in Berlin is 00:30 or 01:30 UTC.
    let first = created["upcoming"][0].as_str().unwrap();
    assert!(first.contains("T00:30:00") || first.contains("T01:30:00"), "{first}");

    let (status, again) = app.post("/v1/schedules", &token, &body).await;
    assert_eq!((status, again["code"].as_str()), (StatusCode::CONFLICT, Some("schedule_exists")), "{again}");

    let (_, list) = app.get("/v1/schedules", &token).await;
    assert_eq!(list["items"].as_array().unwrap().len(), 1);

    let (status, paused) =
        app.call(Method::PATCH, "/v1/schedules/nightly", Some(&token), Some(&json!({"paused": true}))).await;
    assert_eq!(status, StatusCode::OK, "{paused}");
    assert_eq!((paused["paused"].clone(), paused["next_fire_at"].clone()), (json!(true), Value::Null));
    assert_eq!(paused["upcoming"], json!([]));
    let (_, resumed) = app
        .call(Method::PATCH, "/v1/schedules/nightly", Some(&token), Some(&json!({"paused": false, "cron": "@hourly"})))
        .await;
    assert_eq!(resumed["cron"], "@hourly");
    assert_eq!(resumed["upcoming"].as_array().unwrap().len(), 5, "{resumed}");

    // Another project sees nothing.
    let other = app.token("other", &[gateway::auth::Scope::DispatchRead, gateway::auth::Scope::DispatchWrite]);
    let (status, _) = app.get("/v1/schedules/nightly", &other).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = app.call(Method::DELETE, "/v1/schedules/nightly", Some(&other), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let (status, _) = app.call(Method::DELETE, "/v1/schedules/nightly", Some(&token), None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = app.get("/v1/schedules/nightly", &token).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn bad_schedules_are_refused_naming_the_field_and_nothing_is_stored() {
    let app = spawn_app().await;
    let token = app.user_token();
    let base = json!({"name": "s", "cron": "0 * * * *", "dispatch": {"function": "m:f", "cluster": "c"}});
    let with = |patch: Value| {
        let mut body = base.clone();
        for (k, v) in patch.as_object().unwrap() {
            body[k] = v.clone();
        }
        body
    };
    let cases = [
        (with(json!({"cron": "61 * * * *"})), "cron"),
        (with(json!({"cron": "* * *"})), "cron"),
        (with(json!({"cron": "@sometimes"})), "cron"),
        (with(json!({"timezone": "Mars/Olympus"})), "timezone"),
        (with(json!({"start_at": "2027-01-02T00:00:00Z", "end_at": "2027-01-01T00:00:00Z"})), "end_at"),
        (with(json!({"max_catchup": 0})), "max_catchup"),
        (with(json!({"name": "bad name"})), "name"),
        (
            with(json!({"dispatch": {"function": "m:f", "cluster": "c", "idempotency_key": "k"}})),
            "dispatch.idempotency_key",
        ),
        (with(json!({"dispatch": {"function": "not a function", "cluster": "c"}})), "dispatch.function"),
        (
            with(json!({"dispatch": {"function": "m:f", "cluster": "c", "labels": {"schedule": "x"}}})),
            "dispatch.labels",
        ),
        (with(json!({"surprise": true})), "surprise"),
    ];
    for (body, field) in cases {
        let (status, error) = app.post("/v1/schedules", &token, &body).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}: {error}");
        let named = error["field"].as_str().unwrap_or_default().to_owned() + " " + error["message"].as_str().unwrap();
        assert!(named.contains(field), "{body}: the error should name `{field}`: {error}");
    }
    let (_, list) = app.get("/v1/schedules", &token).await;
    assert_eq!(list["items"], json!([]), "nothing is stored");
}

#[tokio::test]
async fn two_replicas_fire_each_instant_of_an_every_second_schedule_exactly_once() {
    let app = spawn_app().await;
    let replica = spawn_app_with(test_settings(&app.database_url)).await;
    let (status, created) = app.post("/v1/schedules", &app.user_token(), &every_second("tick", "allow")).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    until("five fires", Duration::from_secs(30), || async { runs(&replica, "tick").await.len() >= 5 }).await;
    let runs = runs(&app, "tick").await;
    let mut per_instant: BTreeMap<String, usize> = BTreeMap::new();
    for run in &runs {
        assert_eq!(run["labels"]["schedule"], "tick");
        assert_eq!(run["requester"], "schedule:tick");
        *per_instant.entry(run["labels"]["scheduled_for"].as_str().unwrap().to_owned()).or_default() += 1;
    }
    assert!(per_instant.values().all(|n| *n == 1), "an instant fired twice: {per_instant:?}");
    let instants: Vec<chrono::DateTime<chrono::Utc>> = per_instant.keys().map(|k| k.parse().unwrap()).collect();
    assert!(instants.windows(2).all(|w| (w[1] - w[0]).num_seconds() == 1), "a second was missed: {per_instant:?}");
}

#[tokio::test]
async fn overlap_skip_leaves_no_second_run_while_the_first_is_going() {
    let app = spawn_app().await;
    app.post("/v1/schedules", &app.user_token(), &every_second("skipper", "skip")).await;
    until("the first fire", Duration::from_secs(10), || async { !runs(&app, "skipper").await.is_empty() }).await;
    let (_, status) = app.get("/v1/admin/background-tasks", &app.admin_token()).await;
    let before = status["schedule_firer"]["activations"].as_u64().unwrap();
    until("eight more firer passes", Duration::from_secs(10), || async {
        let (_, status) = app.get("/v1/admin/background-tasks", &app.admin_token()).await;
        status["schedule_firer"]["activations"].as_u64().unwrap() >= before + 8
    })
    .await;
    assert_eq!(runs(&app, "skipper").await.len(), 1, "skip must not start a second run");
}

#[tokio::test]
async fn overlap_cancel_previous_cancels_the_running_one_with_its_reason() {
    let app = spawn_app().await;
    app.post("/v1/schedules", &app.user_token(), &every_second("replacer", "cancel_previous")).await;
    until("three fires", Duration::from_secs(15), || async { runs(&app, "replacer").await.len() >= 3 }).await;
    app.call(Method::PATCH, "/v1/schedules/replacer", Some(&app.user_token()), Some(&json!({"paused": true}))).await;
    let runs = runs(&app, "replacer").await;
    let (last, earlier) = runs.split_last().unwrap();
    for run in earlier {
        let token = app.user_token();
        let (_, got) = app.get(&format!("/v1/dispatches/{}", run["id"].as_str().unwrap()), &token).await;
        assert_eq!(got["state"], "cancelled", "{got}");
        let reason = got["cancellation"]["reason"].as_str().unwrap();
        assert!(reason.starts_with("superseded by schedule replacer"), "{reason}");
    }
    assert_eq!(last["state"], "queued");
}

#[tokio::test]
async fn overlap_queue_starts_the_next_run_only_after_the_previous_one_ends() {
    let app = spawn_app().await;
    let token = app.user_token();
    app.post("/v1/schedules", &token, &every_second("queued", "queue")).await;
    until("the first fire", Duration::from_secs(10), || async { !runs(&app, "queued").await.is_empty() }).await;
    let (_, status) = app.get("/v1/admin/background-tasks", &app.admin_token()).await;
    let before = status["schedule_firer"]["activations"].as_u64().unwrap();
    until("eight more firer passes", Duration::from_secs(10), || async {
        let (_, status) = app.get("/v1/admin/background-tasks", &app.admin_token()).await;
        status["schedule_firer"]["activations"].as_u64().unwrap() >= before + 8
    })
    .await;
    let first = runs(&app, "queued").await;
    assert_eq!(first.len(), 1, "the second run waits for the first");
    let id = first[0]["id"].as_str().unwrap();
    app.post(&format!("/v1/dispatches/{id}/cancel"), &token, &json!({"reason": "done"})).await;
    until("the held fire", Duration::from_secs(10), || async { runs(&app, "queued").await.len() == 2 }).await;
    let both = runs(&app, "queued").await;
    // The held instant is the one right after the first: it fired late, not skipped.
    let at = |run: &Value| {
        run["labels"]["scheduled_for"].as_str().unwrap().parse::<chrono::DateTime<chrono::Utc>>().unwrap()
    };
    assert_eq!((at(&both[1]) - at(&both[0])).num_seconds(), 1, "{both:?}");
}

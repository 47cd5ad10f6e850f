//! Every (state, event) pair through the real API and database, with the pure
//! state machine as the oracle, plus compare-and-set under races.

use gateway::dispatch::{DispatchState, Event, Next};
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{spawn_app, TestApp};

fn state_name(state: DispatchState) -> String {
    state.to_string()
}

/// Sends `event` for dispatch `id`; cancels go through the user API, the rest are node reports.
async fn send(app: &TestApp, id: &str, event: Event) -> (StatusCode, Value) {
    let user = app.user_token();
    let node = app.admin_token();
    let report = |kind: &str| json!({"kind": kind});
    match event {
        Event::Cancel => app.post(&format!("/v1/dispatches/{id}/cancel"), &user, &json!({"reason": "test"})).await,
        Event::Start => app.post(&format!("/v1/dispatches/{id}/reports"), &node, &report("started")).await,
        Event::Succeed => {
            let body = json!({"kind": "succeeded", "result": {"ok": true}});
            app.post(&format!("/v1/dispatches/{id}/reports"), &node, &body).await
        }
        Event::Fail => {
            let body = json!({"kind": "failed", "failure": {"code": "user_exception", "message": "boom"}});
            app.post(&format!("/v1/dispatches/{id}/reports"), &node, &body).await
        }
        Event::CancelConfirmed => {
            app.post(&format!("/v1/dispatches/{id}/reports"), &node, &report("cancel_confirmed")).await
        }
        Event::TimeOut => app.post(&format!("/v1/dispatches/{id}/reports"), &node, &report("timed_out")).await,
        Event::Requeue => unreachable!("only placement requeues; see the placement tests"),
        Event::CacheHit => unreachable!("only the cache answers; see the cache tests"),
    }
}

/// The events that take a new dispatch to `state`.
fn path_to(state: DispatchState) -> Vec<Event> {
    match state {
        DispatchState::Queued => vec![],
        DispatchState::Running => vec![Event::Start],
        DispatchState::Cancelling => vec![Event::Start, Event::Cancel],
        DispatchState::Succeeded => vec![Event::Start, Event::Succeed],
        DispatchState::Failed => vec![Event::Start, Event::Fail],
        DispatchState::Cancelled => vec![Event::Cancel],
        DispatchState::TimedOut => vec![Event::Start, Event::TimeOut],
    }
}

#[tokio::test]
async fn every_state_and_event_pair_behaves_as_the_state_machine_says() {
    let app = spawn_app().await;
    let token = app.user_token();
    for state in DispatchState::ALL {
        // Requeue is internal to placement and CacheHit to the cache (no route sends
        // either); `placement.rs` and the e2e cache test cover them.
        for event in Event::ALL.into_iter().filter(|e| !matches!(e, Event::Requeue | Event::CacheHit)) {
            let id = app.create(&token, json!({})).await["id"].as_str().unwrap().to_owned();
            for step in path_to(state) {
                let (status, body) = send(&app, &id, step).await;
                assert_eq!(status, StatusCode::OK, "reaching {state}: {step:?} gave {body}");
            }
            let (_, before) = app.get(&format!("/v1/dispatches/{id}"), &token).await;
            assert_eq!(before["state"], state_name(state));
            let (status, after) = send(&app, &id, event).await;
            let case = format!("{state} + {event:?}");
            match state.next(event) {
                Ok(Next::Move(to)) => {
                    assert_eq!(status, StatusCode::OK, "{case}: {after}");
                    assert_eq!(after["state"], state_name(to), "{case}");
                    assert_eq!(after["generation"], before["generation"].as_i64().unwrap() + 1, "{case}");
                    let (_, events) = app.get(&format!("/v1/dispatches/{id}/events"), &token).await;
                    let last = events["items"].as_array().unwrap().last().unwrap().clone();
                    assert_eq!(
                        (last["from_state"].clone(), last["to_state"].clone()),
                        (json!(state_name(state)), json!(state_name(to))),
                        "{case}"
                    );
                }
                Ok(Next::Stay) => {
                    assert_eq!(status, StatusCode::OK, "{case}: {after}");
                    assert_eq!(after, before, "{case}: a no-op must change nothing");
                }
                Err(_) => {
                    assert_eq!(status, StatusCode::CONFLICT, "{case}: {after}");
                    assert_eq!(after["code"], "invalid_transition");
                    let message = after["message"].as_str().unwrap();
                    assert!(message.contains(&format!("`{state}`")), "{case}: {message}");
                    assert!(message.contains(&format!("`{}`", event.target())), "{case}: {message}");
                    let (_, unchanged) = app.get(&format!("/v1/dispatches/{id}"), &token).await;
                    assert_eq!(unchanged, before, "{case}: a refused transition must change nothing");
                }
            }
        }
    }
}

#[tokio::test]
async fn results_and_failures_are_recorded_with_their_transition() {
    let app = spawn_app().await;
    let token = app.user_token();
    let id = app.create(&token, json!({})).await["id"].as_str().unwrap().to_owned();
    send(&app, &id, Event::Start).await;
    let (_, done) = send(&app, &id, Event::Succeed).await;
    assert_eq!(done["result"], json!({"ok": true}));
    assert!(done["started_at"].is_string() && done["finished_at"].is_string());

    let id = app.create(&token, json!({})).await["id"].as_str().unwrap().to_owned();
    let (_, failed) = send(&app, &id, Event::Fail).await;
    assert_eq!(failed["failure"]["code"], "user_exception");
    assert_eq!(failed["result"], Value::Null);
}

#[tokio::test]
async fn a_report_with_a_stale_generation_is_refused() {
    let app = spawn_app().await;
    let token = app.user_token();
    let id = app.create(&token, json!({})).await["id"].as_str().unwrap().to_owned();
    let (status, error) = app
        .post(
            &format!("/v1/dispatches/{id}/reports"),
            &app.admin_token(),
            &json!({"kind": "started", "expected_generation": 7}),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(error["code"], "stale_generation");
    let (status, started) = app
        .post(
            &format!("/v1/dispatches/{id}/reports"),
            &app.admin_token(),
            &json!({"kind": "started", "expected_generation": 1}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(started["state"], "running");
}

#[tokio::test]
async fn racing_writers_leave_exactly_one_terminal_outcome() {
    let app = spawn_app().await;
    let token = app.user_token();
    for _ in 0..5 {
        let id = app.create(&token, json!({})).await["id"].as_str().unwrap().to_owned();
        send(&app, &id, Event::Start).await;
        let racers = (0..12).map(|i| {
            let event = [Event::Succeed, Event::Fail, Event::TimeOut][i % 3];
            send(&app, &id, event)
        });
        let results = futures::future::join_all(racers).await;
        // Losers get 409, or 200 with the winner's outcome when they repeat it.
        assert!(results.iter().all(|(s, _)| *s == StatusCode::OK || *s == StatusCode::CONFLICT));
        let outcomes: std::collections::HashSet<_> =
            results.iter().filter(|(s, _)| *s == StatusCode::OK).map(|(_, d)| d["state"].to_string()).collect();
        assert_eq!(outcomes.len(), 1, "{results:?}");
        let (_, events) = app.get(&format!("/v1/dispatches/{id}/events"), &token).await;
        let events = events["items"].as_array().unwrap();
        assert_eq!(events.len(), 3, "created, started, one terminal: {events:?}");
        let (_, dispatch) = app.get(&format!("/v1/dispatches/{id}"), &token).await;
        assert_eq!(dispatch["generation"], 3);
    }
}

#[tokio::test]
async fn a_failed_report_must_say_how_it_failed() {
    let app = spawn_app().await;
    let id = app.create(&app.user_token(), json!({})).await["id"].as_str().unwrap().to_owned();
    let (status, error) =
        app.post(&format!("/v1/dispatches/{id}/reports"), &app.admin_token(), &json!({"kind": "failed"})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(error["field"], "failure");
}

#[tokio::test]
async fn the_event_log_is_append_only() {
    let app = spawn_app().await;
    app.create(&app.user_token(), json!({})).await;
    let update = sqlx::query("update dispatch_event set reason = 'rewritten'").execute(&app.pool).await;
    assert!(update.unwrap_err().to_string().contains("append-only"));
    let delete = sqlx::query("delete from dispatch_event").execute(&app.pool).await;
    assert!(delete.unwrap_err().to_string().contains("append-only"));
}

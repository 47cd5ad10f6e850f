//! Call logs: idempotent appends, bounded storage, offsets.

use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{fresh_database, spawn_app, spawn_app_with, test_settings};

#[tokio::test]
async fn log_batches_are_stored_in_order_and_a_resent_batch_is_ignored() {
    let app = spawn_app().await;
    let (id, node) = app.placed_dispatch().await;
    let batch = json!({"entries": [
        {"seq": 1, "stream": "stdout", "text": "one\n"},
        {"seq": 2, "stream": "stderr", "text": "two\n"}
    ]});
    for _ in 0..2 {
        let (status, _) = app.post(&format!("/v1/dispatches/{id}/logs"), &node, &batch).await;
        assert_eq!(status, StatusCode::NO_CONTENT);
    }
    let (_, page) = app.get(&format!("/v1/dispatches/{id}/logs"), &app.user_token()).await;
    let texts: Vec<_> = page["entries"].as_array().unwrap().iter().map(|e| e["text"].clone()).collect();
    assert_eq!(texts, [json!("one\n"), json!("two\n")]);
    assert_eq!(page["next_offset"], 2);
    assert_eq!(page["complete"], false, "a running dispatch's log is not complete");
    let (_, rest) = app.get(&format!("/v1/dispatches/{id}/logs?offset=1"), &app.user_token()).await;
    assert_eq!(rest["entries"].as_array().unwrap().len(), 1);
    let (status, _) = app.post(&format!("/v1/dispatches/{id}/logs"), &app.user_token(), &batch).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "only nodes append logs");
}

#[tokio::test]
async fn output_past_the_limit_is_cut_and_the_cut_is_marked() {
    let mut settings = test_settings(&fresh_database().await);
    settings.call_logs.max_bytes_per_dispatch = 10;
    let app = spawn_app_with(settings).await;
    let (id, node) = app.placed_dispatch().await;
    let batch = json!({"entries": [
        {"seq": 1, "stream": "stdout", "text": "123456"},
        {"seq": 2, "stream": "stdout", "text": "789abcdef"},
        {"seq": 3, "stream": "stdout", "text": "never stored"}
    ]});
    app.post(&format!("/v1/dispatches/{id}/logs"), &node, &batch).await;
    app.post(
        &format!("/v1/dispatches/{id}/logs"),
        &node,
        &json!({"entries": [{"seq": 9, "stream": "stdout", "text": "late"}]}),
    )
    .await;
    let (_, page) = app.get(&format!("/v1/dispatches/{id}/logs"), &app.user_token()).await;
    let entries = page["entries"].as_array().unwrap();
    assert_eq!(entries[0]["text"], "123456");
    assert_eq!(entries[1]["text"], "789a");
    assert_eq!(entries[2]["stream"], "system");
    assert!(entries[2]["text"].as_str().unwrap().contains("log truncated"));
    assert_eq!(entries.len(), 3);
    assert_eq!(page["truncated"], true);
    let (_, dispatch) = app.get(&format!("/v1/dispatches/{id}"), &app.user_token()).await;
    assert_eq!(dispatch["log_truncated"], true);
}

#[tokio::test]
async fn a_report_stores_the_output_it_carries_in_the_same_change() {
    let app = spawn_app().await;
    let (id, node) = app.placed_dispatch().await;
    let reports = format!("/v1/dispatches/{id}/reports");
    app.post(&reports, &node, &json!({"kind": "started"})).await;
    app.post(
        &format!("/v1/dispatches/{id}/logs"),
        &node,
        &json!({"entries": [{"seq": 1, "stream": "stdout", "text": "shipped early\n"}]}),
    )
    .await;
    let report = json!({"kind": "succeeded", "result": 7, "logs": [
        {"seq": 2, "stream": "stdout", "text": "last line\n"},
        {"seq": 3, "stream": "stderr", "text": "a warning\n"}
    ]});
    for _ in 0..2 {
        let (status, dispatch) = app.post(&reports, &node, &report).await;
        assert_eq!(status, StatusCode::OK, "{dispatch}");
        assert_eq!(dispatch["state"], "succeeded", "re-sending the report changes nothing");
    }
    let (_, page) = app.get(&format!("/v1/dispatches/{id}/logs"), &app.user_token()).await;
    let texts: Vec<_> = page["entries"].as_array().unwrap().iter().map(|e| e["text"].clone()).collect();
    assert_eq!(texts, [json!("shipped early\n"), json!("last line\n"), json!("a warning\n")]);
    assert_eq!(page["complete"], true, "the outcome and its output land together");
    let (_, dispatch) = app.get(&format!("/v1/dispatches/{id}"), &app.user_token()).await;
    assert_eq!(dispatch["result"], 7);
}

#[tokio::test]
async fn output_carried_by_a_report_past_the_limit_is_cut_and_the_outcome_still_lands() {
    let mut settings = test_settings(&fresh_database().await);
    settings.call_logs.max_bytes_per_dispatch = 10;
    let app = spawn_app_with(settings).await;
    let (id, node) = app.placed_dispatch().await;
    let reports = format!("/v1/dispatches/{id}/reports");
    app.post(&reports, &node, &json!({"kind": "started"})).await;
    let report = json!({"kind": "failed", "failure": {"code": "user_exception", "message": "boom"}, "logs": [
        {"seq": 1, "stream": "stderr", "text": "Traceback (most recent call last): ..."}
    ]});
    let (status, dispatch) = app.post(&reports, &node, &report).await;
    assert_eq!(status, StatusCode::OK, "{dispatch}");
    assert_eq!(dispatch["state"], "failed");
    let (_, page) = app.get(&format!("/v1/dispatches/{id}/logs"), &app.user_token()).await;
    let entries = page["entries"].as_array().unwrap();
    assert_eq!(entries[0]["text"], "Traceback ");
    assert_eq!(entries[1]["stream"], "system");
    assert_eq!(page["truncated"], true);
}

#[tokio::test]
async fn a_report_with_a_bad_log_entry_is_refused_naming_the_field_and_changes_nothing() {
    let app = spawn_app().await;
    let (id, node) = app.placed_dispatch().await;
    let reports = format!("/v1/dispatches/{id}/reports");
    app.post(&reports, &node, &json!({"kind": "started"})).await;
    let report = json!({"kind": "succeeded", "logs": [{"seq": 0, "stream": "stdout", "text": "x"}]});
    let (status, error) = app.post(&reports, &node, &report).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(error["field"], "logs.seq");
    let (_, dispatch) = app.get(&format!("/v1/dispatches/{id}"), &app.user_token()).await;
    assert_eq!(dispatch["state"], "running");
}

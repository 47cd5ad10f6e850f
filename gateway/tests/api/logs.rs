//! Call logs: idempotent appends, bounded storage, offsets.

use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{fresh_database, spawn_app, spawn_app_with, test_settings};

#[tokio::test]
async fn log_batches_are_stored_in_order_and_a_resent_batch_is_ignored() {
    let app = spawn_app().await;
    let id = app.create(&app.user_token(), json!({})).await["id"].as_str().unwrap().to_owned();
    let batch = json!({"entries": [
        {"seq": 1, "stream": "stdout", "text": "one\n"},
        {"seq": 2, "stream": "stderr", "text": "two\n"}
    ]});
    for _ in 0..2 {
        let (status, _) = app.post(&format!("/v1/dispatches/{id}/logs"), &app.node_token(), &batch).await;
        assert_eq!(status, StatusCode::NO_CONTENT);
    }
    let (_, page) = app.get(&format!("/v1/dispatches/{id}/logs"), &app.user_token()).await;
    let texts: Vec<_> = page["entries"].as_array().unwrap().iter().map(|e| e["text"].clone()).collect();
    assert_eq!(texts, [json!("one\n"), json!("two\n")]);
    assert_eq!(page["next_offset"], 2);
    assert_eq!(page["complete"], false, "a queued dispatch's log is not complete");
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
    let id = app.create(&app.user_token(), json!({})).await["id"].as_str().unwrap().to_owned();
    let batch = json!({"entries": [
        {"seq": 1, "stream": "stdout", "text": "123456"},
        {"seq": 2, "stream": "stdout", "text": "789abcdef"},
        {"seq": 3, "stream": "stdout", "text": "never stored"}
    ]});
    app.post(&format!("/v1/dispatches/{id}/logs"), &app.node_token(), &batch).await;
    app.post(
        &format!("/v1/dispatches/{id}/logs"),
        &app.node_token(),
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

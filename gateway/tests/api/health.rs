//! Liveness, readiness, metrics and request ids.

use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::spawn_app;

#[tokio::test]
async fn healthz_and_readyz_answer_without_a_token() {
    let app = spawn_app().await;
    for path in ["/healthz", "/readyz"] {
        let (status, body) = app.call(reqwest::Method::GET, path, None, None).await;
        assert_eq!(status, StatusCode::OK, "{path}");
        assert_eq!(body, json!({"status": "ok"}));
    }
}

#[tokio::test]
async fn readyz_reports_503_when_the_database_is_gone() {
    let app = spawn_app().await;
    let name = app.database_url.rsplit('/').next().unwrap().to_owned();
    let admin = sqlx::PgPool::connect(&app.database_url.replace(&name, "postgres")).await.unwrap();
    app.pool.close().await;
    sqlx::raw_sql(&format!("drop database {name} with (force)")).execute(&admin).await.unwrap();
    let (status, body) = app.call(reqwest::Method::GET, "/readyz", None, None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["code"], "unavailable");
    let message = body["message"].as_str().unwrap();
    assert!(!message.contains(&name) && !message.contains("postgres"), "internals leaked: {message}");
}

#[tokio::test]
async fn metrics_show_dispatches_by_state_and_request_latency() {
    let app = spawn_app().await;
    let token = app.user_token();
    let id = app.create(&token, json!({})).await["id"].as_str().unwrap().to_owned();
    app.create(&token, json!({})).await;
    app.post(&format!("/v1/dispatches/{id}/cancel"), &token, &json!({})).await;
    let text = app.client.get(format!("{}/metrics", app.address)).send().await.unwrap().text().await.unwrap();
    assert!(text.contains(r#"rh_dispatches{state="queued"} 1"#), "{text}");
    assert!(text.contains(r#"rh_dispatches{state="cancelled"} 1"#), "{text}");
    assert!(
        text.contains(r#"rh_http_request_duration_seconds_count{method="POST",route="/v1/dispatches",status="201"} 2"#),
        "{text}"
    );
}

#[tokio::test]
async fn every_response_carries_a_request_id_and_errors_repeat_it() {
    let app = spawn_app().await;
    let ok = app.client.get(format!("{}/healthz", app.address)).send().await.unwrap();
    assert!(ok.headers().contains_key("x-request-id"));
    let given = app
        .client
        .get(format!("{}/v1/dispatches", app.address))
        .header("x-request-id", "trace-me")
        .send()
        .await
        .unwrap();
    assert_eq!(given.headers()["x-request-id"], "trace-me");
    let body: serde_json::Value = given.json().await.unwrap();
    assert_eq!(body["request_id"], "trace-me");
}

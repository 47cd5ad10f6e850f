//! Bad input gets a precise 4xx and stores nothing.

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::spawn_app;

async fn post_raw(
    app: &crate::helpers::TestApp,
    body: impl Into<reqwest::Body>,
    content_type: Option<&str>,
) -> (StatusCode, Value) {
    let mut request =
        app.client.post(format!("{}/v1/dispatches", app.address)).bearer_auth(app.user_token()).body(body);
    if let Some(content_type) = content_type {
        request = request.header("content-type", content_type);
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    (status, response.json().await.unwrap())
}

#[tokio::test]
async fn malformed_json_gets_400_and_stores_nothing() {
    let app = spawn_app().await;
    let (status, error) = post_raw(&app, r#"{"function": "m:f", "cluster": "#, Some("application/json")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(error["code"], "malformed_json");
    assert!(error["message"].as_str().unwrap().contains("not valid JSON"), "{error}");
    assert!(error["request_id"].as_str().is_some_and(|id| !id.is_empty()));
    assert_eq!(app.count("dispatch").await, 0);
}

#[tokio::test]
async fn an_unknown_field_gets_422_naming_it() {
    let app = spawn_app().await;
    let (status, error) =
        app.post("/v1/dispatches", &app.user_token(), &json!({"function": "m:f", "clster": "c"})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(error["field"], "clster");
    assert!(error["message"].as_str().unwrap().contains("unknown field `clster`"), "{error}");
    assert_eq!(app.count("dispatch").await, 0);
}

#[tokio::test]
async fn invalid_values_get_422_naming_the_field() {
    let app = spawn_app().await;
    let token = app.user_token();
    let cases = [
        (json!({"cluster": "c"}), "function"),
        (json!({"function": "m:f"}), "cluster"),
        (json!({"function": "not a reference", "cluster": "c"}), "function"),
        (json!({"function": "m:f", "cluster": ""}), "cluster"),
        (json!({"function": "m:f", "cluster": 7}), "cluster"),
        (json!({"function": "m:f", "cluster": "c", "args": "x"}), "args"),
        (json!({"function": "m:f", "cluster": "c", "kwargs": [1]}), "kwargs"),
        (json!({"function": "m:f", "cluster": "c", "labels": {"k": 1}}), "labels.k"),
        (json!({"function": "m:f", "cluster": "c", "timeout_s": -1}), "timeout_s"),
        (json!({"function": "m:f", "cluster": "c", "timeout_s": 0}), "timeout_s"),
        (json!({"function": "m:f", "cluster": "c", "idempotency_key": ""}), "idempotency_key"),
    ];
    for (body, field) in cases {
        let (status, error) = app.post("/v1/dispatches", &token, &body).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}: {error}");
        assert_eq!(error["field"], field, "{body}: {error}");
        assert!(error["message"].as_str().unwrap().contains(field.split('.').next().unwrap()), "{error}");
    }
    assert_eq!(app.count("dispatch").await, 0);
}

#[tokio::test]
async fn an_oversized_body_gets_413_and_stores_nothing() {
    let app = spawn_app().await;
    let big = json!({"function": "m:f", "cluster": "c", "args": ["x".repeat(2 * 1024 * 1024)]});
    let (status, error) = post_raw(&app, big.to_string(), Some("application/json")).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(error["code"], "body_too_large");
    assert_eq!(app.count("dispatch").await, 0);
}

#[tokio::test]
async fn a_body_without_a_json_content_type_gets_415() {
    let app = spawn_app().await;
    let (status, error) = post_raw(&app, r#"{"function": "m:f", "cluster": "c"}"#, None).await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert!(error["message"].as_str().unwrap().contains("application/json"));
    assert_eq!(app.count("dispatch").await, 0);
}

#[tokio::test]
async fn unknown_routes_methods_and_malformed_ids_get_the_standard_error_body() {
    let app = spawn_app().await;
    let token = app.user_token();
    let (status, error) = app.get("/v1/nothing-here", &token).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(error["code"], "not_found");
    let (status, error) = app.call(reqwest::Method::DELETE, "/v1/dispatches", Some(&token), None).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(error["code"], "method_not_allowed");
    let (status, error) = app.get("/v1/dispatches/not-a-uuid", &token).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(error["field"], "id");
}

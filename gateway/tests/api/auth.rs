//! Bearer tokens: missing, forged, expired, `alg: none`, revoked, wrong scope,
//! and project isolation.

use std::time::Duration;

use base64::Engine;
use gateway::auth::{Claims, Keys, Scope};
use gateway::config::AuthSettings;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::{Method, StatusCode};
use secrecy::SecretString;
use serde_json::{json, Value};

use crate::helpers::{spawn_app, TestApp, SECRET};

fn claims(exp_offset: i64) -> Claims {
    let now = chrono::Utc::now().timestamp();
    Claims {
        sub: "mallory".into(),
        project: "default".into(),
        scopes: vec!["admin".into()],
        exp: now + exp_offset,
        iat: now,
        nbf: None,
        jti: uuid::Uuid::new_v4().to_string(),
        node: None,
    }
}

async fn assert_refused(app: &TestApp, token: &str, expected: &str) {
    let response = app.client.get(format!("{}/v1/dispatches", app.address)).bearer_auth(token).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{expected}");
    let challenge = response.headers().get("www-authenticate").expect("WWW-Authenticate").to_str().unwrap().to_owned();
    assert!(challenge.starts_with("Bearer "), "{challenge}");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["code"], "unauthenticated");
    assert!(body["message"].as_str().unwrap().contains(expected), "{body}");
}

#[tokio::test]
async fn a_request_without_a_token_gets_401_with_a_challenge() {
    let app = spawn_app().await;
    let response = app.client.get(format!("{}/v1/dispatches", app.address)).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert!(response.headers().contains_key("www-authenticate"));
    let body: Value = response.json().await.unwrap();
    assert!(body["message"].as_str().unwrap().contains("Authorization: Bearer"));
    assert_refused(&app, "not-a-jwt", "malformed").await;
}

#[tokio::test]
async fn a_token_signed_with_another_secret_is_refused() {
    let app = spawn_app().await;
    let other = Keys::from_settings(&AuthSettings {
        hs256_secret: Some(SecretString::from("another-secret-another-secret-another")),
        ..AuthSettings::default()
    })
    .unwrap();
    let (forged, _) = other.mint("mallory", "default", &[Scope::Admin], Duration::from_secs(60)).unwrap();
    assert_refused(&app, &forged, "signature is invalid").await;
}

#[tokio::test]
async fn a_token_not_valid_yet_is_refused() {
    let app = spawn_app().await;
    let mut early = claims(600);
    early.nbf = Some(early.iat + 300);
    let token =
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &early, &EncodingKey::from_secret(SECRET.as_bytes()))
            .unwrap();
    assert_refused(&app, &token, "not valid yet").await;
}

#[tokio::test]
async fn an_expired_token_is_refused() {
    let app = spawn_app().await;
    let token =
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims(-5), &EncodingKey::from_secret(SECRET.as_bytes()))
            .unwrap();
    assert_refused(&app, &token, "expired").await;
}

#[tokio::test]
async fn an_unsigned_alg_none_token_is_refused() {
    let app = spawn_app().await;
    let encode = |v: Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    let header = encode(json!({"alg": "none", "typ": "JWT"}));
    let body = encode(serde_json::to_value(claims(600)).unwrap());
    assert_refused(&app, &format!("{header}.{body}."), "accepts HS256").await;
}

#[tokio::test]
async fn a_token_signed_with_another_algorithm_is_refused() {
    let app = spawn_app().await;
    let token = jsonwebtoken::encode(
        &Header::new(Algorithm::HS512),
        &claims(600),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    assert_refused(&app, &token, "accepts HS256").await;
}

#[tokio::test]
async fn a_revoked_token_is_refused_from_then_on() {
    let app = spawn_app().await;
    let (token, claims) = app.keys.mint("ada", "default", &[Scope::Admin], Duration::from_secs(600)).unwrap();
    let (status, _) = app.get("/v1/dispatches", &token).await;
    assert_eq!(status, StatusCode::OK);
    gateway::db::DataStore::from_pool(app.pool.clone()).token_revoke(&claims.jti, Some("leaked")).await.unwrap();
    // The revocation reaches the gateway through LISTEN/NOTIFY; wait for it to land.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (status, _) = app.get("/v1/dispatches", &token).await;
        if status == StatusCode::UNAUTHORIZED {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "revocation never took effect");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_refused(&app, &token, "revoked").await;
}

#[tokio::test]
async fn a_token_without_the_needed_scope_gets_403() {
    let app = spawn_app().await;
    let reader = app.token("default", &[Scope::DispatchRead]);
    let writer = app.token("default", &[Scope::DispatchWrite]);
    let (status, error) = app.post("/v1/dispatches", &reader, &json!({"function": "m:f", "cluster": "c"})).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(error["code"], "missing_scope");
    assert!(error["message"].as_str().unwrap().contains("dispatch:write"));
    let (status, error) = app.get("/v1/dispatches", &writer).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(error["message"].as_str().unwrap().contains("dispatch:read"));
    let id = app.create(&writer, json!({})).await["id"].as_str().unwrap().to_owned();
    let (status, _) = app.post(&format!("/v1/dispatches/{id}/reports"), &writer, &json!({"kind": "started"})).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = app.post("/v1/dispatches", &app.node_token(), &json!({"function": "m:f", "cluster": "c"})).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(app.count("dispatch").await, 1);
}

#[tokio::test]
async fn another_projects_dispatch_is_not_found_on_every_route() {
    let app = spawn_app().await;
    let owner = app.token("alpha", &[Scope::Admin]);
    let stranger = app.token("beta", &[Scope::Admin]);
    let id = app.create(&owner, json!({})).await["id"].as_str().unwrap().to_owned();
    let unknown = uuid::Uuid::now_v7();
    for (method, path, body) in [
        (Method::GET, format!("/v1/dispatches/{id}"), None),
        (Method::GET, format!("/v1/dispatches/{id}/events"), None),
        (Method::GET, format!("/v1/dispatches/{id}/wait?timeout_s=0"), None),
        (Method::POST, format!("/v1/dispatches/{id}/cancel"), Some(json!({}))),
        (Method::POST, format!("/v1/dispatches/{id}/reports"), Some(json!({"kind": "started"}))),
    ] {
        let (status, error) = app.call(method.clone(), &path, Some(&stranger), body.as_ref()).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
        // Indistinguishable from a dispatch that does not exist at all.
        let (_, missing) =
            app.call(method, &path.replace(&id, &unknown.to_string()), Some(&stranger), body.as_ref()).await;
        assert_eq!(
            error["message"].as_str().unwrap().replace(&id, ""),
            missing["message"].as_str().unwrap().replace(&unknown.to_string(), "")
        );
    }
    let (_, page) = app.get("/v1/dispatches", &stranger).await;
    assert_eq!(page["items"], json!([]));
    let (_, dispatch) = app.get(&format!("/v1/dispatches/{id}"), &owner).await;
    assert_eq!(dispatch["state"], "queued", "the stranger's cancel and report must not have landed");
}

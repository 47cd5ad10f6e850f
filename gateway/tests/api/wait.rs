//! The long-poll wait.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{spawn_app, spawn_app_with, test_settings, TestApp};

/// Waits until `app` has parked long-polls for `count` dispatches (its
/// `rh_dispatches_watched` gauge), so what a test measures starts with them parked.
async fn parked(app: &TestApp, count: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = app.client.get(format!("{}/metrics", app.address)).send().await.unwrap().text().await.unwrap();
        let watched = text
            .lines()
            .find_map(|l| l.strip_prefix("rh_dispatches_watched "))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0);
        if watched >= count {
            return;
        }
        assert!(Instant::now() < deadline, "only {watched} of {count} dispatches have parked waiters");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The id of a dispatch `app` lists besides those in `known`, once one is recorded.
async fn recorded_besides(app: &TestApp, token: &str, known: &[&str]) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, page) = app.get("/v1/dispatches", token).await;
        let mut ids = page["items"].as_array().into_iter().flatten().filter_map(|d| d["id"].as_str());
        if let Some(id) = ids.find(|id| !known.contains(id)) {
            return id.to_owned();
        }
        assert!(Instant::now() < deadline, "no dispatch besides {known:?} was recorded");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_parked_wait_returns_when_its_dispatch_is_cancelled() {
    let app = spawn_app().await;
    let token = app.user_token();
    let id = app.create(&token, json!({})).await["id"].as_str().unwrap().to_owned();
    let waiter = {
        let (client, url, token) =
            (app.client.clone(), format!("{}/v1/dispatches/{id}/wait?timeout_s=30", app.address), token.clone());
        tokio::spawn(async move {
            let response = client.get(url).bearer_auth(token).send().await.unwrap();
            (Instant::now(), response.json::<serde_json::Value>().await.unwrap())
        })
    };
    parked(&app, 1).await;
    let cancelled_at = Instant::now();
    let (status, _) = app.post(&format!("/v1/dispatches/{id}/cancel"), &token, &json!({})).await;
    assert_eq!(status, StatusCode::OK);
    let (returned_at, dispatch) = waiter.await.unwrap();
    assert_eq!(dispatch["state"], "cancelled");
    // Woken, not timed out (30 s); how fast is measured in `make bench`.
    let latency = returned_at.duration_since(cancelled_at);
    assert!(latency < Duration::from_secs(10), "wait returned {latency:?} after the cancel");
}

#[tokio::test]
async fn a_wait_that_times_out_returns_the_current_state() {
    let app = spawn_app().await;
    let token = app.user_token();
    let id = app.create(&token, json!({})).await["id"].as_str().unwrap().to_owned();
    let started = Instant::now();
    let (status, dispatch) = app.get(&format!("/v1/dispatches/{id}/wait?timeout_s=1"), &token).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(dispatch["state"], "queued");
    assert!(started.elapsed() >= Duration::from_secs(1));
}

#[tokio::test]
async fn a_wait_on_a_finished_dispatch_returns_at_once() {
    let app = spawn_app().await;
    let token = app.user_token();
    let id = app.create(&token, json!({})).await["id"].as_str().unwrap().to_owned();
    app.post(&format!("/v1/dispatches/{id}/cancel"), &token, &json!({})).await;
    let started = Instant::now();
    let (_, dispatch) = app.get(&format!("/v1/dispatches/{id}/wait?timeout_s=60"), &token).await;
    assert_eq!(dispatch["state"], "cancelled");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn a_wait_longer_than_allowed_is_refused_naming_the_parameter() {
    let app = spawn_app().await;
    let token = app.user_token();
    let id = app.create(&token, json!({})).await["id"].as_str().unwrap().to_owned();
    let (status, error) = app.get(&format!("/v1/dispatches/{id}/wait?timeout_s=301"), &token).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(error["field"], "timeout_s");
}

#[tokio::test]
async fn a_wait_wakes_for_a_change_made_through_another_gateway() {
    let first = spawn_app().await;
    let second = spawn_app_with(test_settings(&first.database_url)).await;
    let token = first.user_token();
    let id = first.create(&token, json!({})).await["id"].as_str().unwrap().to_owned();
    let waiter = {
        let (client, url, token) =
            (first.client.clone(), format!("{}/v1/dispatches/{id}/wait?timeout_s=30", first.address), token.clone());
        tokio::spawn(async move {
            client.get(url).bearer_auth(token).send().await.unwrap().json::<serde_json::Value>().await.unwrap()
        })
    };
    parked(&first, 1).await;
    let started = Instant::now();
    second.post(&format!("/v1/dispatches/{id}/cancel"), &token, &json!({"reason": "elsewhere"})).await;
    let dispatch = waiter.await.unwrap();
    assert_eq!(dispatch["state"], "cancelled");
    assert!(started.elapsed() < Duration::from_secs(10), "woke after {:?}, not by the hint", started.elapsed());
}

#[tokio::test]
async fn a_create_with_wait_s_answers_once_the_dispatch_ends_even_when_it_ends_through_another_gateway() {
    let first = spawn_app().await;
    let second = spawn_app_with(test_settings(&first.database_url)).await;
    let token = first.user_token();
    let body = json!({"function": "pkg.mod:fn", "cluster": "local", "idempotency_key": "one-request"});
    let creator = {
        let (client, url, token, body) =
            (first.client.clone(), format!("{}/v1/dispatches?wait_s=30", first.address), token.clone(), body.clone());
        tokio::spawn(async move {
            let response = client.post(url).bearer_auth(token).json(&body).send().await.unwrap();
            (response.status(), response.json::<serde_json::Value>().await.unwrap())
        })
    };
    // The create is recorded (queued: no node) and its answer held.
    let id = recorded_besides(&second, &token, &[]).await;
    assert!(!creator.is_finished(), "the create answered before its dispatch ended");
    second.post(&format!("/v1/dispatches/{id}/cancel"), &token, &json!({"reason": "elsewhere"})).await;
    let (status, dispatch) = creator.await.unwrap();
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!((dispatch["id"].as_str().unwrap(), dispatch["state"].as_str().unwrap()), (id.as_str(), "cancelled"));

    // The same create again (same key and body): the dispatch it made, ended, at once.
    let response = first
        .client
        .post(format!("{}/v1/dispatches?wait_s=30", first.address))
        .bearer_auth(&token)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let again: serde_json::Value = response.json().await.unwrap();
    assert_eq!((again["id"].as_str().unwrap(), again["state"].as_str().unwrap()), (id.as_str(), "cancelled"));
}

#[tokio::test]
async fn a_create_whose_wait_s_runs_out_answers_with_the_dispatch_as_it_stands() {
    let app = spawn_app().await;
    let token = app.user_token();
    let (status, dispatch) =
        app.post("/v1/dispatches?wait_s=1", &token, &json!({"function": "pkg.mod:fn", "cluster": "local"})).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(dispatch["state"], "queued");
}

#[tokio::test]
async fn a_create_waiting_longer_than_allowed_is_refused_naming_the_parameter_and_records_nothing() {
    let app = spawn_app().await;
    let token = app.user_token();
    let (status, error) =
        app.post("/v1/dispatches?wait_s=301", &token, &json!({"function": "pkg.mod:fn", "cluster": "local"})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{error}");
    assert_eq!(error["field"], "wait_s");
    assert!(error["message"].as_str().unwrap().contains("300"), "{error}");
    assert_eq!(app.count("dispatch").await, 0);
}

#[tokio::test]
async fn the_sdks_dispatch_run_answers_once_the_dispatch_ends_or_as_it_stands_at_its_timeout() {
    let app = spawn_app().await;
    let token = app.user_token();
    let sdk = runhouse_gateway::Client::new(&app.address, &token).unwrap();
    let request: wire::CreateDispatch =
        serde_json::from_value(json!({"function": "pkg.mod:fn", "cluster": "local"})).unwrap();
    // Queued (no node): at its timeout it is answered as it stands.
    let queued = sdk.dispatch_run(request.clone(), Some(Duration::from_secs(1))).await.unwrap();
    assert_eq!(queued.state, wire::DispatchState::Queued);
    // Ended while the create waits: answered with its end, by that one request.
    let run = {
        let sdk = sdk.clone();
        tokio::spawn(async move { sdk.dispatch_run(request, Some(Duration::from_secs(60))).await.unwrap() })
    };
    parked(&app, 1).await;
    let id = recorded_besides(&app, &token, &[&queued.id.to_string()]).await;
    app.post(&format!("/v1/dispatches/{id}/cancel"), &token, &json!({})).await;
    let ended = run.await.unwrap();
    assert_eq!((ended.id.to_string(), ended.state), (id, wire::DispatchState::Cancelled));
    assert!(ended.idempotency_key.as_deref().is_some_and(|k| k.starts_with("rh-")), "{:?}", ended.idempotency_key);
}

#[tokio::test]
async fn a_thousand_concurrent_waiters_all_wake_when_their_dispatches_finish() {
    let app = spawn_app().await;
    let token = app.user_token();
    let mut ids = Vec::new();
    for _ in 0..20 {
        ids.push(app.create(&token, json!({})).await["id"].as_str().unwrap().to_owned());
    }
    let client = reqwest::Client::builder().pool_max_idle_per_host(1000).build().unwrap();
    let waiters: Vec<_> = (0..1000)
        .map(|i| {
            let (client, url, token) = (
                client.clone(),
                format!("{}/v1/dispatches/{}/wait?timeout_s=60", app.address, ids[i % ids.len()]),
                token.clone(),
            );
            tokio::spawn(async move {
                client.get(url).bearer_auth(token).send().await.unwrap().json::<serde_json::Value>().await.unwrap()
            })
        })
        .collect();
    parked(&app, ids.len() as u64).await;
    let started = Instant::now();
    for id in &ids {
        app.post(&format!("/v1/dispatches/{id}/cancel"), &token, &json!({})).await;
    }
    for waiter in waiters {
        assert_eq!(waiter.await.unwrap()["state"], "cancelled");
    }
    assert!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());
}

/// Established connections from this machine to the gateway at `address`
/// (the client ends, read from /proc/net/tcp).
fn connections_to(address: &str) -> usize {
    let port = address.rsplit(':').next().unwrap().parse::<u16>().unwrap();
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    table
        .lines()
        .skip(1)
        .filter(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let remote_port = fields[2].rsplit(':').next().and_then(|p| u16::from_str_radix(p, 16).ok());
            remote_port == Some(port) && fields[3] == "01"
        })
        .count()
}

#[tokio::test]
async fn an_sdk_clients_waits_park_as_streams_of_one_http2_connection() {
    let app = spawn_app().await;
    let token = app.user_token();
    // More than the 200 streams a connection hyper allows by default.
    let mut ids = Vec::new();
    for _ in 0..300 {
        ids.push(app.create(&token, json!({})).await["id"].as_str().unwrap().to_owned());
    }
    let sdk = runhouse_gateway::Client::new(&app.address, &token).unwrap();
    let waiters: Vec<_> = ids
        .iter()
        .map(|id| {
            let (sdk, id) = (sdk.clone(), id.parse().unwrap());
            tokio::spawn(async move { sdk.dispatch_wait_once(id, 60).await.unwrap() })
        })
        .collect();
    parked(&app, ids.len() as u64).await;
    // 300 parked requests; the SDK's one connection and the test's own.
    let connections = connections_to(&app.address);
    assert!(connections <= 3, "{connections} connections hold 300 parked waits");
    for id in &ids {
        app.post(&format!("/v1/dispatches/{id}/cancel"), &token, &json!({})).await;
    }
    for waiter in waiters {
        assert_eq!(waiter.await.unwrap().state, wire::DispatchState::Cancelled);
    }
}

#[tokio::test]
async fn the_sdk_waits_over_http1_through_a_proxy_that_refuses_http2() {
    let app = spawn_app().await;
    let token = app.user_token();
    let id = app.create(&token, json!({})).await["id"].as_str().unwrap().to_owned();
    app.post(&format!("/v1/dispatches/{id}/cancel"), &token, &json!({})).await;
    // A forwarding proxy that speaks only HTTP/1.1 (hyper's HTTP/1 server),
    // recording the version of each request it forwards.
    let versions = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let proxy = {
        let (upstream, versions, client) = (app.address.clone(), versions.clone(), app.client.clone());
        axum::Router::new().fallback(move |request: axum::extract::Request| {
            let (upstream, versions, client) = (upstream.clone(), versions.clone(), client.clone());
            async move {
                versions.lock().unwrap().push(request.version());
                let answer = client
                    .get(format!("{upstream}{}", request.uri().path_and_query().unwrap()))
                    .header("authorization", request.headers()["authorization"].clone())
                    .send()
                    .await
                    .unwrap();
                (answer.status(), answer.bytes().await.unwrap())
            }
        })
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy_url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let service = hyper_util::service::TowerToHyperService::new(proxy.clone());
            tokio::spawn(
                hyper::server::conn::http1::Builder::new().serve_connection(hyper_util::rt::TokioIo::new(tcp), service),
            );
        }
    });
    let sdk = runhouse_gateway::Client::new(&proxy_url, &token).unwrap();
    for _ in 0..2 {
        let dispatch = sdk.dispatch_wait_once(id.parse().unwrap(), 5).await.unwrap();
        assert_eq!(dispatch.state, wire::DispatchState::Cancelled);
    }
    assert_eq!(*versions.lock().unwrap(), vec![axum::http::Version::HTTP_11; 2]);
}

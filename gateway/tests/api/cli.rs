//! The `rh-gateway` binary: token minting and revocation, and the one-command
//! local stack.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{spawn_app, SECRET};

const BIN: &str = env!("CARGO_BIN_EXE_rh-gateway");

#[tokio::test]
async fn token_create_mints_a_token_the_gateway_accepts_and_revoke_retires_it() {
    let app = spawn_app().await;
    let output = Command::new(BIN)
        .args(["token", "create", "--project", "default", "--scopes", "dispatch:read,dispatch:write", "--ttl", "1h"])
        .env("RH_GATEWAY_AUTH__HS256_SECRET", SECRET)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let token = String::from_utf8(output.stdout).unwrap().trim().to_owned();
    let (status, _) = app.post("/v1/dispatches", &token, &json!({"function": "m:f", "cluster": "c"})).await;
    assert_eq!(status, StatusCode::CREATED);

    let jti = app.keys.verify(&token).unwrap().jti;
    let output = Command::new(BIN)
        .args(["token", "revoke", &jti, "--reason", "rotated"])
        .env("DATABASE_URL", &app.database_url)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let deadline = Instant::now() + Duration::from_secs(5);
    while app.get("/v1/dispatches", &token).await.0 != StatusCode::UNAUTHORIZED {
        assert!(Instant::now() < deadline, "the revoked token is still accepted");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[test]
fn token_create_refuses_an_unknown_scope_by_name() {
    let output = Command::new(BIN)
        .args(["token", "create", "--project", "p", "--scopes", "dispatch:delete"])
        .env("RH_GATEWAY_AUTH__HS256_SECRET", SECRET)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("unknown scope `dispatch:delete`"), "{stderr}");
}

#[test]
fn dev_without_postgres_binaries_prints_one_line_naming_the_package() {
    let dir = tempdir();
    let output = Command::new(BIN)
        .args(["dev", "--listen", "127.0.0.1:0"])
        .current_dir(&dir)
        .env("RH_PG_BINDIR", "/nonexistent")
        .env_remove("DATABASE_URL")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    let lines: Vec<_> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(lines[0].contains("postgresql-15"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn dev_runs_the_local_stack_stops_cleanly_and_keeps_its_data() {
    let dir = tempdir();
    let port = free_port();
    let address = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();

    let mut dev = start_dev(&dir, port);
    wait_ready(&client, &address).await;
    let token = std::fs::read_to_string(dir.join(".rh/admin-token")).unwrap().trim().to_owned();
    let created: serde_json::Value = client
        .post(format!("{address}/v1/dispatches"))
        .bearer_auth(&token)
        .json(&json!({"function": "m:f", "cluster": "local"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(client.get(format!("{address}/docs/")).send().await.unwrap().status(), StatusCode::OK);

    interrupt(&mut dev);
    assert!(dev.wait().unwrap().success());
    assert!(!dir.join(".rh/pg/postmaster.pid").exists(), "Postgres is still running after Ctrl-C");

    let mut dev = start_dev(&dir, port);
    wait_ready(&client, &address).await;
    let token = std::fs::read_to_string(dir.join(".rh/admin-token")).unwrap().trim().to_owned();
    let again = client
        .get(format!("{address}/v1/dispatches/{}", created["id"].as_str().unwrap()))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), StatusCode::OK, "the dispatch did not survive a restart");
    interrupt(&mut dev);
    assert!(dev.wait().unwrap().success());
    let _ = std::fs::remove_dir_all(&dir);
}

fn start_dev(dir: &std::path::Path, port: u16) -> std::process::Child {
    Command::new(BIN)
        .args(["dev", "--listen", &format!("127.0.0.1:{port}")])
        .current_dir(dir)
        .env_remove("DATABASE_URL")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

async fn wait_ready(client: &reqwest::Client, address: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(response) = client.get(format!("{address}/readyz")).send().await {
            if response.status() == StatusCode::OK {
                return;
            }
        }
        assert!(Instant::now() < deadline, "the dev stack did not come up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn interrupt(child: &mut std::process::Child) {
    let status = Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn tempdir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("rh-cli-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

//! `spawn_app()`: a gateway on port 0 over a fresh database.
//!
//! One PostgreSQL server is started per test binary (or `RH_TEST_DATABASE_URL`
//! names an existing one); a template database is migrated once, and each test
//! gets its own copy of it.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use gateway::auth::{Keys, NodeBinding, Scope};
use gateway::config::Settings;
use gateway::embedded_pg::shared_server;
use gateway::startup::Application;
use reqwest::{Method, StatusCode};
use secrecy::SecretString;
use serde_json::Value;
use sqlx::{Connection, PgPool};
use tokio::sync::oneshot;
use uuid::Uuid;

pub const SECRET: &str = "test-secret-test-secret-test-secret!";

struct Server {
    /// A connection URL with `{db}` as the database name.
    url_pattern: &'static str,
    template: String,
}

static SERVER: OnceLock<Server> = OnceLock::new();

/// The shared test server, with a migrated template database.
fn server() -> &'static Server {
    SERVER.get_or_init(|| {
        let url_pattern = shared_server(false);
        let template = format!("rh_template_{}", std::process::id());
        let admin_url = url_pattern.replace("{db}", "postgres");
        let template_url = url_pattern.replace("{db}", &template);
        // A private runtime: each test has its own, and this one must finish before they use the template.
        std::thread::spawn({
            let template = template.clone();
            move || {
                tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
                    let mut admin = sqlx::PgConnection::connect(&admin_url).await.expect("connect to test postgres");
                    sqlx::raw_sql(&format!("drop database if exists {template}")).execute(&mut admin).await.unwrap();
                    sqlx::raw_sql(&format!("create database {template}")).execute(&mut admin).await.unwrap();
                    let pool = PgPool::connect(&template_url).await.unwrap();
                    gateway::db::MIGRATOR.run(&pool).await.expect("migrate template");
                    sqlx::raw_sql(INDEX_IN_STEP).execute(&pool).await.expect("install the dispatch_index check");
                    pool.close().await;
                })
            }
        })
        .join()
        .expect("template setup");
        Server { url_pattern, template }
    })
}

/// The check that every dispatch's `dispatch_index` row stays in step with it.
const INDEX_IN_STEP: &str = include_str!("../fixtures/dispatch_index_in_step.sql");

/// A fresh database copied from the migrated template; returns its URL.
pub async fn fresh_database() -> String {
    let server = server();
    let name = format!("t_{}", Uuid::new_v4().simple());
    let mut admin = sqlx::PgConnection::connect(&server.url_pattern.replace("{db}", "postgres")).await.unwrap();
    sqlx::raw_sql(&format!("create database {name} template {}", server.template)).execute(&mut admin).await.unwrap();
    server.url_pattern.replace("{db}", &name)
}

/// Settings for a test gateway on `database_url`.
pub fn test_settings(database_url: &str) -> Settings {
    let mut settings = Settings { listen: "127.0.0.1:0".parse().unwrap(), ..Settings::default() };
    settings.database.url = SecretString::from(database_url.to_owned());
    settings.auth.hs256_secret = Some(SecretString::from(SECRET));
    settings
}

/// A running gateway and what a test needs to talk to it.
pub struct TestApp {
    pub address: String,
    pub client: reqwest::Client,
    pub pool: PgPool,
    pub keys: Keys,
    pub database_url: String,
    _stop: oneshot::Sender<()>,
}

/// Starts a gateway over a fresh database.
pub async fn spawn_app() -> TestApp {
    let database_url = fresh_database().await;
    spawn_app_with(test_settings(&database_url)).await
}

/// Starts a gateway with the given settings.
pub async fn spawn_app_with(settings: Settings) -> TestApp {
    if std::env::var_os("TEST_LOG").is_some() {
        gateway::telemetry::init(&settings.log);
    }
    let app = Application::build(&settings).await.expect("build the gateway");
    let address = format!("http://{}", app.local_addr());
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(app.run_until(async move {
        let _ = stopped.await;
    }));
    let database_url = secrecy::ExposeSecret::expose_secret(&settings.database.url).to_owned();
    TestApp {
        address,
        client: reqwest::Client::builder().pool_max_idle_per_host(64).build().unwrap(),
        pool: PgPool::connect(&database_url).await.unwrap(),
        keys: Keys::from_settings(&settings.auth).unwrap(),
        database_url,
        _stop: stop,
    }
}

impl TestApp {
    /// A token for `project` with `scopes`.
    pub fn token(&self, project: &str, scopes: &[Scope]) -> String {
        self.keys.mint("tester", project, scopes, Duration::from_secs(600)).unwrap().0
    }

    /// A token with read and write scopes on `default`.
    pub fn user_token(&self) -> String {
        self.token("default", &[Scope::DispatchRead, Scope::DispatchWrite])
    }

    /// The credential of node `local/node-1` of project `default`.
    pub fn node_token(&self) -> String {
        self.node_token_for("node-1")
    }

    /// The credential of node `local/<name>` of project `default`.
    pub fn node_token_for(&self, name: &str) -> String {
        let binding = NodeBinding { cluster: "local".into(), name: name.into() };
        self.keys.mint_node("default", &binding, Duration::from_secs(600), &Uuid::new_v4().to_string()).unwrap().0
    }

    /// An admin token of `default`.
    pub fn admin_token(&self) -> String {
        self.token("default", &[Scope::Admin])
    }

    /// Registers node `local/<name>` at a fake node API that accepts every
    /// call and does nothing (the end-to-end suite runs real nodes); returns
    /// its id and credential.
    pub async fn fake_node(&self, name: &str, max_concurrent: u32) -> (String, String) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = format!("http://{}", listener.local_addr().unwrap());
        let accept_all = axum::Router::new().fallback(|| async { StatusCode::ACCEPTED });
        tokio::spawn(async move { axum::serve(listener, accept_all).await });
        let token = self.node_token_for(name);
        let registration = serde_json::json!({
            "name": name, "cluster": "local", "address": address,
            "api_secret": "s".repeat(40), "max_concurrent": max_concurrent,
            "resources": {"cpus": 2, "memory_bytes": 1024}
        });
        let (status, body) = self.post("/v1/nodes", &token, &registration).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        (body["node_id"].as_str().unwrap().to_owned(), token)
    }

    /// A dispatch placed on a fake node (registered as `local/node-1` if
    /// needed); returns its id and that node's credential.
    pub async fn placed_dispatch(&self) -> (String, String) {
        let token = self.node_token();
        let (_, nodes) = self.get("/v1/nodes", &self.admin_token()).await;
        if !nodes["items"].as_array().is_some_and(|n| n.iter().any(|n| n["name"] == "node-1")) {
            self.fake_node("node-1", 64).await;
        }
        let dispatch = self.create(&self.user_token(), serde_json::json!({})).await;
        assert_eq!(dispatch["state"], "running", "{dispatch}");
        (dispatch["id"].as_str().unwrap().to_owned(), token)
    }

    /// Sends a request; returns the status and the JSON body (Null if none).
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> (StatusCode, Value) {
        let mut request = self.client.request(method, format!("{}{path}", self.address));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.expect("request sent");
        let status = response.status();
        let bytes = response.bytes().await.unwrap();
        (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }

    pub async fn get(&self, path: &str, token: &str) -> (StatusCode, Value) {
        self.call(Method::GET, path, Some(token), None).await
    }

    pub async fn post(&self, path: &str, token: &str, body: &Value) -> (StatusCode, Value) {
        self.call(Method::POST, path, Some(token), Some(body)).await
    }

    /// Creates a dispatch with `body` (merged over a valid default) and returns it.
    pub async fn create(&self, token: &str, extra: Value) -> Value {
        let mut body = serde_json::json!({"function": "pipeline.train:fit", "cluster": "local"});
        if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
            body.extend(extra.clone());
        }
        let (status, dispatch) = self.post("/v1/dispatches", token, &body).await;
        assert!(status.is_success(), "create failed: {status} {dispatch}");
        dispatch
    }

    /// Number of rows in `table`.
    pub async fn count(&self, table: &str) -> i64 {
        sqlx::query_scalar::<_, i64>(&format!("select count(*) from {table}")).fetch_one(&self.pool).await.unwrap()
    }
}

/// Polls `condition` every 50 ms until it holds; fails naming `what` after `timeout`.
pub async fn until<F, Fut>(what: &str, timeout: Duration, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !condition().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

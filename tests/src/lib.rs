//! A real local stack for end-to-end tests and benchmarks: Postgres started
//! from the machine's binaries, `rh-gateway serve` and `rh-node run` as real
//! processes, and helpers to talk to them over HTTP.

pub mod gce_fake;
pub mod simnodes;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use gateway::auth::{Keys, NodeBinding, Scope};
use gateway::config::AuthSettings;
use gateway::embedded_pg::shared_server;
use serde_json::{json, Value};
use sqlx::Connection;

pub const SECRET: &str = "e2e-secret-e2e-secret-e2e-secret-e2e!";

/// The workspace's target directory, where `rh-gateway` and `rh-node` are built.
pub fn bin_dir() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            // Build the binaries under test, so a test never runs stale ones;
            // unless `make test` says it built every target of this tree just
            // before (a second build from inside a test, in the test's
            // environment and with these packages' features alone, rebuilt
            // the cloud SDKs and the binaries as another variant: minutes of
            // a CI run).
            if std::env::var_os("RH_E2E_BUILT").is_none() {
                let profile = if cfg!(debug_assertions) { "debug" } else { "release" };
                let mut build = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
                build
                    .args(["build", "-q", "-p", "gateway", "-p", "node", "-p", "runhouse-gateway"])
                    .current_dir(workspace_root());
                if profile == "release" {
                    build.arg("--release");
                }
                let status = build.status().expect("run cargo build");
                assert!(status.success(), "building rh-gateway and rh-node failed");
            }
            let exe = std::env::current_exe().expect("current exe");
            // target/<profile>/deps/<test> or target/<profile>/<bin>
            let dir = exe.parent().expect("exe dir");
            let dir = if dir.ends_with("deps") { dir.parent().expect("profile dir") } else { dir };
            dir.to_path_buf()
        })
        .clone()
}

/// The repository root.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ has a parent").to_path_buf()
}

/// A fresh, empty database; returns its URL.
pub async fn fresh_database() -> anyhow::Result<String> {
    // Benchmarks measure durable commits; tests need not wait for the disk.
    let url_pattern = shared_server(std::env::var_os("RH_E2E_DURABLE").is_some());
    let name = format!("e2e_{}", uuid::Uuid::new_v4().simple());
    let mut admin = sqlx::PgConnection::connect(&url_pattern.replace("{db}", "postgres")).await?;
    sqlx::raw_sql(&format!("create database {name}")).execute(&mut admin).await?;
    Ok(url_pattern.replace("{db}", &name))
}

/// A child process that is killed when dropped.
pub struct Process(pub Child);

impl Process {
    /// The pid.
    pub fn pid(&self) -> u32 {
        self.0.id()
    }

    /// SIGKILL, as a crash would.
    pub fn kill_9(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ =
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.0.id() as i32), nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A gateway process, its database, and a client.
pub struct Stack {
    pub url: String,
    pub port: u16,
    pub database_url: String,
    pub keys: Keys,
    pub client: reqwest::Client,
    pub gateway: Option<Process>,
    pub work: PathBuf,
    env: Vec<(String, String)>,
}

impl Stack {
    /// Starts `rh-gateway serve` on a free port over a fresh database.
    pub async fn start() -> anyhow::Result<Stack> {
        Self::start_with(&[]).await
    }

    /// Same, with extra `RH_GATEWAY_*` settings. The database is migrated
    /// first, and every commit checks that each dispatch's narrow index row
    /// is in step with it (gateway/tests/fixtures/dispatch_index_in_step.sql).
    pub async fn start_with(env: &[(&str, &str)]) -> anyhow::Result<Stack> {
        let database_url = fresh_database().await?;
        let mut db = sqlx::PgConnection::connect(&database_url).await?;
        gateway::db::MIGRATOR.run(&mut db).await?;
        sqlx::raw_sql(include_str!("../../gateway/tests/fixtures/dispatch_index_in_step.sql")).execute(&mut db).await?;
        db.close().await?;
        Self::start_unchecked(&database_url, env).await
    }

    /// A stack as the benchmarks measure it: without the test-only check.
    pub async fn start_for_bench(env: &[(&str, &str)]) -> anyhow::Result<Stack> {
        Self::start_unchecked(&fresh_database().await?, env).await
    }

    async fn start_unchecked(database_url: &str, env: &[(&str, &str)]) -> anyhow::Result<Stack> {
        let database_url = database_url.to_owned();
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let keys = Keys::from_settings(&AuthSettings {
            hs256_secret: Some(secrecy::SecretString::from(SECRET)),
            ..AuthSettings::default()
        })?;
        let work = std::env::temp_dir().join(format!("rh-e2e-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&work)?;
        // User code leaves marker files here, and under a root test run it
        // runs as the node's unprivileged worker user.
        std::fs::set_permissions(&work, std::os::unix::fs::PermissionsExt::from_mode(0o1777))?;
        let mut stack = Stack {
            url: format!("http://127.0.0.1:{port}"),
            port,
            database_url,
            keys,
            client: reqwest::Client::builder().pool_max_idle_per_host(256).build()?,
            gateway: None,
            work,
            env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        };
        stack.start_gateway().await?;
        Ok(stack)
    }

    /// (Re)starts the gateway process on the stack's port and waits until it is ready.
    pub async fn start_gateway(&mut self) -> anyhow::Result<()> {
        let log = std::fs::File::create(self.work.join("gateway.log"))?;
        let mut command = Command::new(bin_dir().join("rh-gateway"));
        command
            .arg("serve")
            .env("RH_GATEWAY_LISTEN", format!("127.0.0.1:{}", self.port))
            .env("DATABASE_URL", &self.database_url)
            .env("RH_GATEWAY_AUTH__HS256_SECRET", SECRET)
            .env("RH_GATEWAY_COMPUTE__LOCAL_WORK_DIR", self.work.join("local-nodes"))
            .env_remove("RH_GATEWAY_CONFIG")
            .stdout(Stdio::null())
            .stderr(log);
        for (key, value) in &self.env {
            command.env(key, value);
        }
        self.gateway = Some(Process(command.spawn().context("start rh-gateway")?));
        self.wait_until(Duration::from_secs(30), "the gateway to be ready", || async {
            self.client.get(format!("{}/readyz", self.url)).send().await.is_ok_and(|r| r.status().is_success())
        })
        .await
    }

    /// Starts `rh-node run` in cluster `cluster` and waits until it has registered.
    /// Starts one more `rh-gateway serve` replica of this stack's database on
    /// a free port, with the default local work folder (keyed by the
    /// installation); returns it and its URL once it is ready.
    pub async fn replica(&self) -> anyhow::Result<(Process, String)> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let log = std::fs::File::create(self.work.join(format!("replica-{port}.log")))?;
        let child = Command::new(bin_dir().join("rh-gateway"))
            .arg("serve")
            .env("RH_GATEWAY_LISTEN", format!("127.0.0.1:{port}"))
            .env("DATABASE_URL", &self.database_url)
            .env("RH_GATEWAY_AUTH__HS256_SECRET", SECRET)
            .env("RH_GATEWAY_COMPUTE__RECONCILE_INTERVAL_S", "1")
            .env_remove("RH_GATEWAY_COMPUTE__LOCAL_WORK_DIR")
            .env_remove("RH_GATEWAY_CONFIG")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("start a gateway replica")?;
        let process = Process(child);
        let url = format!("http://127.0.0.1:{port}");
        self.wait_until(Duration::from_secs(30), "the replica to be ready", || async {
            self.client.get(format!("{url}/readyz")).send().await.is_ok_and(|r| r.status().is_success())
        })
        .await?;
        Ok((process, url))
    }

    pub async fn start_node(&self, name: &str, cluster: &str, max_concurrent: u32) -> anyhow::Result<Process> {
        self.start_node_with(name, cluster, max_concurrent, &self.url).await
    }

    /// `start_node` with the node's `--gateway` (one URL, or replicas' separated by commas).
    pub async fn start_node_with(
        &self,
        name: &str,
        cluster: &str,
        max_concurrent: u32,
        gateways: &str,
    ) -> anyhow::Result<Process> {
        self.start_node_env(name, cluster, max_concurrent, gateways, &[]).await
    }

    /// `start_node_with`, with extra `RH_NODE_*` settings.
    pub async fn start_node_env(
        &self,
        name: &str,
        cluster: &str,
        max_concurrent: u32,
        gateways: &str,
        env: &[(&str, &str)],
    ) -> anyhow::Result<Process> {
        let binding = NodeBinding { cluster: cluster.into(), name: name.into() };
        let jti = uuid::Uuid::new_v4().to_string();
        let (token, _) = self.keys.mint_node("default", &binding, Duration::from_secs(3600), &jti)?;
        let log = std::fs::File::create(self.work.join(format!("node-{name}.log")))?;
        let child = Command::new(bin_dir().join("rh-node"))
            .args(["run", "--gateway", gateways, "--cluster", cluster, "--name", name])
            .args(["--max-concurrent", &max_concurrent.to_string()])
            .arg("--work-dir")
            .arg(self.work.join(format!("node-{name}")))
            .env("RH_NODE_TOKEN", token)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("start rh-node")?;
        let node = Process(child);
        let admin = self.admin_token();
        self.wait_until(Duration::from_secs(30), "the node to register", || async {
            let Ok(response) = self.client.get(format!("{}/v1/nodes", self.url)).bearer_auth(&admin).send().await
            else {
                return false;
            };
            let nodes: Value = response.json().await.unwrap_or_default();
            nodes["items"].as_array().is_some_and(|items| {
                items.iter().any(|n| n["name"] == name && n["cluster"] == cluster && n["state"] == "ready")
            })
        })
        .await
        .map_err(|err| {
            let log = std::fs::read_to_string(self.work.join(format!("node-{name}.log"))).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(20).collect::<Vec<_>>().into_iter().rev().collect();
            err.context(format!("node {name}'s log ends:\n{}", tail.join("\n")))
        })?;
        Ok(node)
    }

    /// Waits until GET /v1/clusters/{name} is in `state`; returns it.
    pub async fn wait_cluster(&self, name: &str, state: &str, timeout: Duration) -> anyhow::Result<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let (_, cluster) = self.get(&format!("/v1/clusters/{name}")).await;
            if cluster["state"] == state {
                return Ok(cluster);
            }
            if Instant::now() > deadline {
                bail!("timed out after {timeout:?} waiting for cluster {name} to be {state}; it is {cluster}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// DELETEs with the admin token.
    pub async fn delete(&self, path: &str) -> (reqwest::StatusCode, Value) {
        let response = self
            .client
            .delete(format!("{}{path}", self.url))
            .bearer_auth(self.admin_token())
            .send()
            .await
            .expect("DELETE");
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Polls `check` every 20 ms until it holds or `timeout` passes.
    pub async fn wait_until<F, Fut>(&self, timeout: Duration, what: &str, check: F) -> anyhow::Result<()>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let deadline = Instant::now() + timeout;
        while !check().await {
            if Instant::now() > deadline {
                bail!("timed out after {timeout:?} waiting for {what}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    /// An admin token for project `default`.
    pub fn admin_token(&self) -> String {
        self.keys.mint("e2e", "default", &[Scope::Admin], Duration::from_secs(3600)).unwrap().0
    }

    /// POSTs JSON with the admin token; returns status and body.
    pub async fn post(&self, path: &str, body: &Value) -> (reqwest::StatusCode, Value) {
        let response = self
            .client
            .post(format!("{}{path}", self.url))
            .bearer_auth(self.admin_token())
            .json(body)
            .send()
            .await
            .expect("POST");
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// GETs JSON with the admin token.
    pub async fn get(&self, path: &str) -> (reqwest::StatusCode, Value) {
        let response =
            self.client.get(format!("{}{path}", self.url)).bearer_auth(self.admin_token()).send().await.expect("GET");
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Uploads a tar.gz; returns status and body.
    pub async fn upload(&self, data: Vec<u8>) -> (reqwest::StatusCode, Value) {
        let response = self
            .client
            .post(format!("{}/v1/bundles", self.url))
            .bearer_auth(self.admin_token())
            .header("content-type", "application/gzip")
            .body(data)
            .send()
            .await
            .expect("upload");
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Uploads the fixture project and returns its sha256.
    pub async fn fixture_bundle(&self) -> String {
        let (status, bundle) = self.upload(pack(&workspace_root().join("tests/fixtures/project"))).await;
        assert!(status.is_success(), "{status} {bundle}");
        bundle["sha256"].as_str().unwrap().to_owned()
    }

    /// Creates a dispatch of `function` from `bundle` on cluster `local`; returns its id.
    pub async fn dispatch(&self, bundle: &str, function: &str, args: Value, extra: Value) -> String {
        let mut body = json!({"function": function, "args": args, "cluster": "local", "bundle": bundle});
        if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
            body.extend(extra.clone());
        }
        let (status, dispatch) = self.post("/v1/dispatches", &body).await;
        assert!(status.is_success(), "{status} {dispatch}");
        dispatch["id"].as_str().unwrap().to_owned()
    }

    /// The dispatch's run record, once its node has sent it (records travel
    /// in batches, at most 100 ms after the call starts).
    pub async fn record(&self, id: &str) -> Value {
        let path = format!("/v1/dispatches/{id}/record");
        self.wait_until(Duration::from_secs(10), "the run record", || async { self.get(&path).await.0 == 200 })
            .await
            .unwrap();
        self.get(&path).await.1
    }

    /// Long-polls until the dispatch is terminal (or `timeout_s`).
    pub async fn wait(&self, id: &str, timeout_s: u32) -> Value {
        self.get(&format!("/v1/dispatches/{id}/wait?timeout_s={timeout_s}")).await.1
    }

    /// The dispatch's whole log as one string per stream.
    pub async fn logs(&self, id: &str) -> (String, String) {
        let (_, page) = self.get(&format!("/v1/dispatches/{id}/logs")).await;
        let mut out = (String::new(), String::new());
        for entry in page["entries"].as_array().cloned().unwrap_or_default() {
            match entry["stream"].as_str() {
                Some("stdout") => out.0.push_str(entry["text"].as_str().unwrap_or_default()),
                Some("stderr") => out.1.push_str(entry["text"].as_str().unwrap_or_default()),
                _ => {}
            }
        }
        out
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        drop(self.gateway.take());
        let _ = std::fs::remove_dir_all(&self.work);
    }
}

/// A deterministic tar.gz of a folder (sorted entries, fixed mtimes).
pub fn pack(dir: &Path) -> Vec<u8> {
    let mut files = Vec::new();
    collect(dir, dir, &mut files);
    files.sort();
    let mut builder = tar::Builder::new(Vec::new());
    for relative in files {
        let data = std::fs::read(dir.join(&relative)).expect("read fixture");
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(0);
        header.set_entry_type(tar::EntryType::Regular);
        builder.append_data(&mut header, &relative, data.as_slice()).expect("append");
    }
    let tar = builder.into_inner().expect("tar");
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut gz, &tar).expect("gzip");
    gz.finish().expect("gzip")
}

fn collect(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read dir").flatten() {
        let path = entry.path();
        let name = entry.file_name();
        if name == "__pycache__" {
            continue;
        }
        if path.is_dir() {
            collect(root, &path, out);
        } else {
            out.push(path.strip_prefix(root).expect("inside root").to_path_buf());
        }
    }
}

/// True if a process with this pid exists (and is not a zombie).
pub fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat.rsplit(')').next().is_some_and(|rest| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// What a notebook call needs in its environment: the pins in
/// `tests/notebook-requirements.txt`, whose wheels `scripts/test.sh` downloads once.
pub fn notebook_requirements() -> Vec<String> {
    include_str!("../notebook-requirements.txt")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(Into::into)
        .collect()
}

/// A TCP proxy in front of a server, whose open connections a test can cut
/// (both ends see them drop, as after a network fault).
pub struct Proxy {
    /// `http://127.0.0.1:<port>` of the proxy.
    pub url: String,
    open: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    accepting: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Forwards connections to `target` (`http://host:port`).
    pub async fn start(target: &str) -> anyhow::Result<Proxy> {
        let upstream = target.trim_start_matches("http://").trim_end_matches('/').to_owned();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let open = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let tracked = open.clone();
        let accepting = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let upstream = upstream.clone();
                let copying = tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(&upstream).await {
                        let _ = inbound.set_nodelay(true);
                        let _ = outbound.set_nodelay(true);
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                tracked.lock().expect("proxy lock poisoned").push(copying);
            }
        });
        Ok(Proxy { url, open, accepting })
    }

    /// Drops every connection open now; new ones are still accepted.
    pub fn cut(&self) {
        for connection in self.open.lock().expect("proxy lock poisoned").drain(..) {
            connection.abort();
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accepting.abort();
        self.cut();
    }
}

impl Stack {
    /// The value of the metric line starting with `series` (e.g.
    /// `rh_node_links` or `rh_node_link_messages_total{direction="to_nodes"}`), or 0.
    pub async fn metric(&self, series: &str) -> f64 {
        let Ok(response) = self.client.get(format!("{}/metrics", self.url)).send().await else {
            return 0.0;
        };
        let text = response.text().await.unwrap_or_default();
        text.lines()
            .filter_map(|line| line.strip_prefix(series))
            .find_map(|rest| rest.strip_prefix(' ').and_then(|v| v.trim().parse().ok()))
            .unwrap_or(0.0)
    }
}

//! The `rh-node` command line and the daemon's main loop.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::api::{self, NodeState};
use crate::bundles::BundleCache;
use crate::calls::Calls;
use crate::envs::EnvCache;
use crate::gateway::{self, GatewayClient};
use crate::outputs::Outputs;
use crate::worker::{EnvKey, Pool};

/// Runhouse node daemon: runs Python calls for a gateway.
#[derive(Debug, Parser)]
#[command(name = "rh-node", version)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Join a gateway and run calls.
    Run(Box<RunArgs>),
    /// (Internal) a worker process hosting Python; started by `run`.
    #[command(hide = true)]
    Worker {
        /// The descriptor of its end of the daemon's socket pair.
        #[arg(long)]
        fd: i32,
        /// Import paths to put first on sys.path.
        #[arg(long = "path")]
        paths: Vec<String>,
    },
}

/// Options of `rh-node run`.
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// The gateway's base URL, or several replicas' separated by commas
    /// (the node uses one at a time and fails over to the next).
    #[arg(long, env = "RH_GATEWAY_URL")]
    pub gateway: String,
    /// A node token (a JWT with the `node` scope), e.g. from `rh-gateway token create --scope node`.
    #[arg(long, env = "RH_NODE_TOKEN", hide_env_values = true, required_unless_present = "join")]
    pub token: Option<String>,
    /// A single-use join token from the gateway (a provisioned machine, or
    /// `POST /v1/clusters/{name}/join-tokens` for an existing host). The node
    /// trades it for its name, cluster and node token, and keeps those in
    /// `--work-dir` to register again after a restart.
    #[arg(long, env = "RH_NODE_JOIN", hide_env_values = true, conflicts_with = "token")]
    pub join: Option<String>,
    /// The machine's id at its provider (EC2 instance id, GCE name), sent when joining.
    #[arg(long, env = "RH_NODE_INSTANCE_ID")]
    pub instance_id: Option<String>,
    /// The cluster this node belongs to.
    #[arg(long, env = "RH_NODE_CLUSTER", default_value = "local")]
    pub cluster: String,
    /// Unique within the cluster; a restarted node keeps its name.
    #[arg(long, env = "RH_NODE_NAME")]
    pub name: Option<String>,
    /// Where the node API listens.
    #[arg(long, env = "RH_NODE_LISTEN", default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
    /// The URL the gateway uses to reach this node (default: http://<listen address>).
    #[arg(long, env = "RH_NODE_ADVERTISE")]
    pub advertise: Option<String>,
    /// Most calls at once (default: twice the CPU count).
    #[arg(long, env = "RH_NODE_MAX_CONCURRENT")]
    pub max_concurrent: Option<u32>,
    /// Bundles, environments and sockets live here.
    #[arg(long, env = "RH_NODE_WORK_DIR", default_value = ".rh-node")]
    pub work_dir: PathBuf,
    /// Where requirement environments are installed (default: `envs` in the
    /// work dir). Node daemons on one machine may share it; one kept across
    /// restarts saves reinstalling. It must be readable by the worker user.
    #[arg(long, env = "RH_NODE_ENVS_DIR")]
    pub envs_dir: Option<PathBuf>,
    /// Labels, as key=value (repeat).
    #[arg(long = "label", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    /// The user that runs workers and pip: a name or uid[:gid]. Default:
    /// `nobody` when the daemon runs as root, else the daemon's own user.
    /// `root` keeps workers as root under a root daemon (not recommended).
    #[arg(long, env = "RH_NODE_WORKER_USER", default_value = "")]
    pub worker_user: String,
    /// The Python used to install requirements (the embedded one by default).
    #[arg(long, env = "RH_NODE_PYTHON", default_value = env!("RH_PYTHON_EXECUTABLE"))]
    pub python: String,
    /// Do not send run records (what each call ran with) to the gateway.
    #[arg(long, env = "RH_NODE_NO_RUN_RECORDS", action = clap::ArgAction::SetTrue,
          value_parser = clap::builder::BoolishValueParser::new())]
    pub no_run_records: bool,
    /// Talk to the gateway over HTTP requests only, without the long-lived
    /// link (a WebSocket) that carries calls, cancels, heartbeats and reports.
    #[arg(long, env = "RH_NODE_NO_LINK", action = clap::ArgAction::SetTrue,
          value_parser = clap::builder::BoolishValueParser::new())]
    pub no_link: bool,
}

fn parse_label(text: &str) -> Result<(String, String), String> {
    text.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())).ok_or_else(|| format!("`{text}` is not key=value"))
}

impl Cli {
    /// Runs the command.
    pub fn run(self) -> ExitCode {
        match self.command {
            Command::Worker { fd, paths } => {
                match die_with_parent().and_then(|_| crate::python::worker_main(fd, &paths)) {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(err) => {
                        eprintln!("rh-node worker: {err:#}");
                        ExitCode::FAILURE
                    }
                }
            }
            Command::Run(args) => {
                // Other processes of this user (user code among them) cannot
                // read this one's memory or /proc/<pid>/environ, where its
                // credentials are.
                let _ = nix::sys::prctl::set_dumpable(false);
                // The gateway's `local` provider asks its nodes to die with it.
                if std::env::var("RH_NODE_DIE_WITH_PARENT").as_deref() == Ok("1") {
                    if let Err(err) = die_with_parent() {
                        eprintln!("error: {err:#}");
                        return ExitCode::FAILURE;
                    }
                }
                // The arguments are parsed: no secret needs to stay in the
                // environment, where child processes would inherit it. (Still
                // one thread here, so changing the environment is safe.)
                for (name, _) in std::env::vars_os().filter(|(name, _)| crate::worker::is_private_env(name)) {
                    std::env::remove_var(name);
                }
                let filter = tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
                let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
                let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
                match runtime.block_on(run(*args)) {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(err) => {
                        eprintln!("error: {err:#}");
                        ExitCode::FAILURE
                    }
                }
            }
        }
    }
}

/// Runs the daemon until SIGTERM or Ctrl-C.
pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    let work_dir = std::path::absolute(&args.work_dir)?;
    std::fs::create_dir_all(&work_dir).with_context(|| format!("cannot create {}", work_dir.display()))?;
    let cpus = std::thread::available_parallelism().map(|n| n.get() as u32).unwrap_or(1);
    let max_concurrent = args.max_concurrent.unwrap_or(cpus * 2).max(1);
    let identity = identity(&args, &work_dir).await?;
    let name = identity.name.clone();

    let gateway = GatewayClient::new(&args.gateway, &identity.token);
    let exe = std::env::current_exe().context("cannot find the rh-node executable")?;
    let cgroups = crate::cgroup::Cgroups::for_this_node();
    let worker_user = match args.worker_user.as_str() {
        "root" => None,
        spec => crate::sandbox::WorkerUser::resolve(spec, &work_dir)?,
    };
    match &worker_user {
        Some(user) => tracing::info!(user = %user.name, uid = %user.uid, "workers and pip run as an unprivileged user"),
        None if nix::unistd::Uid::effective().is_root() => {
            tracing::warn!("workers run as root (--worker-user root): user code can read this node's credentials")
        }
        None => {}
    }
    // Output folders live where the worker user may write and its sandbox shows (its home).
    let outputs = match &worker_user {
        Some(user) => {
            Outputs::new(user.home.join("outputs"), Some((user.uid, user.gid)), Some(work_dir.join("recycled-outputs")))
        }
        None => Outputs::new(work_dir.join("outputs"), None, None),
    }
    .context("cannot make the calls' output folder")?;
    let pool = Arc::new(Pool::new(exe, cgroups.clone(), worker_user.clone(), max_concurrent as usize));
    let bundles = Arc::new(BundleCache::new(work_dir.join("bundles"), gateway.clone()));
    let envs_dir = match &args.envs_dir {
        Some(dir) => std::path::absolute(dir)?,
        None => work_dir.join("envs"),
    };
    let envs = Arc::new(EnvCache::new(envs_dir, args.python.clone(), worker_user));
    let calls = Calls::new(max_concurrent as usize, pool.clone(), bundles, envs, gateway.clone(), Arc::new(outputs));
    calls.set_run_records(!args.no_run_records);

    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let address = args.advertise.clone().unwrap_or_else(|| format!("http://{}", listener.local_addr().expect("bound")));
    let secret: String = (0..2).map(|_| hex::encode(rand::random::<[u8; 24]>())).collect();
    let state =
        NodeState { calls: calls.clone(), secret: Arc::new(secret.clone()), node_id: Arc::new(RwLock::new(None)) };
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let server = tokio::spawn(std::future::IntoFuture::into_future(axum::serve(
        listener,
        api::router(state.clone()).into_make_service(),
    )));

    // One warm worker for calls without a bundle, ready before the first call.
    let prewarm = {
        let pool = pool.clone();
        tokio::spawn(async move { pool.prewarm(EnvKey { bundle_dir: None, site_dir: None }).await })
    };

    let registration = wire::RegisterNode {
        name: name.clone(),
        cluster: identity.cluster.clone(),
        address: address.clone(),
        api_secret: secret,
        max_concurrent,
        resources: wire::NodeResources { cpus, memory_bytes: memory_bytes(), gpus: gpu_count() },
        labels: identity.labels.clone().into_iter().chain(args.labels.iter().cloned()).collect::<BTreeMap<_, _>>(),
        running: vec![],
    };
    let mut node_id = register(&gateway, &registration, &calls).await?;
    *state.node_id.write().expect("lock poisoned") = Some(node_id.0);
    tracing::info!(%name, cluster = %identity.cluster, %address, node_id = %node_id.0, "node registered");
    let _ = prewarm.await;

    // Heartbeat at once whenever the link (re)opens: the gateway reconciles.
    let link_opened = Arc::new(tokio::sync::Notify::new());
    let link = (!args.no_link).then(|| {
        tokio::spawn(crate::link::run(
            gateway.clone(),
            state.node_id.clone(),
            api::router(state.clone()),
            link_opened.clone(),
            crate::link::idle_limit(node_id.1.every),
        ))
    });
    let mut interval = tokio::time::interval(node_id.1.every);
    // While the link is open the gateway pings it, and the pongs keep this
    // node alive: a heartbeat (what it runs, for the gateway's repair) is
    // then due only every `linked_every`.
    let mut last_sent: Option<std::time::Instant> = None;
    let stop = shutdown_signal();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            _ = interval.tick() => {
                let linked_every = node_id.1.linked_every;
                if gateway.is_linked() && last_sent.is_some_and(|at| at.elapsed() + node_id.1.every / 2 < linked_every) {
                    continue;
                }
            }
            _ = link_opened.notified() => {}
        }
        last_sent = Some(std::time::Instant::now());
        let heartbeat = wire::Heartbeat {
            running: calls.running().into_iter().map(|c| c.dispatch_id).collect(),
            instances: calls.instances(),
            warm_workers: Some(calls.warm_workers()),
        };
        match gateway.heartbeat(node_id.0, &heartbeat).await {
            Ok(()) => {}
            Err(gateway::Error::Refused { status, .. }) if status == reqwest::StatusCode::NOT_FOUND => {
                tracing::warn!("the gateway no longer knows this node; registering again");
                if let Ok(again) = register(&gateway, &registration, &calls).await {
                    node_id = again;
                    *state.node_id.write().expect("lock poisoned") = Some(node_id.0);
                    // The link belonged to the node's old registration.
                    gateway.close_link();
                }
            }
            Err(gateway::Error::Refused { status, body }) if status == reqwest::StatusCode::UNAUTHORIZED => {
                // The token was revoked (its machine was terminated) or expired.
                server.abort();
                anyhow::bail!("the gateway no longer accepts this node's token: {body}");
            }
            Err(err) => tracing::warn!(error = %err, "heartbeat failed"),
        }
    }
    tracing::info!("shutting down");
    if let Some(link) = link {
        link.abort();
    }
    server.abort();
    drop(pool);
    cgroups.remove();
    Ok(())
}

/// Who this node is: from `--token`/`--name`/`--cluster`, or from a join
/// (done once; the result is kept in the work folder for restarts).
#[derive(serde::Serialize, serde::Deserialize)]
struct Identity {
    token: String,
    cluster: String,
    name: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

async fn identity(args: &RunArgs, work_dir: &std::path::Path) -> anyhow::Result<Identity> {
    let Some(join_token) = &args.join else {
        return Ok(Identity {
            token: args.token.clone().unwrap_or_default(),
            cluster: args.cluster.clone(),
            name: args.name.clone().unwrap_or_else(hostname),
            labels: BTreeMap::new(),
        });
    };
    let saved = work_dir.join("identity.json");
    if let Ok(text) = std::fs::read_to_string(&saved) {
        if let Ok(identity) = serde_json::from_str::<Identity>(&text) {
            return Ok(identity);
        }
    }
    let request = wire::JoinNode { join_token: join_token.clone(), instance_id: args.instance_id.clone() };
    let mut delay = Duration::from_millis(100);
    let joined = loop {
        match GatewayClient::join(&args.gateway, &request).await {
            Ok(joined) => break joined,
            Err(err @ gateway::Error::Refused { .. }) => return Err(err).context("the gateway refused the join"),
            Err(err) => {
                tracing::warn!(error = %err, "cannot reach the gateway to join; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    };
    let identity = Identity { token: joined.token, cluster: joined.cluster, name: joined.name, labels: joined.labels };
    write_private(&saved, &serde_json::to_vec(&identity)?)?;
    Ok(identity)
}

fn write_private(path: &std::path::Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)?;
    file.write_all(bytes)?;
    Ok(())
}

/// How often the gateway asked for heartbeats.
#[derive(Debug, Clone, Copy)]
struct Heartbeats {
    /// Over HTTP (no link open).
    every: Duration,
    /// While the link is open.
    linked_every: Duration,
}

/// Registers, retrying while the gateway is unreachable.
async fn register(
    gateway: &GatewayClient,
    registration: &wire::RegisterNode,
    calls: &Calls,
) -> anyhow::Result<(wire::NodeId, Heartbeats)> {
    let mut delay = Duration::from_millis(100);
    loop {
        let mut registration = registration.clone();
        registration.running = calls.running().into_iter().map(|c| c.dispatch_id).collect();
        match gateway.register(&registration).await {
            Ok(done) => {
                if let Some(max) = done.max_result_bytes {
                    calls.set_max_result_bytes(max as usize);
                }
                if let Some(limits) = done.artifact_limits {
                    calls.set_artifact_limits(limits);
                }
                let every = Duration::from_secs(done.heartbeat_interval_s.max(1).into());
                let linked_every = done.linked_heartbeat_interval_s.map_or(every, |s| Duration::from_secs(s.into()));
                return Ok((done.node_id, Heartbeats { every, linked_every: linked_every.max(every) }));
            }
            Err(err @ gateway::Error::Refused { .. }) => {
                return Err(err).context("the gateway refused the registration")
            }
            Err(err) => {
                tracing::warn!(error = %err, "cannot reach the gateway; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// A worker must not outlive its daemon: if the daemon dies (even by
/// SIGKILL), the kernel kills the worker, and with it the call it was running.
fn die_with_parent() -> anyhow::Result<()> {
    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)?;
    // The daemon may have died before the line above took effect.
    if nix::unistd::getppid() == nix::unistd::Pid::from_raw(1) {
        anyhow::bail!("the node daemon exited before the worker started");
    }
    Ok(())
}

/// NVIDIA GPUs visible to this node (0 without `nvidia-smi`).
fn gpu_count() -> u32 {
    std::process::Command::new("nvidia-smi")
        .arg("-L")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map_or(0, |o| String::from_utf8_lossy(&o.stdout).lines().filter(|l| l.starts_with("GPU ")).count() as u32)
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_owned()).unwrap_or_else(|_| "node".into())
}

fn memory_bytes() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|info| info.lines().find(|l| l.starts_with("MemTotal:")).map(str::to_owned))
        .and_then(|line| line.split_whitespace().nth(1).and_then(|kb| kb.parse::<u64>().ok()))
        .map_or(0, |kb| kb * 1024)
}

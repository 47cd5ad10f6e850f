//! The `rh` command line: every command prints a human-friendly table, or
//! JSON with `--json`.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use futures::StreamExt;
use serde_json::Value;
use wire::{CreateDispatch, Dispatch, DispatchId, ListDispatches, RegisterFunction};

use crate::{package, Client, Error};

/// Run Python functions remotely through a Runhouse Gateway.
#[derive(Debug, Parser)]
#[command(name = "rh", version)]
pub struct Cli {
    /// The gateway's URL.
    #[arg(long, global = true, env = "RH_GATEWAY_URL", default_value = "http://127.0.0.1:8080")]
    gateway: String,
    /// A gateway token.
    #[arg(long, global = true, env = "RH_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a function: `module:qualname`, or the name of a deployed function.
    Dispatch(DispatchArgs),
    /// Show one dispatch.
    Status { id: DispatchId },
    /// List dispatches, newest first.
    Ls(LsArgs),
    /// Print a dispatch's output (`-f` to follow it live).
    Logs {
        id: DispatchId,
        #[arg(short, long)]
        follow: bool,
    },
    /// Cancel a dispatch.
    Cancel {
        id: DispatchId,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Package a function's project and register it under a name: `rh deploy path/to/file.py:func --name N --cluster C`.
    Deploy(DeployArgs),
    /// Cron schedules: `rh schedule create|ls|show|pause|resume|rm`.
    #[command(subcommand)]
    Schedule(ScheduleCommand),
    /// Run a dispatch again here, from its run record: `rh reproduce ID [--dir D] [--no-install] [--shell]`.
    Reproduce(ReproduceArgs),
    /// Remote objects: `rh instance ls|show|rm` (call methods with `rh dispatch --instance N --method M`).
    #[command(subcommand)]
    Instance(InstanceCommand),
    /// Files a dispatch kept: `rh artifacts ls ID`, `rh artifacts get ID [PATH] [--out DIR]`.
    #[command(subcommand)]
    Artifacts(ArtifactsCommand),
    /// Print a one-time link that signs a browser in to the dashboard as your token (5 minutes, works once).
    Ui,
}

#[derive(Debug, Subcommand)]
enum ArtifactsCommand {
    /// List a dispatch's artifacts.
    Ls { id: DispatchId },
    /// Download a dispatch's artifacts (all, or the one at PATH) into a folder.
    Get {
        id: DispatchId,
        path: Option<String>,
        /// Where to write them (default: the current folder), keeping their folders.
        #[arg(long, default_value = ".")]
        out: PathBuf,
    },
}

#[derive(Debug, Args)]
struct ReproduceArgs {
    id: DispatchId,
    /// Where to unpack the bundle (default: a folder in the temp dir named after the dispatch).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Run with the current environment's `python3` instead of installing the recorded packages.
    #[arg(long)]
    no_install: bool,
    /// Drop into `python -i` with the function as `fn` and its arguments as `args` and `kwargs`.
    #[arg(long)]
    shell: bool,
}

#[derive(Debug, Subcommand)]
enum InstanceCommand {
    /// List the project's instances.
    Ls {
        /// Deleted ones too.
        #[arg(long)]
        all: bool,
    },
    /// Show one, with its latest events.
    Show { name: String },
    /// Delete one: its calls are cancelled and its worker stopped.
    Rm { name: String },
}

#[derive(Debug, Subcommand)]
enum ScheduleCommand {
    /// Create one: `rh schedule create NAME --cron '0 2 * * *' module:qualname --arg 0.01 --cluster train`.
    Create(Box<ScheduleCreateArgs>),
    /// List the project's schedules.
    Ls,
    /// Show one, with its next fire times.
    Show { name: String },
    /// Stop firing until resumed.
    Pause { name: String },
    /// Fire again, from the next instant on.
    Resume { name: String },
    /// Delete one (its dispatches stay).
    Rm { name: String },
}

#[derive(Debug, Args)]
struct ScheduleCreateArgs {
    name: String,
    /// POSIX cron (5 fields, or 6 with seconds first) or @hourly/@daily/...
    #[arg(long)]
    cron: String,
    /// The IANA zone the expression is read in.
    #[arg(long, default_value = "UTC")]
    timezone: String,
    /// allow, skip, cancel_previous or queue: what a fire does while the previous run goes on.
    #[arg(long, default_value = "allow")]
    overlap: String,
    /// none, latest or all: which fires missed while no gateway ran are made up.
    #[arg(long, default_value = "latest")]
    catchup: String,
    #[arg(long, default_value_t = 10)]
    max_catchup: u32,
    /// Create it paused.
    #[arg(long)]
    paused: bool,
    #[command(flatten)]
    dispatch: TemplateArgs,
}

#[derive(Debug, Args)]
struct DispatchArgs {
    #[command(flatten)]
    template: TemplateArgs,
    /// Wait for the result, streaming the output.
    #[arg(long)]
    wait: bool,
    /// On Ctrl-C while waiting, cancel the remote run without asking.
    #[arg(long)]
    cancel_on_interrupt: bool,
}

/// What to run: the part of a dispatch a schedule repeats.
#[derive(Debug, Args)]
struct TemplateArgs {
    /// `module:qualname`, `python <script.py>`, `shell <command>`, `notebook <file.ipynb>`, or a deployed
    /// function's name (not with `--instance`).
    target: Option<String>,
    /// Call a method of this instance instead of a function.
    #[arg(long, requires = "method", conflicts_with_all = ["target", "cluster", "bundle"])]
    instance: Option<String>,
    /// The method of `--instance` to call.
    #[arg(long, requires = "instance")]
    method: Option<String>,
    /// A positional argument as JSON (repeat; plain words are strings).
    #[arg(long = "arg")]
    args: Vec<String>,
    /// A keyword argument, `name=JSON` (repeat).
    #[arg(long = "kwarg")]
    kwargs: Vec<String>,
    #[arg(long)]
    cluster: Option<String>,
    /// sha256 of an uploaded bundle.
    #[arg(long)]
    bundle: Option<String>,
    /// `key=value` (repeat).
    #[arg(long = "label")]
    labels: Vec<String>,
    /// Seconds before the call is stopped as timed out.
    #[arg(long)]
    timeout: Option<u32>,
    /// Answer from an identical earlier call's result, if there is one.
    #[arg(long)]
    cache: bool,
}

#[derive(Debug, Args)]
struct LsArgs {
    #[arg(long)]
    state: Vec<String>,
    #[arg(long)]
    cluster: Option<String>,
    /// Only this function (its registered name, or `module:qualname`).
    #[arg(long)]
    function: Option<String>,
    #[arg(long = "label")]
    labels: Vec<String>,
    #[arg(long, default_value_t = 20)]
    limit: u32,
}

#[derive(Debug, Args)]
struct DeployArgs {
    /// `path/to/file.py:function`.
    target: String,
    #[arg(long)]
    name: String,
    #[arg(long)]
    cluster: Option<String>,
    /// A pip requirement (repeat).
    #[arg(long = "requirement")]
    requirements: Vec<String>,
}

/// What a command failed with.
enum Failure {
    Usage(String),
    Client(Error),
    /// The remote run ended badly; the exit code says how.
    Remote(String, u8),
}

impl From<Error> for Failure {
    fn from(err: Error) -> Self {
        Failure::Client(err)
    }
}

impl Cli {
    /// Runs the command; the exit code is 0 on success, 1 on an error, 2 on
    /// bad usage, 3 if a waited-on run failed, 4 if it was cancelled or timed out.
    pub fn run(self) -> ExitCode {
        let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
        match runtime.block_on(self.execute()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(Failure::Usage(message)) => {
                eprintln!("error: {message}");
                ExitCode::from(2)
            }
            Err(Failure::Client(err)) => {
                eprintln!("error: {err}");
                ExitCode::from(1)
            }
            Err(Failure::Remote(message, code)) => {
                eprintln!("{message}");
                ExitCode::from(code)
            }
        }
    }

    async fn execute(self) -> Result<(), Failure> {
        let token = self.token.clone().unwrap_or_default();
        let client = Client::new(&self.gateway, &token)?;
        let json = self.json;
        match self.command {
            Command::Dispatch(args) => dispatch(&client, args, json).await,
            Command::Ui => {
                let link = client.ui_login_link().await?;
                if json {
                    println!("{}", serde_json::to_string(&link).expect("a link serializes"));
                } else {
                    println!("{}", link.url);
                    eprintln!("Open it within 5 minutes; it works once and signs the browser in as your token.");
                }
                Ok(())
            }
            Command::Status { id } => {
                let dispatch = client.dispatch_get(id).await?;
                print_dispatches(&[dispatch], json, true);
                Ok(())
            }
            Command::Ls(args) => {
                let query = ListDispatches {
                    state: args.state,
                    cluster: args.cluster,
                    function: args.function,
                    label: args.labels,
                    limit: Some(args.limit),
                    ..ListDispatches::default()
                };
                let page = client.dispatch_list(&query).await?;
                print_dispatches(&page.items, json, false);
                Ok(())
            }
            Command::Logs { id, follow } => logs(&client, id, follow, json).await,
            Command::Cancel { id, reason } => {
                let dispatch = client.dispatch_cancel(id, reason).await?;
                print_dispatches(&[dispatch], json, true);
                Ok(())
            }
            Command::Deploy(args) => deploy(&client, args, json).await,
            Command::Schedule(command) => schedule(&client, command, json).await,
            Command::Instance(command) => instance(&client, command, json).await,
            Command::Reproduce(args) => reproduce(&client, args, json).await,
            Command::Artifacts(command) => artifacts(&client, command, json).await,
        }
    }
}

fn parse_value(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_owned()))
}

/// The create request `args` describe.
fn template(args: &TemplateArgs) -> Result<CreateDispatch, Failure> {
    let mut kwargs = serde_json::Map::new();
    for pair in &args.kwargs {
        let (name, value) =
            pair.split_once('=').ok_or_else(|| Failure::Usage(format!("--kwarg must be name=JSON, got `{pair}`")))?;
        kwargs.insert(name.to_owned(), parse_value(value));
    }
    let mut labels = BTreeMap::new();
    for pair in &args.labels {
        let (key, value) =
            pair.split_once('=').ok_or_else(|| Failure::Usage(format!("--label must be key=value, got `{pair}`")))?;
        labels.insert(key.to_owned(), value.to_owned());
    }
    let (function, function_name) = match (&args.target, &args.instance) {
        (Some(target), _) if target.contains([':', ' ']) => (Some(target.clone()), None),
        (Some(target), _) => (None, Some(target.clone())),
        (None, Some(_)) => (None, None),
        (None, None) => {
            return Err(Failure::Usage(
                "name what to run: `module:qualname`, a deployed function, or --instance NAME --method M".into(),
            ))
        }
    };
    Ok(CreateDispatch {
        function,
        function_name,
        bundle: args.bundle.clone(),
        requirements: vec![],
        args: args.args.iter().map(|a| parse_value(a)).collect(),
        kwargs,
        cluster: args.cluster.clone(),
        idempotency_key: None,
        labels,
        timeout_s: args.timeout,
        instance: args.instance.clone(),
        method: args.method.clone(),
        cache: args.cache,
        cache_key: None,
        cache_ttl_s: None,
    })
}

async fn dispatch(client: &Client, args: DispatchArgs, json: bool) -> Result<(), Failure> {
    let request = template(&args.template)?;
    // Listen for Ctrl-C before the create, so one pressed while it is in
    // flight still reaches the dispatch it makes (once it has an id).
    let mut interrupt = match args.wait {
        true => Some(
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
                .map_err(|e| Failure::Usage(format!("cannot listen for Ctrl-C: {e}")))?,
        ),
        false => None,
    };
    let dispatch = client.dispatch_create(request).await?;
    if !args.wait {
        print_dispatches(&[dispatch], json, true);
        return Ok(());
    }
    let id = dispatch.id;
    if !json {
        eprintln!("dispatch {id} {}", dispatch.state);
    }
    let finished = tokio::select! {
        result = wait_streaming(client, id, json) => result?,
        _ = async { interrupt.as_mut().expect("listening while waiting").recv().await } => {
            if args.cancel_on_interrupt || ask("\nCancel the remote run? [y/N] ") {
                let dispatch = client.dispatch_cancel(id, Some("interrupted from rh".into())).await?;
                eprintln!("cancel requested: {id} is {}", dispatch.state);
            } else {
                eprintln!("left running: rh status {id}");
            }
            return Err(Failure::Remote("interrupted".into(), 130));
        }
    };
    outcome(&finished, json)
}

/// Streams the run's output (unless `json`) and waits for its end.
async fn wait_streaming(client: &Client, id: DispatchId, json: bool) -> Result<Dispatch, Error> {
    if !json {
        let mut entries = Box::pin(client.logs_follow(id, 0));
        while let Some(entry) = entries.next().await {
            let entry = entry?;
            match entry.stream {
                wire::LogStream::Stderr | wire::LogStream::System => eprint!("{}", entry.text),
                wire::LogStream::Stdout => print!("{}", entry.text),
            }
            let _ = std::io::stdout().flush();
        }
    }
    client.dispatch_wait(id, None).await
}

fn outcome(dispatch: &Dispatch, json: bool) -> Result<(), Failure> {
    if json {
        println!("{}", serde_json::to_string_pretty(dispatch).expect("dispatch serializes"));
    } else if let Some(result) = &dispatch.result {
        println!("{}", serde_json::to_string_pretty(result).expect("result serializes"));
    }
    match dispatch.state {
        wire::DispatchState::Succeeded => Ok(()),
        wire::DispatchState::Failed => {
            let failure = dispatch.failure.clone();
            let message = failure.map_or_else(
                || "the run failed".to_owned(),
                |f| match (f.remote_type, f.traceback) {
                    (Some(kind), Some(traceback)) => format!("{traceback}remote {kind}: {}", f.message),
                    _ => format!("{}: {}", f.code, f.message),
                },
            );
            Err(Failure::Remote(message, 3))
        }
        wire::DispatchState::Cancelled => {
            let by = dispatch.cancellation.as_ref().map_or_else(String::new, |c| {
                format!(" by {}{}", c.by, c.reason.as_ref().map_or_else(String::new, |r| format!(": {r}")))
            });
            Err(Failure::Remote(format!("cancelled{by}"), 4))
        }
        _ => Err(Failure::Remote(format!("the run ended {}", dispatch.state), 4)),
    }
}

fn ask(question: &str) -> bool {
    if !std::io::stdin().is_terminal() {
        return false;
    }
    eprint!("{question}");
    let mut answer = String::new();
    std::io::stdin().read_line(&mut answer).is_ok() && matches!(answer.trim(), "y" | "Y" | "yes")
}

async fn logs(client: &Client, id: DispatchId, follow: bool, json: bool) -> Result<(), Failure> {
    let mut entries = Vec::new();
    if follow {
        let mut stream = Box::pin(client.logs_follow(id, 0));
        while let Some(entry) = stream.next().await {
            let entry = entry?;
            if json {
                println!("{}", serde_json::to_string(&entry).expect("entry serializes"));
            } else if entry.stream == wire::LogStream::Stdout {
                print!("{}", entry.text);
            } else {
                eprint!("{}", entry.text);
            }
        }
        return Ok(());
    }
    let mut offset = 0;
    loop {
        let page = client.logs(id, offset).await?;
        let more = !page.entries.is_empty() && page.next_offset > offset;
        offset = page.next_offset;
        entries.extend(page.entries);
        if !more {
            break;
        }
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&entries).expect("entries serialize"));
    } else {
        for entry in entries {
            if entry.stream == wire::LogStream::Stdout {
                print!("{}", entry.text);
            } else {
                eprint!("{}", entry.text);
            }
        }
    }
    Ok(())
}

async fn schedule(client: &Client, command: ScheduleCommand, json: bool) -> Result<(), Failure> {
    let change = |paused| wire::UpdateSchedule { paused: Some(paused), ..wire::UpdateSchedule::default() };
    let shown = match command {
        ScheduleCommand::Create(args) => {
            fn choice<T: serde::de::DeserializeOwned>(flag: &str, value: &str) -> Result<T, Failure> {
                serde_json::from_value(Value::String(value.to_owned()))
                    .map_err(|_| Failure::Usage(format!("--{flag} cannot be `{value}`")))
            }
            let request = wire::CreateSchedule {
                name: args.name.clone(),
                cron: args.cron.clone(),
                timezone: args.timezone.clone(),
                dispatch: template(&args.dispatch)?,
                overlap: choice("overlap", &args.overlap)?,
                catchup: choice("catchup", &args.catchup)?,
                max_catchup: args.max_catchup,
                paused: args.paused,
                start_at: None,
                end_at: None,
            };
            vec![client.schedule_create(&request).await?]
        }
        ScheduleCommand::Ls => client.schedule_list().await?.items,
        ScheduleCommand::Show { name } => vec![client.schedule_get(&name).await?],
        ScheduleCommand::Pause { name } => vec![client.schedule_update(&name, &change(true)).await?],
        ScheduleCommand::Resume { name } => vec![client.schedule_update(&name, &change(false)).await?],
        ScheduleCommand::Rm { name } => {
            client.schedule_delete(&name).await?;
            if !json {
                println!("deleted schedule {name}");
            }
            return Ok(());
        }
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&shown).expect("schedules serialize"));
        return Ok(());
    }
    for schedule in &shown {
        let next = schedule.next_fire_at.map_or_else(|| "-".to_owned(), |t| t.to_rfc3339());
        let state = if schedule.paused { "paused" } else { "active" };
        println!("{}\t{}\t{}\t{state}\tnext {next}", schedule.name, schedule.cron, schedule.timezone);
    }
    Ok(())
}

async fn reproduce(client: &Client, args: ReproduceArgs, json: bool) -> Result<(), Failure> {
    use crate::reproduce::{self, LocalOutcome, ReproduceError};
    let prepared = reproduce::prepare(client, args.id, args.dir, !args.no_install).await.map_err(|err| match err {
        ReproduceError::Client(err) => Failure::Client(err),
        other => Failure::Usage(other.to_string()),
    })?;
    let remote = match (&prepared.record.state, &prepared.record.failure) {
        (_, Some(failure)) => {
            format!("{}: {}", failure.remote_type.as_deref().unwrap_or(&failure.code), failure.message)
        }
        (state, None) => state.to_string(),
    };
    eprintln!(
        "reproducing dispatch {} ({}; remote: {remote}) in {} with {}",
        args.id,
        prepared.record.function,
        prepared.src.display(),
        prepared.python.display()
    );
    let status = reproduce::command(&prepared, args.shell)
        .status()
        .map_err(|e| Failure::Usage(format!("cannot run {}: {e}", prepared.python.display())))?;
    if args.shell {
        return Ok(());
    }
    match reproduce::outcome(&prepared, status.code().unwrap_or(1)) {
        LocalOutcome::Returned(result) => {
            if json {
                println!("{}", serde_json::json!({"ok": true, "result": result}));
            } else {
                println!("{}", serde_json::to_string_pretty(&result).expect("result serializes"));
            }
            Ok(())
        }
        LocalOutcome::Raised { kind, message, traceback } => {
            if json {
                println!(
                    "{}",
                    serde_json::json!({"ok": false, "type": kind, "message": message, "traceback": traceback})
                );
            }
            Err(Failure::Remote(format!("{traceback}local {kind}: {message} (remote: {remote})"), 3))
        }
        LocalOutcome::Crashed(code) => {
            Err(Failure::Remote(format!("the local run exited with status {code} before the call ended"), 3))
        }
    }
}

async fn artifacts(client: &Client, command: ArtifactsCommand, json: bool) -> Result<(), Failure> {
    match command {
        ArtifactsCommand::Ls { id } => {
            let list = client.dispatch_artifacts(id).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&list).expect("artifacts serialize"));
            } else if list.items.is_empty() {
                eprintln!("dispatch {id} kept no artifacts");
            } else {
                println!("{:<12} {:<24} PATH", "SIZE", "TYPE");
                for artifact in &list.items {
                    println!("{:<12} {:<24} {}", artifact.size_bytes, artifact.content_type, artifact.path);
                }
            }
            Ok(())
        }
        ArtifactsCommand::Get { id, path, out } => {
            let written = client.artifacts_download(id, path.as_deref(), &out).await?;
            if json {
                println!("{}", serde_json::json!({"written": written}));
            } else {
                for file in &written {
                    println!("{}", file.display());
                }
                if written.is_empty() {
                    eprintln!("dispatch {id} kept no artifacts");
                }
            }
            Ok(())
        }
    }
}

async fn instance(client: &Client, command: InstanceCommand, json: bool) -> Result<(), Failure> {
    let (shown, single) = match command {
        InstanceCommand::Ls { all } => (client.instance_list(all).await?.items, false),
        InstanceCommand::Show { name } => (vec![client.instance_get(&name).await?], true),
        InstanceCommand::Rm { name } => (vec![client.instance_delete(&name).await?], true),
    };
    if json {
        let text = if single { serde_json::to_string_pretty(&shown[0]) } else { serde_json::to_string_pretty(&shown) };
        println!("{}", text.expect("instances serialize"));
        return Ok(());
    }
    let state = |i: &wire::Instance| serde_json::to_value(i.state).ok().and_then(|v| v.as_str().map(str::to_owned));
    let rows: Vec<[String; 5]> = shown
        .iter()
        .map(|i| {
            [
                i.name.clone(),
                state(i).unwrap_or_default(),
                i.cluster.clone(),
                i.class.clone(),
                i.created_at.format("%Y-%m-%d %H:%M:%S").to_string(),
            ]
        })
        .collect();
    print_table(["NAME", "STATE", "CLUSTER", "CLASS", "CREATED"], &rows);
    if single {
        let instance = &shown[0];
        if let Some(reason) = &instance.state_reason {
            println!("reason: {reason}");
        }
        if let Some(failure) = &instance.failure {
            println!("failure: {}: {}", failure.code, failure.message);
        }
        for event in &instance.events {
            println!("{}  {:<18} {}", event.at.format("%Y-%m-%d %H:%M:%S"), event.kind, event.message);
        }
    }
    Ok(())
}

async fn deploy(client: &Client, args: DeployArgs, json: bool) -> Result<(), Failure> {
    let (path, function) = args
        .target
        .rsplit_once(':')
        .ok_or_else(|| Failure::Usage(format!("deploy needs PATH:FUNCTION, got `{}`", args.target)))?;
    let path = PathBuf::from(path);
    if !path.is_file() {
        return Err(Failure::Usage(format!("`{}` is not a file", path.display())));
    }
    let root = package::project_root(&path).ok_or_else(|| {
        Failure::Usage(format!(
            "no project folder above {}: add a pyproject.toml, setup.py, requirements.txt or .git",
            path.display()
        ))
    })?;
    let module = package::module_name(&root, &path)
        .ok_or_else(|| Failure::Usage(format!("`{}` is not a .py file under {}", path.display(), root.display())))?;
    let packed = package::pack(&root).map_err(|e| Failure::Usage(format!("cannot pack {}: {e}", root.display())))?;
    let uploaded = if client.bundle_exists(&packed.sha256).await? {
        false
    } else {
        client.bundle_upload(packed.data.clone(), &packed.source).await?;
        true
    };
    let registered = client
        .function_register(&RegisterFunction {
            name: args.name,
            function: format!("{module}:{function}"),
            bundle: Some(packed.sha256.clone()),
            requirements: args.requirements,
            cluster: args.cluster,
        })
        .await?;
    if json {
        let mut value = serde_json::to_value(&registered).expect("function serializes");
        value["uploaded"] = Value::Bool(uploaded);
        println!("{}", serde_json::to_string_pretty(&value).expect("value serializes"));
    } else {
        println!(
            "deployed {} = {} (bundle {} from {}, {} files, {})",
            registered.name,
            registered.function,
            &packed.sha256[..12],
            root.display(),
            packed.files,
            if uploaded { "uploaded" } else { "unchanged, not uploaded" }
        );
    }
    Ok(())
}

fn print_dispatches(dispatches: &[Dispatch], json: bool, single: bool) {
    if json {
        let text = if single && dispatches.len() == 1 {
            serde_json::to_string_pretty(&dispatches[0])
        } else {
            serde_json::to_string_pretty(dispatches)
        };
        println!("{}", text.expect("dispatches serialize"));
        return;
    }
    let rows: Vec<[String; 5]> = dispatches
        .iter()
        .map(|d| {
            [
                d.id.to_string(),
                d.state.to_string(),
                d.cluster.clone(),
                d.function_name.clone().unwrap_or_else(|| d.function.clone()),
                d.created_at.format("%Y-%m-%d %H:%M:%S").to_string(),
            ]
        })
        .collect();
    print_table(["ID", "STATE", "CLUSTER", "FUNCTION", "CREATED"], &rows);
    if single {
        if let Some(dispatch) = dispatches.first() {
            if let Some(result) = &dispatch.result {
                println!("result: {result}");
            }
            if let Some(failure) = &dispatch.failure {
                println!("failure: {}: {}", failure.code, failure.message);
            }
            if let Some(cancellation) = &dispatch.cancellation {
                println!(
                    "cancelled by {}{}",
                    cancellation.by,
                    cancellation.reason.as_ref().map_or_else(String::new, |r| format!(": {r}"))
                );
            }
        }
    }
}

fn print_table<const N: usize>(header: [&str; N], rows: &[[String; N]]) {
    let mut widths = header.map(str::len);
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.len());
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells.iter().zip(widths).map(|(c, w)| format!("{c:<w$}")).collect();
        println!("{}", padded.join("  ").trim_end());
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

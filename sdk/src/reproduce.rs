//! Running a recorded dispatch again, here: its bundle unpacked into a
//! folder, its resolved packages installed into a virtualenv cached by that
//! set, and its entry point called with its arguments in a subprocess.

use std::path::PathBuf;

use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use wire::{DispatchId, RunRecord};

use crate::{Client, Error};

/// The script the local interpreter runs: `python -c RUNNER CALL_JSON [--shell]`.
/// It imports the entry point from the unpacked bundle and calls it (or runs
/// the script, command or notebook the dispatch named); the outcome goes to
/// the call file's `outcome` path as JSON. With `--shell` it only binds
/// `fn`, `args` and `kwargs` (for `python -i`). Files the call keeps land in
/// the folder's `outputs/`, its `$RH_OUTPUTS`.
pub const RUNNER: &str = r#"
import importlib, json, os, subprocess, sys, traceback
spec = json.load(open(sys.argv[1]))
sys.path.insert(0, spec["src"])
sys.path.insert(0, spec["lib"])
os.makedirs(spec["outputs"], exist_ok=True)
os.environ["RH_OUTPUTS"] = spec["outputs"]
def _type_name(t):
    return t.__qualname__ if t.__module__ == "builtins" else f"{t.__module__}.{t.__qualname__}"
def _write(outcome):
    with open(spec["outcome"], "w") as f:
        json.dump(outcome, f)
if spec["program"] is not None:
    kind, target, args = spec["program"], spec["qualname"], spec["args"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([spec["src"], spec["lib"]] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    failure_file = os.path.join(os.path.dirname(spec["outcome"]), "notebook-failure.json")
    if os.path.exists(failure_file):
        os.unlink(failure_file)
    if kind == "script":
        argv = [sys.executable, target, *args]
    elif kind == "shell":
        argv = ["/bin/sh", "-c", target, "sh", *args]
    else:
        runner = os.path.join(spec["lib"], "rh_notebook.py")
        argv = [sys.executable, runner, target, json.dumps(spec["kwargs"]),
                os.path.join(spec["outputs"], os.path.basename(target)), failure_file]
    code = subprocess.call(argv, env=env)
    if code == 0:
        _write({"ok": True, "result": {"exit_code": 0}})
        raise SystemExit(0)
    failure = json.load(open(failure_file)) if os.path.exists(failure_file) else {}
    _write({"ok": False, "type": failure.get("remote_type") or "exit_code",
            "message": failure.get("message") or f"{kind} `{target}` exited with code {code}",
            "traceback": failure.get("traceback") or ""})
    raise SystemExit(1)
target = importlib.import_module(spec["module"])
for part in spec["qualname"].split("."):
    target = getattr(target, part)
fn, args, kwargs = target, spec["args"], spec["kwargs"]
if "--shell" in sys.argv:
    print(f"{spec['module']}:{spec['qualname']} is `fn`; its arguments are `args` and `kwargs`: call fn(*args, **kwargs)")
else:
    try:
        result = fn(*args, **kwargs)
    except BaseException as exc:
        tb = exc.__traceback__.tb_next if exc.__traceback__ is not None else None
        _write({"ok": False, "type": _type_name(type(exc)), "message": str(exc),
                "traceback": "".join(traceback.format_exception(type(exc), exc, tb))})
        raise SystemExit(1)
    _write({"ok": True, "result": result})
"#;

/// `rh_artifacts`, as calls on nodes import it (one source, shared with the node).
const ARTIFACTS_MODULE: &str = include_str!("../../node/python/rh_artifacts.py");
/// The notebook runner nodes use, for notebook entry points.
const NOTEBOOK_RUNNER: &str = include_str!("../../node/python/rh_notebook.py");

/// Why a dispatch could not be set up to run here.
#[derive(Debug, thiserror::Error)]
pub enum ReproduceError {
    #[error(transparent)]
    Client(#[from] Error),
    #[error("{0}")]
    Unsupported(String),
    #[error("{0}")]
    Io(String),
    /// The resolved packages could not be installed here.
    #[error(
        "could not install the call's packages here ({packages}): {detail}\n\
         (a GPU-only or platform-specific wheel, say); use --no-install (Python: install=False) to run with \
         the current environment instead"
    )]
    Install { packages: String, detail: String },
}

/// A dispatch set up to run here.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub record: RunRecord,
    /// The folder everything lives in; the bundle is unpacked in `src`.
    pub dir: PathBuf,
    pub src: PathBuf,
    /// The interpreter to run it with.
    pub python: PathBuf,
    /// The call file the runner reads (module, qualname, arguments, outcome path).
    pub call_file: PathBuf,
    pub outcome_file: PathBuf,
}

/// Downloads, unpacks and (unless `install` is false) installs what the
/// dispatch ran with, under `dir` (default: a folder in the temp dir named
/// after the dispatch) and a virtualenv cached by its package set.
pub async fn prepare(
    client: &Client,
    id: DispatchId,
    dir: Option<PathBuf>,
    install: bool,
) -> Result<Prepared, ReproduceError> {
    let record = client.dispatch_record(id).await?;
    if record.method.is_some() {
        return Err(ReproduceError::Unsupported(
            "this is a method call of an instance: its object's state lived in its worker, so it cannot be \
             run again on its own; reproduce the calls that built that state as a function instead"
                .into(),
        ));
    }
    let entry = wire::EntryPoint::parse(&record.function).map_err(ReproduceError::Unsupported)?;
    let (module, qualname, program) = match entry {
        wire::EntryPoint::Function { module, qualname } => (module.to_owned(), qualname.to_owned(), None),
        other => {
            let (kind, target) = other.program().expect("not a function");
            (String::new(), target.to_owned(), Some(kind))
        }
    };
    let io = |what: &str, err: std::io::Error| ReproduceError::Io(format!("{what}: {err}"));
    let dir = dir.unwrap_or_else(|| std::env::temp_dir().join(format!("rh-reproduce-{id}")));
    let src = dir.join("src");
    if src.exists() {
        std::fs::remove_dir_all(&src).map_err(|e| io("cannot clear the old copy", e))?;
    }
    std::fs::create_dir_all(&src).map_err(|e| io(&format!("cannot create {}", src.display()), e))?;
    if let Some(sha) = &record.bundle {
        let bytes = client.bundle_download(sha).await?;
        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(bytes.as_slice()));
        archive.unpack(&src).map_err(|e| io("cannot unpack the bundle", e))?;
    }
    let python =
        if install && !record.run.packages.is_empty() { environment(&record).await? } else { PathBuf::from("python3") };
    let lib = dir.join("lib");
    std::fs::create_dir_all(&lib).map_err(|e| io(&format!("cannot create {}", lib.display()), e))?;
    for (name, text) in [("rh_artifacts.py", ARTIFACTS_MODULE), ("rh_notebook.py", NOTEBOOK_RUNNER)] {
        std::fs::write(lib.join(name), text).map_err(|e| io(&format!("cannot write {name}"), e))?;
    }
    let call_file = dir.join("call.json");
    let outcome_file = dir.join("outcome.json");
    let _ = std::fs::remove_file(&outcome_file);
    let call = json!({
        "src": src, "module": module, "qualname": qualname, "args": record.args, "kwargs": record.kwargs,
        "outcome": outcome_file, "program": program, "lib": lib, "outputs": dir.join("outputs"),
    });
    std::fs::write(&call_file, call.to_string()).map_err(|e| io("cannot write the call file", e))?;
    Ok(Prepared { record, dir, src, python, call_file, outcome_file })
}

/// A virtualenv holding exactly the record's resolved packages, made once per set.
async fn environment(record: &RunRecord) -> Result<PathBuf, ReproduceError> {
    let pins: Vec<String> = record.run.packages.iter().map(|p| format!("{}=={}", p.name, p.version)).collect();
    let hash = hex::encode(Sha256::digest(pins.join("\n").as_bytes()));
    let cache = std::env::var_os("RH_REPRODUCE_CACHE").map(PathBuf::from).unwrap_or_else(|| {
        let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(std::env::temp_dir);
        home.join(".cache/runhouse-gateway/reproduce")
    });
    let venv = cache.join(&hash[..24]);
    let python = venv.join("bin/python");
    if python.exists() {
        return Ok(python);
    }
    let io = |what: &str, err: std::io::Error| ReproduceError::Io(format!("{what}: {err}"));
    std::fs::create_dir_all(&cache).map_err(|e| io("cannot create the environment cache", e))?;
    let staging = cache.join(format!(".tmp-{}", uuid::Uuid::new_v4().simple()));
    run_quiet(Command::new("python3").arg("-m").arg("venv").arg(&staging), "python3 -m venv").await?;
    let pip = staging.join("bin/pip");
    let installed = run_quiet(
        Command::new(&pip).args(["install", "--quiet", "--disable-pip-version-check", "--no-input"]).args(&pins),
        "pip install",
    )
    .await;
    if let Err(err) = installed {
        let _ = std::fs::remove_dir_all(&staging);
        return Err(ReproduceError::Install { packages: pins.join(" "), detail: err.to_string() });
    }
    std::fs::rename(&staging, &venv).map_err(|e| io("cannot keep the environment", e))?;
    Ok(python)
}

use tokio::process::Command;

async fn run_quiet(command: &mut Command, what: &str) -> Result<(), ReproduceError> {
    let output = command.output().await.map_err(|e| ReproduceError::Io(format!("cannot run {what}: {e}")))?;
    if output.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    let tail: Vec<&str> = stderr.lines().rev().take(8).collect::<Vec<_>>().into_iter().rev().collect();
    Err(ReproduceError::Io(format!("{what} failed: {}", tail.join("\n"))))
}

/// How a local run ended.
#[derive(Debug, Clone)]
pub enum LocalOutcome {
    Returned(Value),
    Raised {
        kind: String,
        message: String,
        traceback: String,
    },
    /// The interpreter exited without an outcome (the entry point could not be imported, say).
    Crashed(i32),
}

/// Reads what the runner wrote after the interpreter exited with `code`.
pub fn outcome(prepared: &Prepared, code: i32) -> LocalOutcome {
    let written = std::fs::read_to_string(&prepared.outcome_file).ok();
    let Some(value) = written.and_then(|text| serde_json::from_str::<Value>(&text).ok()) else {
        return LocalOutcome::Crashed(code);
    };
    if value["ok"] == true {
        return LocalOutcome::Returned(value["result"].clone());
    }
    let text = |key: &str| value[key].as_str().unwrap_or_default().to_owned();
    LocalOutcome::Raised { kind: text("type"), message: text("message"), traceback: text("traceback") }
}

/// The argv that runs the prepared call (`shell`: bind it and stay in `python -i`).
pub fn command(prepared: &Prepared, shell: bool) -> std::process::Command {
    let mut command = std::process::Command::new(&prepared.python);
    if shell {
        command.arg("-i");
    }
    command.arg("-c").arg(RUNNER).arg(&prepared.call_file);
    if shell {
        command.arg("--shell");
    }
    command.current_dir(&prepared.src);
    command
}

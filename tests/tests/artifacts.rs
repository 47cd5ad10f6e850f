//! Artifacts (files a call keeps under `$RH_OUTPUTS`) and programs as entry
//! points (scripts, shell commands, notebooks), through a real gateway, a
//! real node and real Python. The S3 store is tested against moto in `clouds.rs`.

use std::time::Duration;

use e2e::{bin_dir, process_alive, Stack};
use gateway::auth::NodeBinding;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

async fn download(stack: &Stack, id: &str, encoded_path: &str) -> reqwest::Response {
    stack
        .client
        .get(format!("{}/v1/dispatches/{id}/artifacts/{encoded_path}", stack.url))
        .bearer_auth(stack.admin_token())
        .send()
        .await
        .unwrap()
}

/// A node credential for node `name` of cluster `local`.
fn node_token(stack: &Stack, name: &str) -> String {
    let binding = NodeBinding { cluster: "local".into(), name: name.into() };
    stack.keys.mint_node("default", &binding, Duration::from_secs(600), &uuid::Uuid::new_v4().to_string()).unwrap().0
}

#[tokio::test]
async fn a_call_keeps_what_it_writes_and_it_downloads_byte_exact() {
    let stack = Stack::start().await.unwrap();
    let _node = stack.start_node("n1", "local", 2).await.unwrap();
    let bundle = stack.fixture_bundle().await;

    let id = stack.dispatch(&bundle, "pkg.jobs:plot_to_outputs", json!([7]), json!({})).await;
    let done = stack.wait(&id, 60).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    let (status, list) = stack.get(&format!("/v1/dispatches/{id}/artifacts")).await;
    assert_eq!(status, 200, "{list}");
    let paths: Vec<&str> = list["items"].as_array().unwrap().iter().map(|a| a["path"].as_str().unwrap()).collect();
    assert_eq!(paths, ["plot.png", "plots/second.png"]);
    let plot = &list["items"][0];
    assert_eq!(plot["sha256"], done["result"]["plot.png"], "{list}");
    assert_eq!(plot["size_bytes"], done["result"]["size"]);
    assert_eq!(plot["content_type"], "image/png");

    let response = download(&stack, &id, "plot.png").await;
    assert_eq!(response.status(), 200);
    let headers = response.headers().clone();
    assert_eq!(headers["content-type"], "image/png");
    assert_eq!(headers["x-content-type-options"], "nosniff");
    assert!(headers["content-disposition"].to_str().unwrap().starts_with("attachment"), "{headers:?}");
    assert!(headers["content-security-policy"].to_str().unwrap().contains("sandbox"));
    let bytes = response.bytes().await.unwrap();
    assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"));
    assert_eq!(hex::encode(Sha256::digest(&bytes)), done["result"]["plot.png"].as_str().unwrap());
    // A path in a folder is one percent-encoded segment.
    let second = download(&stack, &id, "plots%2Fsecond.png").await;
    assert_eq!(second.status(), 200);
    assert_eq!(
        hex::encode(Sha256::digest(second.bytes().await.unwrap())),
        list["items"][1]["sha256"].as_str().unwrap()
    );
    // The record lists them; the log says so.
    let record = stack.record(&id).await;
    assert_eq!(record["artifacts"].as_array().map(Vec::len), Some(2), "{record}");
    let (_, page) = stack.get(&format!("/v1/dispatches/{id}/logs")).await;
    let system: Vec<&str> = page["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["stream"] == "system")
        .map(|e| e["text"].as_str().unwrap())
        .collect();
    assert!(system.iter().any(|t| t.contains("kept 2 artifact(s): plot.png")), "{system:?}");

    // A returned reference from the helper module: the file is kept under the name it gave.
    let id2 = stack.dispatch(&bundle, "pkg.jobs:keep_reference", json!(["the summary"]), json!({})).await;
    let done2 = stack.wait(&id2, 60).await;
    assert_eq!(done2["result"], json!({"artifact": "notes/summary.txt", "size_bytes": 11}), "{done2}");
    let text = download(&stack, &id2, "notes%2Fsummary.txt").await.text().await.unwrap();
    assert_eq!(text, "the summary");

    // A child process sees the call's own folder; the next call on the same warm worker, its own.
    let mut folders = Vec::new();
    for name in ["first.txt", "second.txt"] {
        let id = stack.dispatch(&bundle, "pkg.jobs:shell_to_outputs", json!([name]), json!({})).await;
        let done = stack.wait(&id, 60).await;
        assert_eq!(done["state"], "succeeded", "{done}");
        let (python, c) = (&done["result"][0], &done["result"][1]);
        assert_eq!(python, c, "os.environ and the process environment disagree: {done}");
        folders.push(python.clone());
        let (_, list) = stack.get(&format!("/v1/dispatches/{id}/artifacts")).await;
        let paths: Vec<&str> = list["items"].as_array().unwrap().iter().map(|a| a["path"].as_str().unwrap()).collect();
        assert_eq!(paths, [name], "{list}");
    }
    assert_ne!(folders[0], folders[1]);

    // `rh artifacts get` writes them under --out, keeping folders.
    let out = stack.work.join("downloaded");
    let cli = std::process::Command::new(bin_dir().join("rh"))
        .args(["artifacts", "get", &id, "--out"])
        .arg(&out)
        .env("RH_GATEWAY_URL", &stack.url)
        .env("RH_TOKEN", stack.admin_token())
        .output()
        .unwrap();
    assert!(cli.status.success(), "{}", String::from_utf8_lossy(&cli.stderr));
    assert_eq!(std::fs::read(out.join("plot.png")).unwrap(), bytes.to_vec());
    assert!(out.join("plots/second.png").is_file());

    // Another project cannot see them.
    let other = stack.keys.mint("someone", "other", &[gateway::auth::Scope::DispatchRead], Duration::from_secs(60));
    let response = stack
        .client
        .get(format!("{}/v1/dispatches/{id}/artifacts/plot.png", stack.url))
        .bearer_auth(other.unwrap().0)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
}

#[tokio::test]
async fn a_thread_a_call_left_behind_cannot_write_into_a_later_calls_outputs() {
    let stack = Stack::start().await.unwrap();
    // One worker: every later call runs in the process the thread lives in.
    let _node = stack.start_node("n1", "local", 1).await.unwrap();
    let bundle = stack.fixture_bundle().await;
    let (gate, report) = (stack.work.join("late-gate"), stack.work.join("late-report"));
    let args = json!([gate.display().to_string(), report.display().to_string()]);
    let id = stack.dispatch(&bundle, "pkg.jobs:leave_writer", args, json!({})).await;
    assert_eq!(stack.wait(&id, 60).await["result"], "left");
    // More calls than the node looks at in one batch when it recycles
    // output folders, so the next call's folder may well be a recycled one.
    for _ in 0..10 {
        let id = stack.dispatch(&bundle, "pkg.jobs:noop", json!([]), json!({})).await;
        assert_eq!(stack.wait(&id, 60).await["state"], "succeeded");
    }
    // A later call holds its folder while the thread writes.
    let (started, through) = (stack.work.join("later-started"), stack.work.join("later-gate"));
    let args = json!([started.display().to_string(), through.display().to_string()]);
    let later = stack.dispatch(&bundle, "pkg.jobs:gated_run", args, json!({})).await;
    stack.wait_until(Duration::from_secs(60), "the later call to start", || async { started.exists() }).await.unwrap();
    std::fs::write(&gate, "").unwrap();
    let tried = || async { std::fs::read_to_string(&report).is_ok_and(|r| r.contains("descriptor: ")) };
    stack.wait_until(Duration::from_secs(30), "the thread to try both ways", tried).await.unwrap();
    let tried = std::fs::read_to_string(&report).unwrap();
    std::fs::write(&through, "").unwrap();
    assert_eq!(stack.wait(&later, 60).await["state"], "succeeded");
    let (status, list) = stack.get(&format!("/v1/dispatches/{later}/artifacts")).await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(list["items"], json!([]), "the thread wrote into a later call's outputs ({tried})");
    // Its old folder's path is gone from the moment the call ended.
    assert!(tried.contains("path: FileNotFoundError"), "{tried}");
}

#[tokio::test]
async fn oversized_files_links_and_escaping_paths_are_refused_with_what_to_fix() {
    let stack = Stack::start_with(&[("RH_GATEWAY_ARTIFACTS__MAX_FILE_BYTES", "1000")]).await.unwrap();
    let _node = stack.start_node("n1", "local", 2).await.unwrap();
    let bundle = stack.fixture_bundle().await;

    // The node refuses a file over the limit it learned at registration: the call fails, naming both.
    let id = stack.dispatch(&bundle, "pkg.jobs:write_outputs", json!([5000]), json!({})).await;
    let done = stack.wait(&id, 60).await;
    assert_eq!(done["state"], "failed", "{done}");
    assert_eq!(done["failure"]["code"], "artifact_too_large", "{done}");
    let message = done["failure"]["message"].as_str().unwrap();
    assert!(message.contains("blob.bin") && message.contains("artifacts.max_file_bytes (1000 bytes)"), "{message}");

    // A link out of the folder is never followed.
    let id = stack.dispatch(&bundle, "pkg.jobs:link_outputs", json!(["/etc/passwd"]), json!({})).await;
    let done = stack.wait(&id, 60).await;
    assert_eq!(done["failure"]["code"], "artifact_rejected", "{done}");
    assert!(done["failure"]["message"].as_str().unwrap().contains("symbolic link"), "{done}");
    let (_, list) = stack.get(&format!("/v1/dispatches/{id}/artifacts")).await;
    assert_eq!(list["items"], json!([]));

    // The gateway checks too: paths, the size limit, and who may upload.
    let running = stack.dispatch(&bundle, "pkg.jobs:sleepy", json!([60]), json!({})).await;
    stack
        .wait_until(Duration::from_secs(30), "the call to run", || async {
            stack.get(&format!("/v1/dispatches/{running}")).await.1["state"] == "running"
        })
        .await
        .unwrap();
    let put = |path: &'static str, token: String, body: Vec<u8>| {
        let url = format!("{}/v1/dispatches/{running}/artifacts/{path}", stack.url);
        let client = stack.client.clone();
        async move {
            let response = client.put(url).bearer_auth(token).body(body).send().await.unwrap();
            let status = response.status();
            (status, response.json::<Value>().await.unwrap_or_default())
        }
    };
    let token = node_token(&stack, "n1");
    for path in ["..%2Fescape", "a%2F..%2F..%2Fetc%2Fpasswd", "%2Fetc%2Fpasswd", "a%5Cb"] {
        let (status, body) = put(path, token.clone(), b"x".to_vec()).await;
        assert_eq!(status, 422, "{path}: {body}");
        assert_eq!(body["field"], "path", "{body}");
    }
    let (status, body) = put("big.bin", token.clone(), vec![0; 1001]).await;
    assert_eq!(status, 413, "{body}");
    assert!(body["message"].as_str().unwrap().contains("artifacts.max_file_bytes (1000 bytes)"), "{body}");
    let (status, body) = put("ok.txt", stack.admin_token(), b"x".to_vec()).await;
    assert_eq!(status, 403, "a user token cannot upload: {body}");
    let (status, body) = put("ok.txt", node_token(&stack, "n2"), b"x".to_vec()).await;
    assert!(status == 404 || status == 409, "another node cannot upload: {status} {body}");
    let (status, body) = put("ok.txt", token.clone(), b"first".to_vec()).await;
    assert_eq!(status, 201, "{body}");
    let (status, _) = put("ok.txt", token.clone(), b"first".to_vec()).await;
    assert_eq!(status, 200, "the same bytes again change nothing");
    let (status, body) = put("ok.txt", token, b"other".to_vec()).await;
    assert_eq!(status, 409, "{body}");
    let response = download(&stack, &running, "..%2F..%2Fetc%2Fpasswd").await;
    assert_eq!(response.status(), 404);
    stack.post(&format!("/v1/dispatches/{running}/cancel"), &json!({})).await;
}

#[tokio::test]
async fn scripts_and_shell_commands_run_with_exit_codes_logs_and_outputs() {
    let stack = Stack::start().await.unwrap();
    let _node = stack.start_node("n1", "local", 2).await.unwrap();
    let bundle = stack.fixture_bundle().await;

    let id =
        stack.dispatch(&bundle, "python scripts/exit_with.py", json!(["--code", "3", "--note", "hi"]), json!({})).await;
    let done = stack.wait(&id, 60).await;
    assert_eq!(done["state"], "failed", "{done}");
    assert_eq!(done["failure"]["exit_code"], 3, "{done}");
    assert_eq!(done["failure"]["code"], "program_failed");
    assert!(done["failure"]["message"].as_str().unwrap().contains("exited with code 3"), "{done}");
    assert!(stack.logs(&id).await.0.contains("script says hi"));
    // A failed run keeps its outputs too.
    let text = download(&stack, &id, "report.txt").await.text().await.unwrap();
    assert_eq!(text, "note=hi\n");

    let id = stack.dispatch(&bundle, "python scripts/exit_with.py", json!(["--note", "fine"]), json!({})).await;
    let done = stack.wait(&id, 60).await;
    assert_eq!((done["state"].as_str(), &done["result"]), (Some("succeeded"), &json!({"exit_code": 0})), "{done}");
    let record = stack.record(&id).await;
    assert_eq!(record["function"], "python scripts/exit_with.py");
    assert_eq!(record["args"], json!(["--note", "fine"]));

    let id = stack
        .dispatch(&bundle, "shell echo from-shell \"$1\" && echo to-stderr >&2", json!(["arg one"]), json!({}))
        .await;
    let done = stack.wait(&id, 60).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    let (stdout, stderr) = stack.logs(&id).await;
    assert!(stdout.contains("from-shell arg one"), "{stdout}");
    assert!(stderr.contains("to-stderr"), "{stderr}");
    let id = stack.dispatch(&bundle, "shell exit 7", json!([]), json!({})).await;
    assert_eq!(stack.wait(&id, 60).await["failure"]["exit_code"], 7);

    // What is wrong with a program's request is said before anything runs.
    for (body, field) in [
        (json!({"function": "python ../outside.py", "cluster": "local"}), "function"),
        (json!({"function": "python scripts/exit_with.py", "args": [3], "cluster": "local"}), "args"),
        (
            json!({"function": "notebook notebooks/params.ipynb", "kwargs": {"not valid": 1}, "cluster": "local"}),
            "kwargs",
        ),
        (json!({"function": "ruby x.rb", "cluster": "local"}), "function"),
    ] {
        let (status, error) = stack.post("/v1/dispatches", &body).await;
        assert_eq!(status, 422, "{body}: {error}");
        assert_eq!(error["field"], field, "{error}");
    }

    // Cancel kills the script's whole tree, a setsid grandchild included.
    let pids = stack.work.join("tree.pids");
    let id = stack.dispatch(&bundle, "python scripts/tree.py", json!([pids.display().to_string()]), json!({})).await;
    stack
        .wait_until(Duration::from_secs(30), "the script to start its tree", || async { pids.exists() })
        .await
        .unwrap();
    let pids: Vec<u32> =
        std::fs::read_to_string(&pids).unwrap().split_whitespace().map(|p| p.parse().unwrap()).collect();
    assert!(pids.iter().all(|p| process_alive(*p)));
    stack.post(&format!("/v1/dispatches/{id}/cancel"), &json!({"reason": "test"})).await;
    assert_eq!(stack.wait(&id, 30).await["state"], "cancelled");
    stack
        .wait_until(Duration::from_secs(10), "the script's processes to be gone", || async {
            pids.iter().all(|p| !process_alive(*p))
        })
        .await
        .unwrap();
}

#[tokio::test]
async fn notebooks_run_with_injected_parameters_and_report_a_failing_cell() {
    let wheels = std::env::var("RH_NOTEBOOK_WHEELS").expect(
        "RH_NOTEBOOK_WHEELS is not set: run the tests through `make test` (scripts/test.sh downloads nbclient and \
         ipykernel wheels once)",
    );
    let stack = Stack::start().await.unwrap();
    // pip on the node installs from the downloaded wheels only (a copy the worker user can read).
    let local_wheels = stack.work.join("wheels");
    std::fs::create_dir_all(&local_wheels).unwrap();
    for entry in std::fs::read_dir(&wheels).unwrap().flatten() {
        std::fs::copy(entry.path(), local_wheels.join(entry.file_name())).unwrap();
    }
    let find_links = local_wheels.display().to_string();
    let mut env = vec![("PIP_FIND_LINKS", find_links.as_str()), ("PIP_NO_INDEX", "1")];
    // `make test` keeps the node's requirement environment between runs (installing
    // nbclient and ipykernel is most of this test's time; installing is tested on its own
    // in dispatch_runs.rs).
    let kept_envs = std::env::var("RH_NOTEBOOK_ENVS").ok();
    env.extend(kept_envs.as_deref().map(|dir| ("RH_NODE_ENVS_DIR", dir)));
    let _node = stack.start_node_env("n1", "local", 2, &stack.url, &env).await.unwrap();
    let bundle = stack.fixture_bundle().await;
    let requirements = json!(e2e::notebook_requirements());

    let id = stack
        .dispatch(
            &bundle,
            "notebook notebooks/params.ipynb",
            json!([]),
            json!({"kwargs": {"alpha": 21, "label": "from the test"}, "requirements": requirements}),
        )
        .await;
    let done = stack.wait(&id, 300).await;
    assert_eq!(done["state"], "succeeded", "{done}\n{:?}", stack.logs(&id).await);
    assert_eq!(done["result"], json!({"exit_code": 0, "notebook": "params.ipynb"}));
    assert!(stack.logs(&id).await.0.contains("alpha=21 label=from the test result=42"), "{:?}", stack.logs(&id).await);
    assert_eq!(download(&stack, &id, "summary.txt").await.text().await.unwrap(), "42");
    let executed: Value = download(&stack, &id, "params.ipynb").await.json().await.unwrap();
    let cells = executed["cells"].as_array().unwrap();
    assert_eq!(cells[1]["metadata"]["tags"], json!(["injected-parameters"]), "right after the parameters cell");
    // nbformat writes a cell's source as a list of lines.
    let source: String = match &cells[1]["source"] {
        Value::Array(lines) => lines.iter().filter_map(Value::as_str).collect(),
        other => other.as_str().unwrap_or_default().to_owned(),
    };
    assert!(source.contains("alpha = 21"), "{source}");

    let id = stack
        .dispatch(&bundle, "notebook notebooks/fails.ipynb", json!([]), json!({"requirements": requirements}))
        .await;
    let done = stack.wait(&id, 120).await;
    assert_eq!(done["state"], "failed", "{done}");
    let failure = &done["failure"];
    assert_eq!(failure["remote_type"], "ValueError", "{failure}");
    assert!(failure["message"].as_str().unwrap().contains("bad value 1"), "{failure}");
    let traceback = failure["traceback"].as_str().unwrap();
    assert!(traceback.contains("step(x)") && !traceback.contains('\u{1b}'), "{traceback}");
    assert!(stack.logs(&id).await.0.contains("before the failure"));
    assert!(download(&stack, &id, "fails.ipynb").await.status().is_success(), "the executed notebook is kept");

    // Cancel kills the notebook's kernel too.
    let pidfile = stack.work.join("kernel.pid");
    let id = stack
        .dispatch(
            &bundle,
            "notebook notebooks/sleeps.ipynb",
            json!([]),
            json!({"kwargs": {"pidfile": pidfile.display().to_string()}, "requirements": requirements}),
        )
        .await;
    stack.wait_until(Duration::from_secs(60), "the kernel to start", || async { pidfile.exists() }).await.unwrap();
    let kernel: u32 = std::fs::read_to_string(&pidfile).unwrap().trim().parse().unwrap();
    assert!(process_alive(kernel));
    stack.post(&format!("/v1/dispatches/{id}/cancel"), &json!({})).await;
    assert_eq!(stack.wait(&id, 30).await["state"], "cancelled");
    stack
        .wait_until(Duration::from_secs(10), "the kernel to be gone", || async { !process_alive(kernel) })
        .await
        .unwrap();
}

//! The `rh` CLI against a real stack.

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use e2e::Stack;
use serde_json::Value;

fn rh(stack: &Stack, args: &[&str]) -> Output {
    Command::new(e2e::bin_dir().join("rh"))
        .args(args)
        .env("RH_GATEWAY_URL", &stack.url)
        .env("RH_TOKEN", stack.admin_token())
        .output()
        .expect("run rh")
}

fn json(output: &Output) -> Value {
    assert!(output.status.success(), "rh failed: {}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&output.stdout)))
}

fn jobs_file() -> String {
    e2e::workspace_root().join("tests/fixtures/project/pkg/jobs.py").display().to_string()
}

#[tokio::test]
async fn deploy_then_dispatch_by_name_streams_output_and_prints_the_result() {
    let stack = Stack::start().await.unwrap();
    let _node = stack.start_node("n1", "local", 4).await.unwrap();
    let deployed = json(&rh(
        &stack,
        &["deploy", &format!("{}:hello", jobs_file()), "--name", "greet", "--cluster", "local", "--json"],
    ));
    assert_eq!(deployed["function"], "pkg.jobs:hello");
    assert_eq!(deployed["uploaded"], true);
    let again = json(&rh(
        &stack,
        &["deploy", &format!("{}:hello", jobs_file()), "--name", "greet", "--cluster", "local", "--json"],
    ));
    assert_eq!(again["uploaded"], false, "unchanged code was uploaded again");

    let output = rh(&stack, &["dispatch", "greet", "--arg", "ada", "--wait"]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.starts_with("hello ada\n"), "{stdout}");
    assert!(stdout.contains("\"greeting\": \"hi ada\""), "{stdout}");
    assert!(String::from_utf8_lossy(&output.stderr).contains("a warning"));
}

#[tokio::test]
async fn status_ls_logs_and_cancel_work_in_tables_and_json() {
    let stack = Stack::start().await.unwrap();
    let _node = stack.start_node("n1", "local", 4).await.unwrap();
    let bundle = stack.fixture_bundle().await;
    let created = json(&rh(
        &stack,
        &[
            "dispatch",
            "pkg.jobs:sleepy",
            "--arg",
            "600",
            "--bundle",
            &bundle,
            "--cluster",
            "local",
            "--label",
            "suite=cli",
            "--json",
        ],
    ));
    let id = created["id"].as_str().unwrap().to_owned();

    let deadline = Instant::now() + Duration::from_secs(30);
    while json(&rh(&stack, &["status", &id, "--json"]))["state"] != "running" {
        assert!(Instant::now() < deadline, "never started");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let table = rh(&stack, &["ls", "--label", "suite=cli"]);
    let table = String::from_utf8_lossy(&table.stdout).into_owned();
    assert!(
        table.starts_with("ID") && table.contains("STATE") && table.contains(&id) && table.contains("running"),
        "{table}"
    );
    let listed = json(&rh(&stack, &["ls", "--state", "running", "--json"]));
    assert_eq!(listed.as_array().unwrap().len(), 1);

    while !String::from_utf8_lossy(&rh(&stack, &["logs", &id]).stdout).contains("pid ") {
        assert!(Instant::now() < deadline, "no output");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let cancelled = json(&rh(&stack, &["cancel", &id, "--reason", "done here", "--json"]));
    assert!(cancelled["state"] == "cancelling" || cancelled["state"] == "cancelled", "{cancelled}");
    let status = rh(&stack, &["status", &id]);
    assert!(String::from_utf8_lossy(&status.stdout).contains("ID"), "a table by default");
    let followed = rh(&stack, &["logs", "-f", &id]);
    assert!(followed.status.success());
    assert!(String::from_utf8_lossy(&followed.stdout).contains("pid "), "follow ends once the run has ended");
}

#[tokio::test]
async fn a_remote_failure_exits_3_with_the_remote_traceback() {
    let stack = Stack::start().await.unwrap();
    let _node = stack.start_node("n1", "local", 4).await.unwrap();
    let bundle = stack.fixture_bundle().await;
    let output = rh(&stack, &["dispatch", "pkg.jobs:boom", "--bundle", &bundle, "--cluster", "local", "--wait"]);
    assert_eq!(output.status.code(), Some(3));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("Traceback") && stderr.contains("remote ValueError: learning rate must be positive"),
        "{stderr}"
    );
}

#[tokio::test]
async fn ctrl_c_while_waiting_cancels_the_remote_run_when_asked_to() {
    let stack = Stack::start().await.unwrap();
    let _node = stack.start_node("n1", "local", 4).await.unwrap();
    let bundle = stack.fixture_bundle().await;
    let child = Command::new(e2e::bin_dir().join("rh"))
        .args(["dispatch", "pkg.jobs:sleepy", "--arg", "600", "--bundle", &bundle, "--cluster", "local"])
        .args(["--label", "suite=interrupt", "--wait", "--cancel-on-interrupt"])
        .env("RH_GATEWAY_URL", &stack.url)
        .env("RH_TOKEN", stack.admin_token())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let id = loop {
        let (_, page) = stack.get("/v1/dispatches?label=suite=interrupt&state=running").await;
        if let Some(id) = page["items"][0]["id"].as_str() {
            break id.to_owned();
        }
        assert!(Instant::now() < deadline, "never started");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGINT).unwrap();
    let output = child.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(130), "{}", String::from_utf8_lossy(&output.stderr));
    let done = stack.wait(&id, 30).await;
    assert_eq!(done["state"], "cancelled", "{done}");
    assert_eq!(done["cancellation"]["reason"], "interrupted from rh");
}

#[tokio::test]
async fn a_wrong_token_gets_a_clear_error() {
    let stack = Stack::start().await.unwrap();
    let output = Command::new(e2e::bin_dir().join("rh"))
        .args(["ls"])
        .env("RH_GATEWAY_URL", &stack.url)
        .env("RH_TOKEN", "not-a-token")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("unauthenticated") && stderr.contains("malformed"), "{stderr}");
}

#[tokio::test]
async fn schedules_are_created_listed_paused_resumed_and_removed_from_the_cli() {
    let stack = Stack::start().await.unwrap();
    let created = json(&rh(
        &stack,
        &[
            "schedule",
            "create",
            "nightly",
            "--cron",
            "30 2 * * *",
            "--timezone",
            "Europe/Berlin",
            "--overlap",
            "skip",
            "pipeline.train:fit",
            "--arg",
            "0.01",
            "--cluster",
            "train",
            "--json",
        ],
    ));
    assert_eq!(created[0]["name"], "nightly");
    assert_eq!(created[0]["overlap"], "skip");
    assert_eq!(created[0]["dispatch"]["args"], serde_json::json!([0.01]));
    assert_eq!(created[0]["upcoming"].as_array().unwrap().len(), 5);

    let listed = rh(&stack, &["schedule", "ls"]);
    let text = String::from_utf8_lossy(&listed.stdout);
    assert!(text.starts_with("nightly\t30 2 * * *\tEurope/Berlin\tactive\tnext 20"), "{text}");

    let paused = json(&rh(&stack, &["schedule", "pause", "nightly", "--json"]));
    assert_eq!(paused[0]["paused"], true);
    let resumed = json(&rh(&stack, &["schedule", "resume", "nightly", "--json"]));
    assert_eq!(resumed[0]["paused"], false);
    assert!(resumed[0]["next_fire_at"].is_string());

    let bad = rh(&stack, &["schedule", "create", "x", "--cron", "*/5 * * *", "m:f", "--cluster", "c"]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("4 fields"), "{}", String::from_utf8_lossy(&bad.stderr));
    let bad = rh(&stack, &["schedule", "create", "x", "--cron", "@daily", "--overlap", "sometimes", "m:f"]);
    assert_eq!(bad.status.code(), Some(2), "a bad choice is a usage error");

    let removed = rh(&stack, &["schedule", "rm", "nightly"]);
    assert!(removed.status.success());
    let gone = rh(&stack, &["schedule", "show", "nightly"]);
    assert_eq!(gone.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&gone.stderr).contains("not found"));
}

#[tokio::test]
async fn reproduce_runs_a_failed_dispatch_again_here_and_fails_the_same_way() {
    let stack = Stack::start().await.unwrap();
    let _node = stack.start_node("n1", "local", 4).await.unwrap();
    let bundle = stack.fixture_bundle().await;
    let failed = stack.dispatch(&bundle, "pkg.jobs:boom", serde_json::json!([]), serde_json::json!({})).await;
    let done = stack.wait(&failed, 60).await;
    assert_eq!(done["state"], "failed", "{done}");
    let good = stack.dispatch(&bundle, "pkg.jobs:hello", serde_json::json!(["ada"]), serde_json::json!({})).await;
    assert_eq!(stack.wait(&good, 60).await["state"], "succeeded");
    // The record is written when the call starts, in the background: wait for it.
    for id in [&failed, &good] {
        stack
            .wait_until(Duration::from_secs(30), "the run record", || async {
                stack.get(&format!("/v1/dispatches/{id}/record")).await.0.is_success()
            })
            .await
            .unwrap();
    }

    // From a fresh folder: the same exception, with the exit code of a failed run.
    let dir = stack.work.join("reproduce-boom");
    let output = rh(&stack, &["reproduce", &failed, "--dir", dir.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("local ValueError: learning rate must be positive"), "{stderr}");
    assert!(stderr.contains("remote: ValueError: learning rate must be positive"), "{stderr}");
    assert!(stderr.contains("jobs.py") && stderr.contains("in boom"), "the local traceback: {stderr}");
    assert!(dir.join("src/pkg/jobs.py").is_file(), "the bundle is unpacked where asked");

    let output = rh(&stack, &["reproduce", &good, "--json"]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.starts_with("hello ada\n"), "the call's output is printed: {stdout}");
    let outcome: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(outcome["result"]["greeting"], "hi ada", "{outcome}");
    assert_ne!(outcome["result"]["pid"], Value::Null);

    // A dispatch that never started has no record yet: a clear 404.
    let (status, queued) = stack
        .post(
            "/v1/dispatches",
            &serde_json::json!({"function": "pkg.jobs:hello", "cluster": "nowhere", "bundle": bundle}),
        )
        .await;
    assert_eq!(status, 201);
    let output = rh(&stack, &["reproduce", queued["id"].as_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("when the call starts"), "{stderr}");
}

#[tokio::test]
async fn a_run_record_names_the_git_commit_of_the_packed_project_and_whether_it_was_dirty() {
    let stack = Stack::start().await.unwrap();
    let _node = stack.start_node("n1", "local", 2).await.unwrap();
    let project = stack.work.join("gitproject");
    std::fs::create_dir_all(project.join("pkg")).unwrap();
    std::fs::write(project.join("pyproject.toml"), "[project]\nname = \"gitproject\"\n").unwrap();
    std::fs::write(project.join("pkg/__init__.py"), "").unwrap();
    std::fs::write(project.join("pkg/steps.py"), "def answer():\n    return 42\n").unwrap();
    let git = |args: &[&str]| {
        let out = Command::new("git")
            .arg("-C")
            .arg(&project)
            .args(["-c", "user.name=t", "-c", "user.email=t@example.com"])
            .args(args)
            .output()
            .expect("run git");
        assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    git(&["init", "-q"]);
    git(&["add", "."]);
    git(&["commit", "-q", "-m", "first"]);
    let head = git(&["rev-parse", "HEAD"]);
    let file = project.join("pkg/steps.py").display().to_string();
    let source_of_a_run = |stack: &Stack| {
        let output = rh(stack, &["dispatch", "answer", "--wait", "--json"]);
        let dispatch = json(&output);
        dispatch["id"].as_str().unwrap().to_owned()
    };
    let stack = &stack;
    json(&rh(stack, &["deploy", &format!("{file}:answer"), "--name", "answer", "--cluster", "local", "--json"]));
    let clean = stack.record(&source_of_a_run(stack)).await;
    assert_eq!(clean["source"]["git_commit"], head.as_str(), "{clean}");
    assert_eq!(clean["source"]["git_dirty"], false, "{clean}");
    assert!(clean["source"]["packer"].as_str().unwrap().starts_with("rh-sdk "), "{clean}");

    std::fs::write(project.join("pkg/steps.py"), "def answer():\n    return 43\n").unwrap();
    json(&rh(stack, &["deploy", &format!("{file}:answer"), "--name", "answer", "--cluster", "local", "--json"]));
    let dirty = stack.record(&source_of_a_run(stack)).await;
    assert_eq!(dirty["source"]["git_commit"], head.as_str(), "{dirty}");
    assert_eq!(dirty["source"]["git_dirty"], true, "{dirty}");
}

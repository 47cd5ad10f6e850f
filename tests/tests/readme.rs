//! The README's curl walkthrough, run verbatim against `rh-gateway dev`.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const README: &str = include_str!("../../README.md");

fn walkthrough() -> String {
    block_between("walkthrough")
}

/// The `sh` block between `<!-- NAME:start -->` and `<!-- NAME:end -->`.
fn block_between(name: &str) -> String {
    let start = README.find(&format!("<!-- {name}:start -->")).expect("start marker");
    let end = README.find(&format!("<!-- {name}:end -->")).expect("end marker");
    let block = &README[start..end];
    let code_start = block.find("```sh\n").expect("a sh block") + "```sh\n".len();
    let code_end = block[code_start..].find("```").expect("closed block") + code_start;
    block[code_start..code_end].to_owned()
}

#[tokio::test]
async fn the_readme_walkthrough_works_verbatim() {
    let mut script = walkthrough();
    // The README assumes `make run`'s default port; only if something else holds it, move over.
    let port = if std::net::TcpListener::bind("127.0.0.1:8080").is_ok() {
        8080
    } else {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        script = script.replace("127.0.0.1:8080", &format!("127.0.0.1:{port}"));
        port
    };
    let dir = std::env::temp_dir().join(format!("rh-readme-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut dev = Command::new(e2e::bin_dir().join("rh-gateway"))
        .args(["dev", "--listen", &format!("127.0.0.1:{port}")])
        .current_dir(&dir)
        .env_remove("DATABASE_URL")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !client.get(format!("http://127.0.0.1:{port}/readyz")).send().await.is_ok_and(|r| r.status().is_success()) {
        assert!(Instant::now() < deadline, "rh-gateway dev did not come up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let output = Command::new("bash").args(["-euo", "pipefail", "-c", &script]).current_dir(&dir).output().unwrap();
    let mut left: Vec<_> = std::fs::read_dir(&dir).unwrap().flatten().map(|e| e.file_name()).collect();
    left.sort();
    assert_eq!(left, [".rh"], "the walkthrough leaves nothing behind in the folder it runs in");
    let _ = Command::new("kill").args(["-INT", &dev.id().to_string()]).status();
    let _ = dev.wait();
    let _ = std::fs::remove_dir_all(&dir);

    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "the walkthrough failed:\n{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    let lines: Vec<&str> = stdout.lines().collect();
    let id = lines[0].strip_prefix("created ").expect("first line names the dispatch");
    assert_eq!(lines[1], id, "the idempotent retry returned another dispatch");
    assert_eq!(lines[2], "queued");
    assert!(lines[3].contains("no cluster `gpu` exists"), "{stdout}");
    assert_eq!(lines[4], "queued");
    assert!(lines[5].contains("'reason': 'walkthrough done'"), "{stdout}");
    assert_eq!(lines[6], id);
    assert_eq!(lines[7], "walkthrough done");
    assert_eq!(lines[8], "{'accuracy': 0.97, 'epochs': 3, 'lr': 0.1}", "{stdout}");
    assert_eq!(&lines[9..12], ["epoch 0: loss 0.100", "epoch 1: loss 0.050", "epoch 2: loss 0.033"], "{stdout}");
    assert_eq!(lines[12], "{'accuracy': 0.97, 'epochs': 1, 'lr': 0.2}", "the one-request call: {stdout}");
}

/// Runs the README block `name` against a fresh `rh-gateway dev` whose `local`
/// node is ready, on free ports standing for 8080 and 8081; returns its output.
async fn run_block(name: &str) -> String {
    let mut script = block_between(name);
    let free = || std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let (port, port2) = (free(), free());
    script = script.replace("127.0.0.1:8080", &format!("127.0.0.1:{port}"));
    script = script.replace("127.0.0.1:8081", &format!("127.0.0.1:{port2}"));
    let dir = std::env::temp_dir().join(format!("rh-readme-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut dev = Command::new(e2e::bin_dir().join("rh-gateway"))
        .args(["dev", "--listen", &format!("127.0.0.1:{port}")])
        .current_dir(&dir)
        .env_remove("DATABASE_URL")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let client = reqwest::Client::new();
    let admin = dir.join(".rh/admin-token");
    let deadline = Instant::now() + Duration::from_secs(60);
    // Ready, and its `local` node too (the blocks run calls on it).
    loop {
        assert!(Instant::now() < deadline, "rh-gateway dev did not come up with its node");
        if let Ok(token) = std::fs::read_to_string(&admin) {
            let nodes = client.get(format!("http://127.0.0.1:{port}/v1/nodes")).bearer_auth(token.trim()).send().await;
            if let Ok(response) = nodes {
                let body: serde_json::Value = response.json().await.unwrap_or_default();
                if body["items"].as_array().is_some_and(|n| n.iter().any(|n| n["state"] == "ready")) {
                    break;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let path = format!("{}:{}", e2e::bin_dir().display(), std::env::var("PATH").unwrap_or_default());
    let output = Command::new("bash")
        .args(["-euo", "pipefail", "-c", &script])
        .current_dir(&dir)
        .env("PATH", path)
        .env_remove("DATABASE_URL")
        .output()
        .unwrap();
    let _ = Command::new("kill").args(["-INT", &dev.id().to_string()]).status();
    let _ = dev.wait();
    let _ = std::fs::remove_dir_all(&dir);
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(output.status.success(), "the {name} block failed:\n{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    stdout
}

#[tokio::test]
async fn the_readme_replicas_walkthrough_works_verbatim() {
    let stdout = run_block("replicas").await;
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines, ["[1, 2, 3]", "ready"], "{stdout}");
}

#[tokio::test]
async fn the_readme_schedules_walkthrough_works_verbatim() {
    let stdout = run_block("schedules").await;
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines, ["heartbeat", "5", "\"tick\"", "True", "204"], "{stdout}");
}

#[tokio::test]
async fn the_readme_objects_walkthrough_works_verbatim() {
    let stdout = run_block("objects").await;
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines,
        [
            "starting",
            "1",
            "2",
            "{'items': ['tea', 'milk'], 'owner': 'ada'}",
            "ready",
            "ready",
            "deleted",
            "instance_deleted"
        ],
        "{stdout}"
    );
}

#[tokio::test]
async fn the_readme_dashboard_sign_in_works_verbatim() {
    let stdout = run_block("dashboard").await;
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines, ["303", "<h1>Runs</h1>", "410"], "{stdout}");
}

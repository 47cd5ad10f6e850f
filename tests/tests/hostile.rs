//! Hostile output from real user code on a real node: every row ends in a
//! terminal state a user can act on, and the code ran exactly once.

use std::time::Duration;

use e2e::Stack;
use serde_json::{json, Value};

/// What a row must end as: a state and a failure code, or a result.
enum Expect {
    Failed(&'static str),
    Succeeded(Value),
}

#[tokio::test]
async fn hostile_outputs_end_the_dispatch_once_and_never_rerun_the_code() {
    // Short grace and heartbeats (over the link too), so a wrongful requeue
    // would happen within the test.
    let stack = Stack::start_with(&[
        ("RH_GATEWAY_NODES__UNACKNOWLEDGED_REQUEUE_S", "1"),
        ("RH_GATEWAY_NODES__HEARTBEAT_INTERVAL_S", "1"),
        ("RH_GATEWAY_NODES__LINKED_HEARTBEAT_INTERVAL_S", "1"),
    ])
    .await
    .unwrap();
    let _node = stack.start_node("n1", "local", 4).await.unwrap();
    let bundle = stack.fixture_bundle().await;
    let counters = stack.work.join("counters");
    std::fs::create_dir_all(&counters).unwrap();
    // The user's code writes its counters here, as the node's worker user.
    std::fs::set_permissions(&counters, std::os::unix::fs::PermissionsExt::from_mode(0o1777)).unwrap();
    let rows = [
        ("nul_output", Expect::Succeeded(json!("ok"))),
        ("nul_result", Expect::Succeeded(json!({"text": "x\u{0}y"}))),
        ("nul_exception", Expect::Failed("user_exception")),
        ("huge", Expect::Failed("result_too_large")),
        ("deep", Expect::Failed("result_not_json")),
        ("bigint", Expect::Failed("result_not_json")),
        ("int_keys", Expect::Failed("result_not_json")),
        ("bad_utf8", Expect::Succeeded(json!("ok"))),
    ];
    for (kind, expect) in rows {
        let counter = counters.join(kind);
        let args = json!([counter.display().to_string(), kind]);
        let id = stack.dispatch(&bundle, "pkg.jobs:counted", args, json!({})).await;
        let done = stack.wait(&id, 60).await;
        match &expect {
            Expect::Failed(code) => {
                assert_eq!(done["state"], "failed", "{kind}: {done}");
                assert_eq!(done["failure"]["code"], *code, "{kind}: {done}");
                assert!(!done["failure"]["message"].as_str().unwrap_or_default().is_empty(), "{kind}: {done}");
            }
            Expect::Succeeded(result) => {
                assert_eq!(done["state"], "succeeded", "{kind}: {done}");
                assert_eq!(&done["result"], result, "{kind}: {done}");
            }
        }
        if kind == "nul_exception" {
            assert_eq!(done["failure"]["message"], "bad\u{0}value", "{done}");
        }
        if kind == "nul_output" {
            assert_eq!(stack.logs(&id).await.0, "a\u{0}b\n");
        }
        if kind == "bad_utf8" {
            assert!(stack.logs(&id).await.0.ends_with(" then text\n"), "{kind}");
        }
        // Two heartbeats after the grace period: a wrongful requeue would have re-run it by now.
        let finished = chrono::DateTime::parse_from_rfc3339(done["finished_at"].as_str().unwrap()).unwrap();
        stack
            .wait_until(Duration::from_secs(20), "heartbeats past the grace period", || async {
                let (_, nodes) = stack.get("/v1/nodes").await;
                nodes["items"][0]["last_heartbeat_at"]
                    .as_str()
                    .and_then(|at| chrono::DateTime::parse_from_rfc3339(at).ok())
                    .is_some_and(|at| at > finished + chrono::Duration::seconds(3))
            })
            .await
            .unwrap();
        let runs = std::fs::read_to_string(&counter).unwrap().lines().count();
        assert_eq!(runs, 1, "{kind}: the code ran {runs} times");
        let (_, after) = stack.get(&format!("/v1/dispatches/{id}")).await;
        assert_eq!(after["state"], done["state"], "{kind}: {after}");
    }
}

#[tokio::test]
async fn a_large_result_returned_while_output_streams_is_never_mistaken_for_a_crash() {
    let stack = Stack::start().await.unwrap();
    let _node = stack.start_node("n1", "local", 4).await.unwrap();
    let bundle = stack.fixture_bundle().await;
    let size = 900 * 1024;
    for round in 0..50 {
        let id = stack.dispatch(&bundle, "pkg.jobs:big_result_while_printing", json!([size]), json!({})).await;
        let done = stack.wait(&id, 60).await;
        assert_eq!(done["state"], "succeeded", "round {round}: {}", done["failure"]);
        assert_eq!(done["result"].as_str().map(str::len), Some(size), "round {round}");
    }
}

#[tokio::test]
async fn user_code_sees_none_of_the_nodes_credentials() {
    let stack = Stack::start().await.unwrap();
    let _node = stack.start_node("n1", "local", 4).await.unwrap();
    let bundle = stack.fixture_bundle().await;
    let id = stack.dispatch(&bundle, "pkg.jobs:private_environment", json!([]), json!({})).await;
    let done = stack.wait(&id, 60).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(done["result"], json!([]), "the call saw the node's variables: {done}");

    // Under a root daemon the call runs as `nobody`, and cannot read the
    // node's saved identity, the daemon's home or its own executable's folder.
    let root = nix::unistd::Uid::effective().is_root();
    let identity = stack.work.join("node-n1/identity-probe");
    std::fs::write(&identity, "secret").unwrap();
    std::fs::set_permissions(&identity, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let probes = [identity.display().to_string(), "/etc/shadow".to_string()];
    let id = stack.dispatch(&bundle, "pkg.jobs:privileges", json!([probes]), json!({})).await;
    let done = stack.wait(&id, 60).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    if root {
        assert_eq!(done["result"]["uid"], 65534, "{done}");
        assert!(done["result"]["readable"].as_object().unwrap().values().all(|r| r == false), "{done}");
        let home = done["result"]["home"].as_str().unwrap();
        assert!(home.ends_with("worker-home"), "{done}");
    } else {
        eprintln!("not root: workers run as the daemon's own user; only the environment was checked");
    }
}

#[tokio::test]
async fn cancel_kills_a_process_that_left_the_workers_process_group() {
    let stack = Stack::start().await.unwrap();
    let _node = stack.start_node("n1", "local", 4).await.unwrap();
    let bundle = stack.fixture_bundle().await;
    let id = stack.dispatch(&bundle, "pkg.jobs:escaper", json!([600]), json!({})).await;
    let escaped = |stdout: &str| stdout.lines().find_map(|l| l.strip_prefix("escaped ")?.trim().parse::<u32>().ok());
    stack
        .wait_until(Duration::from_secs(30), "the call to start its escaper", || async {
            escaped(&stack.logs(&id).await.0).is_some()
        })
        .await
        .unwrap();
    let pid = escaped(&stack.logs(&id).await.0).unwrap();
    assert!(e2e::process_alive(pid));
    stack.post(&format!("/v1/dispatches/{id}/cancel"), &json!({"reason": "test"})).await;
    assert_eq!(stack.wait(&id, 30).await["state"], "cancelled");
    stack
        .wait_until(Duration::from_secs(2), "the escaped process to be gone", || async { !e2e::process_alive(pid) })
        .await
        .unwrap();
}

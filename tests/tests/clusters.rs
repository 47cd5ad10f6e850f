//! Clusters end to end on the `local` and `static` providers: real gateway,
//! real `rh-node` processes joining with join tokens, real Python.

use std::time::{Duration, Instant};

use e2e::{bin_dir, Process, Stack};
use serde_json::{json, Value};

fn pids_of(cluster: &Value) -> Vec<i32> {
    cluster["instances"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|i| i["provider_id"].as_str().and_then(|p| p.parse().ok()))
        .collect()
}

/// True once the process is gone (or only a zombie awaiting its parent's wait).
fn process_gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next()) == Some("Z"),
    }
}

async fn result_of(stack: &Stack, id: &str) -> Value {
    let (status, done) = stack.get(&format!("/v1/dispatches/{id}/wait?timeout_s=60")).await;
    assert!(status.is_success(), "{status} {done}");
    done
}

#[tokio::test]
async fn a_local_cluster_of_two_nodes_runs_work_then_autostops_and_its_processes_are_gone() {
    let stack = Stack::start_with(&[("RH_GATEWAY_COMPUTE__RECONCILE_INTERVAL_S", "1")]).await.unwrap();
    let started = Instant::now();
    let (status, cluster) = stack
        .post(
            "/v1/clusters",
            &json!({"name": "cpu", "spec": {"provider": "local", "count": 2, "autostop_idle_minutes": 0.05}}),
        )
        .await;
    assert_eq!(status, 201, "{cluster}");
    assert_eq!(cluster["state"], "provisioning");
    let (status, dispatch) =
        stack.post("/v1/dispatches", &json!({"function": "json:dumps", "args": [[1, 2]], "cluster": "cpu"})).await;
    assert_eq!(status, 201, "{dispatch}");
    let done = result_of(&stack, dispatch["id"].as_str().unwrap()).await;
    let cold = started.elapsed();
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(done["result"], "[1, 2]");
    println!("cold start, POST /v1/clusters (local, 2 nodes) to first result: {:.0} ms", cold.as_secs_f64() * 1e3);

    let ready = stack.wait_cluster("cpu", "ready", Duration::from_secs(30)).await.unwrap();
    assert_eq!(ready["nodes"].as_array().unwrap().len(), 2, "{ready}");
    let names: Vec<&str> = ready["nodes"].as_array().unwrap().iter().map(|n| n["name"].as_str().unwrap()).collect();
    assert!(names.contains(&"cpu-1") && names.contains(&"cpu-2"), "{names:?}");
    let pids = pids_of(&ready);
    assert_eq!(pids.len(), 2);
    assert!(pids.iter().all(|pid| !process_gone(*pid)));

    // Idle for 3 s (0.05 min) → stopping → terminated, and the node processes exit.
    let ended = stack.wait_cluster("cpu", "terminated", Duration::from_secs(30)).await.unwrap();
    assert!(ended["state_reason"].as_str().unwrap().contains("autostop"), "{ended}");
    stack
        .wait_until(Duration::from_secs(10), "the node processes to exit", || async {
            pids.iter().all(|pid| process_gone(*pid))
        })
        .await
        .unwrap();
    let (_, nodes) = stack.get("/v1/nodes").await;
    assert!(nodes["items"].as_array().unwrap().iter().all(|n| n["state"] == "lost"), "{nodes}");
    // A terminated node's folder (work files, virtualenvs, log) is removed once its process is gone.
    let folders = stack.work.join("local-nodes");
    stack
        .wait_until(Duration::from_secs(10), "the node folders to be removed", || async {
            std::fs::read_dir(&folders).map(|entries| entries.count() == 0).unwrap_or(true)
        })
        .await
        .unwrap();
}

#[tokio::test]
async fn a_dispatch_to_a_profile_brings_the_cluster_up_later_ones_reuse_it_and_autostop_does_not_lose_the_next() {
    let stack = Stack::start_with(&[
        ("RH_GATEWAY_COMPUTE__RECONCILE_INTERVAL_S", "1"),
        ("RH_GATEWAY_PROFILES__TRAIN__PROVIDER", "local"),
        ("RH_GATEWAY_PROFILES__TRAIN__AUTOSTOP_IDLE_MINUTES", "0.05"),
    ])
    .await
    .unwrap();
    let (status, missing) = stack.get("/v1/clusters/train").await;
    assert_eq!(status, 404, "{missing}");

    let body = json!({"function": "json:dumps", "args": ["first"], "cluster": "train"});
    let (status, first) = stack.post("/v1/dispatches", &body).await;
    assert_eq!(status, 201, "{first}");
    // Queued while its cluster comes up (on a loaded machine the node can join
    // before the insert, and then it is placed at once).
    if first["state"] == "queued" {
        assert!(first["queued_reason"].as_str().is_some_and(|r| r.contains("cluster `train`")), "{first}");
    }
    let done = result_of(&stack, first["id"].as_str().unwrap()).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    let (_, cluster) = stack.get("/v1/clusters/train").await;
    assert_eq!(cluster["profile"], "train");

    let (_, second) =
        stack.post("/v1/dispatches", &json!({"function": "json:dumps", "args": ["second"], "cluster": "train"})).await;
    assert_eq!(result_of(&stack, second["id"].as_str().unwrap()).await["state"], "succeeded");
    let (_, again) = stack.get("/v1/clusters/train").await;
    assert_eq!(again["id"], cluster["id"], "the second dispatch reused the cluster");

    stack.wait_cluster("train", "terminated", Duration::from_secs(30)).await.unwrap();
    let (_, third) =
        stack.post("/v1/dispatches", &json!({"function": "json:dumps", "args": ["third"], "cluster": "train"})).await;
    assert_eq!(result_of(&stack, third["id"].as_str().unwrap()).await["state"], "succeeded");
    let (_, revived) = stack.get("/v1/clusters/train").await;
    assert_ne!(revived["id"], cluster["id"], "a stopped cluster comes back as a new one");
    let (_, history) = stack.get("/v1/clusters?all=true").await;
    assert_eq!(history["items"].as_array().unwrap().len(), 2, "{history}");
}

#[tokio::test]
async fn an_existing_host_joins_a_static_cluster_once_and_deleting_the_cluster_revokes_it() {
    let stack = Stack::start_with(&[("RH_GATEWAY_COMPUTE__RECONCILE_INTERVAL_S", "1")]).await.unwrap();
    let (status, cluster) = stack
        .post("/v1/clusters", &json!({"name": "lab", "spec": {"provider": "static", "labels": {"site": "lab"}}}))
        .await;
    assert_eq!(status, 201, "{cluster}");
    let (status, token) = stack.post("/v1/clusters/lab/join-tokens", &json!({})).await;
    assert_eq!(status, 201, "{token}");
    let join = token["join_token"].as_str().unwrap().to_owned();
    assert!(token["command"].as_str().unwrap().contains(&join));

    let work = stack.work.join("static-host");
    let log = std::fs::File::create(stack.work.join("static-host.log")).unwrap();
    let mut host = Process(
        std::process::Command::new(bin_dir().join("rh-node"))
            .args(["run", "--gateway", &stack.url, "--join", &join])
            .arg("--work-dir")
            .arg(&work)
            .env_remove("RH_NODE_TOKEN")
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let ready = stack.wait_cluster("lab", "ready", Duration::from_secs(30)).await.unwrap();
    let node = &ready["nodes"][0];
    assert_eq!(node["name"], "lab-1");
    assert_eq!(node["labels"]["site"], "lab", "the spec's labels reach the node");

    let (_, dispatch) =
        stack.post("/v1/dispatches", &json!({"function": "json:dumps", "args": [7], "cluster": "lab"})).await;
    assert_eq!(result_of(&stack, dispatch["id"].as_str().unwrap()).await["result"], "7");

    // The token is spent: a second machine cannot join with it.
    let response = stack
        .client
        .post(format!("{}/v1/nodes/join", stack.url))
        .json(&json!({"join_token": join}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    let body: Value = response.json().await.unwrap();
    assert!(body["message"].as_str().unwrap().contains("already used"), "{body}");

    let (status, stopping) = stack.delete("/v1/clusters/lab").await;
    assert_eq!(status, 202, "{stopping}");
    stack.wait_cluster("lab", "terminated", Duration::from_secs(30)).await.unwrap();
    // The host's node token is revoked, so its daemon stops on the next heartbeat.
    let deadline = Instant::now() + Duration::from_secs(15);
    let exit = loop {
        if let Some(status) = host.0.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the static node kept running after its cluster was deleted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(!exit.success());
}

#[tokio::test]
async fn bad_cluster_specs_get_a_4xx_naming_the_field_and_store_nothing() {
    let stack = Stack::start_with(&[
        ("RH_GATEWAY_COMPUTE__GCP__PROJECT", "demo"),
        ("RH_GATEWAY_COMPUTE__GCP__ANONYMOUS", "true"),
        ("RH_GATEWAY_COMPUTE__GCP__ENDPOINT", "http://127.0.0.1:9"),
    ])
    .await
    .unwrap();
    let cases = [
        (json!({"name": "x", "spec": {"provider": "kubernetes"}}), 422, "spec.provider", "unknown provider"),
        (
            json!({"name": "x", "spec": {"provider": "aws", "region": "us-east-1"}}),
            422,
            "spec.provider",
            "not configured",
        ),
        (json!({"name": "x", "spec": {"provider": "gcp"}}), 422, "spec.zone", "`zone` is required"),
        (json!({"name": "x", "spec": {"provider": "local", "count": 0}}), 422, "spec.count", "between 1 and 64"),
        (
            json!({"name": "x", "spec": {"provider": "local", "autostop_idle_minutes": -1}}),
            422,
            "spec.autostop_idle_minutes",
            "more than 0",
        ),
        (json!({"name": "bad name", "spec": {"provider": "local"}}), 422, "name", "1 to 64"),
        (json!({"name": "x", "spec": {"provider": "local", "colour": "red"}}), 422, "", "unknown field `colour`"),
    ];
    for (body, status, field, message) in cases {
        let (got, error) = stack.post("/v1/clusters", &body).await;
        assert_eq!(got.as_u16(), status, "{body} → {error}");
        assert!(error["message"].as_str().unwrap().contains(message), "{body} → {error}");
        if !field.is_empty() {
            assert_eq!(error["field"], field, "{body} → {error}");
        }
    }
    let (_, clusters) = stack.get("/v1/clusters?all=true").await;
    assert_eq!(clusters["items"], json!([]));

    let spec = json!({"name": "dup", "spec": {"provider": "static"}});
    assert_eq!(stack.post("/v1/clusters", &spec).await.0, 201);
    let (status, conflict) = stack.post("/v1/clusters", &spec).await;
    assert_eq!(status, 409);
    assert!(conflict["message"].as_str().unwrap().contains("already live"), "{conflict}");

    // Only admins create clusters.
    let (token, _) =
        stack.keys.mint("user", "default", &[gateway::auth::Scope::DispatchWrite], Duration::from_secs(60)).unwrap();
    let response =
        stack.client.post(format!("{}/v1/clusters", stack.url)).bearer_auth(token).json(&spec).send().await.unwrap();
    assert_eq!(response.status(), 403);
}

#[tokio::test]
async fn a_local_node_that_dies_is_replaced_under_its_name() {
    let stack = Stack::start_with(&[("RH_GATEWAY_COMPUTE__RECONCILE_INTERVAL_S", "1")]).await.unwrap();
    stack.post("/v1/clusters", &json!({"name": "solo", "spec": {"provider": "local"}})).await;
    let ready = stack.wait_cluster("solo", "ready", Duration::from_secs(30)).await.unwrap();
    let old = pids_of(&ready)[0];
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(old), nix::sys::signal::Signal::SIGKILL).unwrap();
    stack
        .wait_until(Duration::from_secs(20), "a replacement node", || async {
            let (_, cluster) = stack.get("/v1/clusters/solo").await;
            let pids = pids_of(&cluster);
            cluster["nodes"].as_array().is_some_and(|n| n.len() == 1) && pids.last().is_some_and(|p| *p != old)
        })
        .await
        .unwrap();
    let (_, dispatch) =
        stack.post("/v1/dispatches", &json!({"function": "json:dumps", "args": [1], "cluster": "solo"})).await;
    assert_eq!(result_of(&stack, dispatch["id"].as_str().unwrap()).await["state"], "succeeded");
    let (_, cluster) = stack.get("/v1/clusters/solo").await;
    assert_eq!(cluster["nodes"][0]["name"], "solo-1");
}

async fn replica(stack: &Stack) -> (Process, String) {
    stack.replica().await.unwrap()
}

#[tokio::test]
async fn three_replicas_bring_up_a_local_cluster_of_two_with_exactly_two_nodes_and_never_fight_over_them() {
    let mut stack = Stack::start().await.unwrap();
    // Only the replicas below, all with the default (shared) local work folder.
    drop(stack.gateway.take());
    let mut replicas = Vec::new();
    for _ in 0..3 {
        replicas.push(replica(&stack).await);
    }
    let admin = stack.admin_token();
    let response = stack
        .client
        .post(format!("{}/v1/clusters", replicas[0].1))
        .bearer_auth(&admin)
        .json(&json!({"name": "pair", "spec": {"provider": "local", "count": 2}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let get = |url: String| {
        let (client, admin) = (stack.client.clone(), admin.clone());
        async move {
            let response = client.get(format!("{url}/v1/clusters/pair")).bearer_auth(admin).send().await.unwrap();
            response.json::<Value>().await.unwrap()
        }
    };
    stack
        .wait_until(Duration::from_secs(60), "the cluster to be ready", || async {
            get(replicas[1].1.clone()).await["state"] == "ready"
        })
        .await
        .unwrap();
    // Let every replica reconcile a few more times: nobody replaces or adds a machine.
    let activations = |url: String| {
        let (client, admin) = (stack.client.clone(), admin.clone());
        async move {
            let response = client.get(format!("{url}/v1/admin/background-tasks")).bearer_auth(admin).send().await;
            let tasks: Value = response.unwrap().json().await.unwrap();
            tasks["provisioner"]["activations"].as_u64().unwrap_or(0)
        }
    };
    let mut before = Vec::new();
    for (_, url) in &replicas {
        before.push(activations(url.clone()).await);
    }
    for ((_, url), start) in replicas.iter().zip(before) {
        stack
            .wait_until(Duration::from_secs(30), "three more reconciles", || async {
                activations(url.clone()).await >= start + 3
            })
            .await
            .unwrap();
    }
    let cluster = get(replicas[2].1.clone()).await;
    assert_eq!(cluster["state"], "ready", "{cluster}");
    let instances = cluster["instances"].as_array().unwrap();
    assert_eq!(instances.len(), 2, "exactly two machines were ever asked for: {cluster}");
    let pids = pids_of(&cluster);
    assert_eq!(pids.len(), 2, "{cluster}");
    assert!(pids.iter().all(|pid| !process_gone(*pid)), "both node processes live: {cluster}");
    assert_eq!(cluster["nodes"].as_array().unwrap().len(), 2, "{cluster}");
}

#[tokio::test]
async fn a_node_no_replica_can_reach_over_http_gets_the_calls_and_cancels_another_replica_places() {
    let stack = Stack::start().await.unwrap();
    let (_second, second_url) = replica(&stack).await;
    // Linked to the second replica only, advertising an address nothing
    // listens on (as a node behind NAT would): the first replica can reach it
    // only through the second.
    let _node = stack
        .start_node_env("hidden", "local", 4, &second_url, &[("RH_NODE_ADVERTISE", "http://127.0.0.1:9")])
        .await
        .unwrap();
    // Registered is not yet linked: until the second replica records that it
    // holds the link, a call goes over HTTP.
    let db = sqlx::PgPool::connect(&stack.database_url).await.unwrap();
    stack
        .wait_until(Duration::from_secs(30), "the node's link to the second replica", || async {
            let linked: Option<bool> =
                sqlx::query_scalar("select link_replica is not null from node where name = 'hidden'")
                    .fetch_optional(&db)
                    .await
                    .unwrap();
            linked == Some(true)
        })
        .await
        .unwrap();
    for i in 0..5 {
        // Created, placed and answered by the first replica.
        let body = json!({"function": "json:dumps", "args": [i], "cluster": "local"});
        let (status, done) = stack.post("/v1/dispatches?wait_s=60", &body).await;
        assert_eq!(status, 201, "{done}");
        assert_eq!((&done["state"], &done["result"]), (&json!("succeeded"), &json!(i.to_string())), "{done}");
        // Sent once: never refused and sent back to the queue.
        let (_, events) = stack.get(&format!("/v1/dispatches/{}/events", done["id"].as_str().unwrap())).await;
        let placed = events["items"].as_array().unwrap().iter().filter(|e| e["to_state"] == "running").count();
        assert_eq!(placed, 1, "{events}");
    }
    // A cancel through the first replica reaches the running call.
    let bundle = stack.fixture_bundle().await;
    let id = stack.dispatch(&bundle, "pkg.jobs:sleepy", json!([600]), json!({})).await;
    stack
        .wait_until(Duration::from_secs(30), "the call to start", || async {
            stack.logs(&id).await.0.starts_with("pid ")
        })
        .await
        .unwrap();
    let (status, _) = stack.post(&format!("/v1/dispatches/{id}/cancel"), &json!({"reason": "through the other"})).await;
    assert_eq!(status, 200);
    let done = stack.wait(&id, 30).await;
    assert_eq!(done["state"], "cancelled", "{done}");
    let (_, nodes) = stack.get("/v1/nodes").await;
    assert_eq!(nodes["items"][0]["state"], "ready", "never unreachable: {nodes}");
}

#[tokio::test]
async fn a_node_whose_first_gateway_replica_dies_keeps_working_through_the_second() {
    let stack = Stack::start().await.unwrap();
    let (first, first_url) = replica(&stack).await;
    // The node knows both replicas and talks to `first` until it fails.
    let _node = stack.start_node_with("n1", "local", 2, &format!("{first_url},{}", stack.url)).await.unwrap();
    let run = |label: &'static str| {
        let stack = &stack;
        async move {
            let (status, dispatch) = stack
                .post(
                    "/v1/dispatches",
                    &json!({"function": "json:dumps", "args": [label], "cluster": "local", "labels": {"step": label}}),
                )
                .await;
            assert!(status.is_success(), "{dispatch}");
            result_of(stack, dispatch["id"].as_str().unwrap()).await
        }
    };
    assert_eq!(run("before").await["state"], "succeeded");
    drop(first);
    // Reports, log batches and heartbeats now reach the surviving replica.
    let done = run("after").await;
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(done["result"], json!("\"after\""));
    let heartbeats = |_: ()| async {
        let (_, nodes) = stack.get("/v1/nodes").await;
        nodes["items"][0]["last_heartbeat_at"].as_str().map(str::to_owned)
    };
    let seen = heartbeats(()).await;
    stack
        .wait_until(Duration::from_secs(30), "a heartbeat through the surviving replica", || async {
            heartbeats(()).await != seen
        })
        .await
        .unwrap();
    let (_, nodes) = stack.get("/v1/nodes").await;
    assert_eq!(nodes["items"][0]["state"], "ready", "{nodes}");
}

/// The parent pid of a live process.
fn parent_of(pid: i32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()
}

/// How many lines of the replicas' logs (killed ones included) carry `message`.
fn logged(stack: &Stack, message: &str) -> usize {
    std::fs::read_dir(&stack.work)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("replica-"))
        .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default().lines().filter(|l| l.contains(message)).count())
        .sum()
}

#[tokio::test]
async fn killing_the_replica_that_started_a_clusters_nodes_leaves_exactly_two_and_autostop_stops_them_once() {
    let mut stack = Stack::start().await.unwrap();
    drop(stack.gateway.take());
    let mut replicas = Vec::new();
    for _ in 0..3 {
        replicas.push(replica(&stack).await);
    }
    let admin = stack.admin_token();
    let call = |url: String, method: reqwest::Method, path: String, body: Option<Value>| {
        let (client, admin) = (stack.client.clone(), admin.clone());
        async move {
            let mut request = client.request(method, format!("{url}{path}")).bearer_auth(admin);
            if let Some(body) = body {
                request = request.json(&body);
            }
            let response = request.send().await.unwrap();
            (response.status(), response.json::<Value>().await.unwrap())
        }
    };
    let spec = json!({"name": "pair", "spec": {"provider": "local", "count": 2, "autostop_idle_minutes": 0.25}});
    let (status, created) = call(replicas[0].1.clone(), reqwest::Method::POST, "/v1/clusters".into(), Some(spec)).await;
    assert_eq!(status, 201, "{created}");
    let cluster = |url: &str| call(url.to_owned(), reqwest::Method::GET, "/v1/clusters/pair".into(), None);
    stack
        .wait_until(Duration::from_secs(60), "the cluster to be ready", || async {
            cluster(&replicas[1].1).await.1["state"] == "ready"
        })
        .await
        .unwrap();
    let (_, ready) = cluster(&replicas[1].1).await;
    let first = pids_of(&ready);
    assert_eq!(first.len(), 2, "{ready}");

    // The local provider's nodes are children of the replica that started
    // them and die with it; SIGKILL that one, with no chance to clean up.
    let parent = parent_of(first[0]).expect("the node process is live");
    assert_eq!(parent_of(first[1]), Some(parent), "one replica started both nodes: {ready}");
    let index = replicas.iter().position(|(p, _)| p.pid() == parent).expect("a replica is the nodes' parent");
    let (mut creator, _) = replicas.remove(index);
    creator.kill_9();

    // The survivors write the vanished machines off and start two more: never more.
    let live = |cluster: &Value| -> Vec<i32> {
        let open = cluster["instances"].as_array().unwrap().iter().filter(|i| i["state"] != "terminated");
        open.filter_map(|i| i["provider_id"].as_str()?.parse().ok()).filter(|pid| !process_gone(*pid)).collect()
    };
    stack
        .wait_until(Duration::from_secs(60), "two replacement nodes", || async {
            let (_, now) = cluster(&replicas[0].1).await;
            now["state"] == "ready"
                && live(&now).len() == 2
                && now["nodes"].as_array().unwrap().iter().filter(|n| n["state"] == "ready").count() == 2
        })
        .await
        .unwrap();
    let (_, now) = cluster(&replicas[1].1).await;
    let second = live(&now);
    assert!(first.iter().all(|pid| process_gone(*pid)), "the first nodes died with their replica: {now}");
    assert!(second.iter().all(|pid| !first.contains(pid)), "{now}");
    let survivors: Vec<u32> = replicas.iter().map(|(p, _)| p.pid()).collect();
    assert!(second.iter().all(|pid| parent_of(*pid).is_some_and(|p| survivors.contains(&p))), "{now}");
    let instances = now["instances"].as_array().unwrap();
    assert_eq!(instances.len(), 4, "two machines, replaced once each: {now}");
    // No other node process hangs off a live replica.
    let mut children: Vec<i32> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| parent_of(*pid).is_some_and(|p| survivors.contains(&p)))
        .filter(|pid| std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "rh-node"))
        .filter(|pid| !process_gone(*pid))
        .collect();
    children.sort();
    let mut expected = second.clone();
    expected.sort();
    assert_eq!(children, expected, "the replicas' node processes are exactly the cluster's: {now}");

    let (status, dispatch) = call(
        replicas[1].1.clone(),
        reqwest::Method::POST,
        "/v1/dispatches".into(),
        Some(json!({"function": "json:dumps", "args": ["after"], "cluster": "pair"})),
    )
    .await;
    assert_eq!(status, 201, "{dispatch}");
    let wait = format!("/v1/dispatches/{}/wait?timeout_s=60", dispatch["id"].as_str().unwrap());
    let (_, done) = call(replicas[0].1.clone(), reqwest::Method::GET, wait, None).await;
    assert_eq!(done["state"], "succeeded", "{done}");

    // Idle for 15 s: one replica stops the cluster, once, and its nodes exit.
    stack
        .wait_until(Duration::from_secs(60), "autostop", || async {
            cluster(&replicas[0].1).await.1["state"] == "terminated"
        })
        .await
        .unwrap();
    let (_, ended) = cluster(&replicas[1].1).await;
    assert!(ended["state_reason"].as_str().unwrap().contains("autostop"), "{ended}");
    stack
        .wait_until(Duration::from_secs(20), "the node processes to exit", || async {
            second.iter().all(|pid| process_gone(*pid))
        })
        .await
        .unwrap();
    assert!(ended["instances"].as_array().unwrap().iter().all(|i| i["state"] == "terminated"), "{ended}");
    assert_eq!(logged(&stack, "machine vanished"), 2, "each first machine was written off once");
    assert_eq!(logged(&stack, "cluster stopping"), 1, "one replica stopped the cluster");
    assert_eq!(logged(&stack, "machine terminated"), 2, "each replacement was terminated once");
    assert_eq!(logged(&stack, "cluster terminated"), 1);
}

/// Waits until this stack's gateway holds `count` node links.
async fn links_open(stack: &Stack, count: f64) {
    stack
        .wait_until(Duration::from_secs(30), "the node's link to open", || async {
            stack.metric("rh_node_links").await == count
        })
        .await
        .unwrap();
}

/// How many lines of the gateway's log carry `message`.
fn gateway_logged(stack: &Stack, message: &str) -> usize {
    let log = std::fs::read_to_string(stack.work.join("gateway.log")).unwrap_or_default();
    log.lines().filter(|line| line.contains(message)).count()
}

#[tokio::test]
async fn cutting_a_nodes_link_mid_call_records_the_result_once_and_runs_nothing_twice() {
    let stack = Stack::start().await.unwrap();
    let proxy = e2e::Proxy::start(&stack.url).await.unwrap();
    let _node = stack.start_node_with("n1", "local", 2, &proxy.url).await.unwrap();
    links_open(&stack, 1.0).await;
    let bundle = stack.fixture_bundle().await;
    let (runs, gate) = (stack.work.join("runs.txt"), stack.work.join("gate"));
    let args = json!([runs.display().to_string(), gate.display().to_string()]);
    let id = stack.dispatch(&bundle, "pkg.jobs:gated_run", args, json!({})).await;
    stack.wait_until(Duration::from_secs(60), "the call to run", || async { runs.exists() }).await.unwrap();
    // The placement travelled over the link, not over HTTP.
    assert!(stack.metric("rh_node_link_messages_total{direction=\"to_nodes\"}").await >= 1.0);
    assert_eq!(gateway_logged(&stack, "node link open"), 1);

    proxy.cut();
    // The node opens a new link, and heartbeats over it at once (the reconcile).
    stack
        .wait_until(Duration::from_secs(30), "the node to open its link again", || async {
            gateway_logged(&stack, "node link open") == 2 && stack.metric("rh_node_links").await == 1.0
        })
        .await
        .unwrap();
    let (_, running) = stack.get(&format!("/v1/dispatches/{id}")).await;
    assert_eq!(running["state"], "running", "the reconcile keeps the call it is still running: {running}");

    std::fs::write(&gate, "go").unwrap();
    let done = stack.wait(&id, 60).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(done["result"], json!("through"), "{done}");
    assert_eq!(std::fs::read_to_string(&runs).unwrap(), "ran\n", "the call ran exactly once");
    let (_, events) = stack.get(&format!("/v1/dispatches/{id}/events")).await;
    let states: Vec<&str> =
        events["items"].as_array().unwrap().iter().map(|e| e["to_state"].as_str().unwrap()).collect();
    assert_eq!(states, ["queued", "running", "succeeded"], "{events}");
}

#[tokio::test]
async fn a_cancel_reaches_the_worker_over_the_link() {
    let stack = Stack::start().await.unwrap();
    let _node = stack.start_node("n1", "local", 2).await.unwrap();
    links_open(&stack, 1.0).await;
    let bundle = stack.fixture_bundle().await;
    let (runs, gate) = (stack.work.join("runs.txt"), stack.work.join("never"));
    let args = json!([runs.display().to_string(), gate.display().to_string()]);
    let id = stack.dispatch(&bundle, "pkg.jobs:gated_run", args, json!({})).await;
    stack.wait_until(Duration::from_secs(60), "the call to run", || async { runs.exists() }).await.unwrap();
    let sent = stack.metric("rh_node_link_messages_total{direction=\"to_nodes\"}").await;
    let (status, body) = stack.post(&format!("/v1/dispatches/{id}/cancel"), &json!({"reason": "test"})).await;
    assert!(status.is_success(), "{status} {body}");
    // `cancelled` is recorded only once the node confirms the worker stopped.
    let done = stack.wait(&id, 30).await;
    assert_eq!(done["state"], "cancelled", "{done}");
    assert!(stack.metric("rh_node_link_messages_total{direction=\"to_nodes\"}").await > sent);
}

#[tokio::test]
async fn the_link_route_opens_only_the_callers_own_node_and_only_as_a_websocket() {
    let stack = Stack::start().await.unwrap();
    let _node = stack.start_node("n1", "local", 1).await.unwrap();
    let (_, nodes) = stack.get("/v1/nodes").await;
    let id = nodes["items"][0]["id"].as_str().unwrap().to_owned();
    let token = |name: &str| {
        let binding = gateway::auth::NodeBinding { cluster: "local".into(), name: name.into() };
        stack.keys.mint_node("default", &binding, Duration::from_secs(60), &uuid::Uuid::new_v4().to_string()).unwrap().0
    };
    let get = |path: String, token: String| {
        let (client, url) = (stack.client.clone(), stack.url.clone());
        async move {
            let response = client.get(format!("{url}{path}")).bearer_auth(token).send().await.unwrap();
            let status = response.status();
            (status, response.json::<Value>().await.unwrap())
        }
    };
    let (status, body) = get(format!("/v1/nodes/{id}/link"), token("n1")).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["code"], "not_an_upgrade", "{body}");
    // Another node's credential (here: one never registered) cannot open n1's link.
    let (status, body) = get(format!("/v1/nodes/{id}/link"), token("n2")).await;
    assert_eq!(status, 404, "{body}");
    // Nor can a token without the `node` scope.
    let (status, body) = get(format!("/v1/nodes/{id}/link"), stack.admin_token()).await;
    assert_eq!(status, 403, "{body}");
}

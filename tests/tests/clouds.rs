//! The `aws` provider against moto's EC2 server and the `gcp` provider against
//! the local Compute fake (`e2e::gce_fake`), both on loopback and both driven
//! by the real SDK clients. The instances are not machines, so each test
//! starts the `rh-node` the instance would have started, with the join token
//! taken from the instance's own user-data or startup script.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use aws_sdk_ec2::types::{InstanceAttributeName, InstanceStateName, ResourceType, Tag, TagSpecification};
use base64::Engine;
use e2e::gce_fake::GceFake;
use e2e::{bin_dir, Process, Stack};
use gateway::compute::bootstrap::join_token_of;
use serde_json::{json, Value};

const AMI: &str = "ami-04681a1dbd79675a5";

/// moto's EC2 server on a free loopback port.
struct Moto {
    url: String,
    _process: Process,
}

async fn start_moto() -> Moto {
    let server = PathBuf::from(std::env::var("RH_MOTO_SERVER").expect(
        "RH_MOTO_SERVER is not set: run the tests through `make test` (scripts/test.sh installs moto into a cached venv)",
    ));
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let process = Process(
        Command::new(server)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .env("MOTO_EC2_ENABLE_INSTANCE_TYPE_VALIDATION", "true")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start moto_server"),
    );
    let url = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !reqwest::get(format!("{url}/moto-api/")).await.is_ok_and(|r| r.status().is_success()) {
        assert!(Instant::now() < deadline, "moto did not come up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Moto { url, _process: process }
}

async fn ec2(moto: &Moto) -> aws_sdk_ec2::Client {
    let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-1"))
        .endpoint_url(&moto.url)
        .credentials_provider(aws_credential_types::Credentials::new("testing", "testing", None, None, "test"))
        .load()
        .await;
    aws_sdk_ec2::Client::new(&config)
}

fn aws_env(moto: &Moto) -> Vec<(&'static str, String)> {
    vec![
        ("RH_GATEWAY_COMPUTE__RECONCILE_INTERVAL_S", "1".into()),
        ("RH_GATEWAY_COMPUTE__ORPHAN_SWEEP_INTERVAL_S", "1".into()),
        ("RH_GATEWAY_COMPUTE__AWS__REGION", "us-east-1".into()),
        ("RH_GATEWAY_COMPUTE__AWS__ENDPOINT_URL", moto.url.clone()),
        ("RH_GATEWAY_COMPUTE__AWS__ACCESS_KEY_ID", "testing".into()),
        ("RH_GATEWAY_COMPUTE__AWS__SECRET_ACCESS_KEY", "testing".into()),
        ("RH_GATEWAY_COMPUTE__AWS__DEFAULT_IMAGE", AMI.into()),
        ("AWS_EC2_METADATA_DISABLED", "true".into()),
    ]
}

async fn start_stack(env: &[(&'static str, String)]) -> Stack {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    Stack::start_with(&env).await.unwrap()
}

/// Waits for the cluster's first machine to be created; returns its provider id.
async fn created_instance(stack: &Stack, cluster: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, body) = stack.get(&format!("/v1/clusters/{cluster}")).await;
        if let Some(id) = body["instances"][0]["provider_id"].as_str() {
            return id.to_owned();
        }
        assert!(Instant::now() < deadline, "no instance was created: {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Starts the node the machine's boot script would start.
fn join_as(stack: &Stack, join_token: &str, instance_id: &str) -> Process {
    let log = std::fs::File::create(stack.work.join(format!("node-{instance_id}.log"))).unwrap();
    Process(
        Command::new(bin_dir().join("rh-node"))
            .args(["run", "--gateway", &stack.url, "--join", join_token, "--instance-id", instance_id])
            .arg("--work-dir")
            .arg(stack.work.join(format!("machine-{instance_id}")))
            .env_remove("RH_NODE_TOKEN")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    )
}

async fn run_one(stack: &Stack, cluster: &str) -> Value {
    let (status, created) =
        stack.post("/v1/dispatches", &json!({"function": "json:dumps", "args": ["hi"], "cluster": cluster})).await;
    assert_eq!(status, 201, "{created}");
    let (_, done) = stack.get(&format!("/v1/dispatches/{}/wait?timeout_s=60", created["id"].as_str().unwrap())).await;
    done
}

async fn instance_state(ec2: &aws_sdk_ec2::Client, id: &str) -> Option<InstanceStateName> {
    let out = ec2.describe_instances().instance_ids(id).send().await.unwrap();
    out.reservations()[0].instances()[0].state().and_then(|s| s.name()).cloned()
}

/// The artifact store on S3: moto's S3 server, reached by the gateway through `object_store`.
#[tokio::test]
async fn artifacts_are_stored_in_s3_and_download_byte_exact() {
    let moto = start_moto().await;
    // A bucket for the gateway (moto's S3 takes unsigned path-style requests).
    let created = reqwest::Client::new().put(format!("{}/rh-artifacts", moto.url)).send().await.unwrap();
    assert!(created.status().is_success(), "{}", created.text().await.unwrap());
    let stack = start_stack(&[
        ("RH_GATEWAY_ARTIFACTS__STORE", "s3://rh-artifacts/gateway".into()),
        ("RH_GATEWAY_ARTIFACTS__OPTIONS__AWS_ENDPOINT", moto.url.clone()),
        ("RH_GATEWAY_ARTIFACTS__OPTIONS__AWS_ALLOW_HTTP", "true".into()),
        ("RH_GATEWAY_ARTIFACTS__OPTIONS__AWS_REGION", "us-east-1".into()),
        ("RH_GATEWAY_ARTIFACTS__OPTIONS__AWS_ACCESS_KEY_ID", "testing".into()),
        ("RH_GATEWAY_ARTIFACTS__OPTIONS__AWS_SECRET_ACCESS_KEY", "testing".into()),
        ("RH_GATEWAY_ARTIFACTS__OPTIONS__AWS_VIRTUAL_HOSTED_STYLE_REQUEST", "false".into()),
    ])
    .await;
    let _node = stack.start_node("n1", "local", 1).await.unwrap();
    let bundle = stack.fixture_bundle().await;
    let id = stack.dispatch(&bundle, "pkg.jobs:plot_to_outputs", json!([3]), json!({})).await;
    let done = stack.wait(&id, 60).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    let sha = done["result"]["plot.png"].as_str().unwrap().to_owned();
    let bytes = stack
        .client
        .get(format!("{}/v1/dispatches/{id}/artifacts/plot.png", stack.url))
        .bearer_auth(stack.admin_token())
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    use sha2::Digest;
    assert_eq!(hex::encode(sha2::Sha256::digest(&bytes)), sha);
    // The blob is in the bucket, under the prefix, named by its sha256; no staging copy is left.
    let listing = reqwest::get(format!("{}/rh-artifacts?list-type=2", moto.url)).await.unwrap().text().await.unwrap();
    assert!(listing.contains(&format!("<Key>gateway/blobs/{sha}</Key>")), "{listing}");
    assert!(!listing.contains("gateway/tmp/"), "{listing}");
}

#[tokio::test]
async fn an_ec2_cluster_joins_from_its_user_data_runs_work_autostops_and_terminate_shows_in_moto() {
    let moto = start_moto().await;
    let ec2 = ec2(&moto).await;
    let stack = start_stack(&aws_env(&moto)).await;

    // An instance tagged as ours that no cluster owns: the orphan sweep must terminate it.
    let tag = |k: &str, v: &str| Tag::builder().key(k).value(v).build();
    let orphan = ec2
        .run_instances()
        .image_id(AMI)
        .instance_type(aws_sdk_ec2::types::InstanceType::T3Micro)
        .min_count(1)
        .max_count(1)
        .tag_specifications(
            TagSpecification::builder()
                .resource_type(ResourceType::Instance)
                .tags(tag("rh-managed", "true"))
                .tags(tag("rh-cluster-id", &uuid::Uuid::new_v4().to_string()))
                .tags(tag("rh-instance-key", &uuid::Uuid::new_v4().to_string()))
                .build(),
        )
        .send()
        .await
        .unwrap();
    let orphan_id = orphan.instances()[0].instance_id().unwrap().to_owned();

    let (status, cluster) = stack
        .post(
            "/v1/clusters",
            &json!({"name": "gpu", "spec": {"provider": "aws", "instance_type": "t3.micro", "autostop_idle_minutes": 0.05, "labels": {"team": "vision"}}}),
        )
        .await;
    assert_eq!(status, 201, "{cluster}");
    let instance_id = created_instance(&stack, "gpu").await;

    let described = ec2.describe_instances().instance_ids(&instance_id).send().await.unwrap();
    let instance = &described.reservations()[0].instances()[0];
    assert_eq!(instance.instance_type().unwrap().as_str(), "t3.micro");
    let tags: Vec<(&str, &str)> = instance.tags().iter().map(|t| (t.key().unwrap(), t.value().unwrap())).collect();
    assert!(tags.contains(&("rh-cluster-id", cluster["id"].as_str().unwrap())), "{tags:?}");
    assert!(tags.contains(&("team", "vision")), "{tags:?}");

    let attribute = ec2
        .describe_instance_attribute()
        .instance_id(&instance_id)
        .attribute(InstanceAttributeName::UserData)
        .send()
        .await
        .unwrap();
    let encoded = attribute.user_data().and_then(|v| v.value()).expect("user data");
    let script = String::from_utf8(base64::engine::general_purpose::STANDARD.decode(encoded).unwrap()).unwrap();
    assert!(script.contains(&format!("{}/v1/node-binary", stack.url)), "{script}");
    let join = join_token_of(&script).expect("a join token in the user data").to_owned();

    // The instance can download rh-node with its join token.
    let binary = stack.client.get(format!("{}/v1/node-binary", stack.url)).bearer_auth(&join).send().await.unwrap();
    assert_eq!(binary.status(), 200);
    let bytes = binary.bytes().await.unwrap();
    assert_eq!(bytes.len() as u64, std::fs::metadata(bin_dir().join("rh-node")).unwrap().len());
    let refused =
        stack.client.get(format!("{}/v1/node-binary", stack.url)).bearer_auth("rhj_nope").send().await.unwrap();
    assert_eq!(refused.status(), 401);

    let _node = join_as(&stack, &join, &instance_id);
    let ready = stack.wait_cluster("gpu", "ready", Duration::from_secs(30)).await.unwrap();
    assert_eq!(ready["nodes"][0]["labels"]["team"], "vision");
    assert_eq!(run_one(&stack, "gpu").await["result"], "\"hi\"");

    stack.wait_cluster("gpu", "terminated", Duration::from_secs(30)).await.unwrap();
    assert_eq!(instance_state(&ec2, &instance_id).await, Some(InstanceStateName::Terminated));
    let deadline = Instant::now() + Duration::from_secs(15);
    while instance_state(&ec2, &orphan_id).await != Some(InstanceStateName::Terminated) {
        assert!(Instant::now() < deadline, "the orphan survived the sweep");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn an_instance_type_ec2_rejects_fails_the_cluster_and_its_waiting_dispatch_with_ec2s_message() {
    let moto = start_moto().await;
    let stack = start_stack(&aws_env(&moto)).await;
    stack
        .post("/v1/clusters", &json!({"name": "big", "spec": {"provider": "aws", "instance_type": "t3.galactic"}}))
        .await;
    let (_, waiting) =
        stack.post("/v1/dispatches", &json!({"function": "json:dumps", "args": [1], "cluster": "big"})).await;
    let failed = stack.wait_cluster("big", "failed", Duration::from_secs(30)).await.unwrap();
    let reason = failed["state_reason"].as_str().unwrap();
    assert!(reason.contains("InvalidInstanceType") && reason.contains("t3.galactic"), "{reason}");
    let (_, done) = stack.get(&format!("/v1/dispatches/{}/wait?timeout_s=30", waiting["id"].as_str().unwrap())).await;
    assert_eq!(done["state"], "failed", "{done}");
    assert_eq!(done["failure"]["code"], "cluster_failed");
    assert!(done["failure"]["message"].as_str().unwrap().contains("t3.galactic"), "{done}");
}

#[tokio::test]
async fn missing_aws_credentials_fail_the_cluster_quickly_instead_of_hanging() {
    let moto = start_moto().await;
    let env: Vec<(&'static str, String)> = aws_env(&moto)
        .into_iter()
        .filter(|(k, _)| !k.contains("ACCESS_KEY"))
        .chain([
            ("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/credentials".into()),
            ("AWS_CONFIG_FILE", "/nonexistent/config".into()),
            ("AWS_ACCESS_KEY_ID", String::new()),
            ("AWS_SECRET_ACCESS_KEY", String::new()),
        ])
        .collect();
    let stack = start_stack(&env).await;
    let started = Instant::now();
    stack
        .post("/v1/clusters", &json!({"name": "nocreds", "spec": {"provider": "aws", "instance_type": "t3.micro"}}))
        .await;
    let failed = stack.wait_cluster("nocreds", "failed", Duration::from_secs(30)).await.unwrap();
    assert!(failed["state_reason"].as_str().unwrap().contains("credentials"), "{failed}");
    assert!(started.elapsed() < Duration::from_secs(20), "took {:?}", started.elapsed());
}

fn gcp_env(fake: &GceFake) -> Vec<(&'static str, String)> {
    vec![
        ("RH_GATEWAY_COMPUTE__RECONCILE_INTERVAL_S", "1".into()),
        ("RH_GATEWAY_COMPUTE__ORPHAN_SWEEP_INTERVAL_S", "1".into()),
        ("RH_GATEWAY_COMPUTE__GCP__PROJECT", "demo".into()),
        ("RH_GATEWAY_COMPUTE__GCP__ZONE", "us-central1-a".into()),
        ("RH_GATEWAY_COMPUTE__GCP__ENDPOINT", fake.url.clone()),
        ("RH_GATEWAY_COMPUTE__GCP__ANONYMOUS", "true".into()),
        ("RH_GATEWAY_COMPUTE__GCP__OPERATION_POLL_S", "0.05".into()),
        // Any fallback to the metadata server fails at once.
        ("GCE_METADATA_HOST", "127.0.0.1:1".into()),
    ]
}

#[tokio::test]
async fn a_gce_cluster_joins_from_its_startup_script_runs_work_and_is_deleted_on_autostop() {
    let fake = GceFake::start().await.unwrap();
    fake.add_instance(
        "us-central1-a",
        "rh-orphan",
        json!({"rh-managed": "true", "rh-instance-key": uuid::Uuid::new_v4().to_string()}),
    );
    fake.add_instance("us-central1-a", "someone-elses", json!({"team": "other"}));
    let stack = start_stack(&gcp_env(&fake)).await;
    let (status, cluster) = stack
        .post("/v1/clusters", &json!({"name": "tpu", "spec": {"provider": "gcp", "instance_type": "e2-small", "autostop_idle_minutes": 0.05}}))
        .await;
    assert_eq!(status, 201, "{cluster}");
    let name = created_instance(&stack, "tpu").await;
    let script = fake.startup_script(&name).expect("a startup script");
    assert!(script.contains("computeMetadata/v1/instance/name"), "{script}");
    let join = join_token_of(&script).unwrap().to_owned();
    let _node = join_as(&stack, &join, &name);
    stack.wait_cluster("tpu", "ready", Duration::from_secs(30)).await.unwrap();
    assert_eq!(run_one(&stack, "tpu").await["state"], "succeeded");

    stack.wait_cluster("tpu", "terminated", Duration::from_secs(30)).await.unwrap();
    let deleted = fake.deleted();
    assert!(deleted.contains(&name), "{deleted:?}");
    assert!(deleted.contains(&"rh-orphan".to_owned()), "the orphan survived: {deleted:?}");
    let left: Vec<String> = fake.instances().into_iter().map(|(_, n, _)| n).collect();
    assert_eq!(left, vec!["someone-elses".to_owned()], "instances without our tags are never touched");
}

#[tokio::test]
async fn a_machine_type_gce_rejects_fails_the_cluster_with_the_clouds_message() {
    let fake = GceFake::start().await.unwrap();
    let stack = start_stack(&gcp_env(&fake)).await;
    stack
        .post("/v1/clusters", &json!({"name": "odd", "spec": {"provider": "gcp", "instance_type": "e2-galactic"}}))
        .await;
    let failed = stack.wait_cluster("odd", "failed", Duration::from_secs(30)).await.unwrap();
    let reason = failed["state_reason"].as_str().unwrap();
    assert!(reason.contains("Machine type with name 'e2-galactic' does not exist"), "{reason}");
    assert!(fake.instances().is_empty());
}

#[tokio::test]
async fn a_gateway_killed_between_recording_intent_and_learning_of_the_instance_makes_exactly_one() {
    let fake = GceFake::start().await.unwrap();
    let mut stack = start_stack(&gcp_env(&fake)).await;
    // The fake creates the instance at once but answers the insert 60 s later.
    fake.delay_inserts(Some(Duration::from_secs(60)));
    stack
        .post("/v1/clusters", &json!({"name": "crashy", "spec": {"provider": "gcp", "instance_type": "e2-small"}}))
        .await;
    stack
        .wait_until(Duration::from_secs(30), "the insert to reach the cloud", || async { fake.inserts_received() == 1 })
        .await
        .unwrap();
    stack.gateway.as_mut().unwrap().kill_9();

    // The intent is recorded; the gateway never learned the instance exists.
    let mut db = <sqlx::PgConnection as sqlx::Connection>::connect(&stack.database_url).await.unwrap();
    let (state, provider_id): (String, Option<String>) =
        sqlx::query_as("select state::text, provider_id from cluster_instance").fetch_one(&mut db).await.unwrap();
    assert_eq!((state.as_str(), provider_id), ("requested", None));
    assert_eq!(fake.instances().len(), 1);

    fake.delay_inserts(None);
    stack.start_gateway().await.unwrap();
    let adopted = created_instance(&stack, "crashy").await;
    // Let a few reconciles and sweeps pass: nothing new is created, nothing of ours is deleted.
    let activations = |tasks: &serde_json::Value, task: &str| tasks[task]["activations"].as_u64().unwrap_or(0);
    let (_, before) = stack.get("/v1/admin/background-tasks").await;
    stack
        .wait_until(Duration::from_secs(30), "three reconciles and a sweep", || async {
            let (_, now) = stack.get("/v1/admin/background-tasks").await;
            activations(&now, "provisioner") >= activations(&before, "provisioner") + 3
                && activations(&now, "orphan_sweep") > activations(&before, "orphan_sweep")
        })
        .await
        .unwrap();
    let instances = fake.instances();
    assert_eq!(instances.len(), 1, "{instances:?}");
    assert_eq!(instances[0].1, adopted);
    assert!(fake.deleted().is_empty(), "{:?}", fake.deleted());
}

//! A small fake of the Compute Engine REST paths the gateway uses (instances
//! insert/get/delete/list and zone operations), served on loopback.
//!
//! There is no Compute Engine emulator, so this stands in for the cloud; the
//! gateway drives it with the real `google-cloud-compute-v1` client. It keeps
//! the behaviours the provisioner relies on: `requestId` idempotency, 409 for
//! an existing name, 400 for an unknown machine type, operations that are
//! `RUNNING` until polled, and an optional delay before answering an insert
//! (after the instance exists), to crash a gateway mid-call.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

/// Machine types the fake knows; anything else is a 400, as GCE answers.
const MACHINE_TYPES: [&str; 4] = ["e2-micro", "e2-small", "e2-standard-2", "e2-standard-4"];

#[derive(Default)]
struct Cloud {
    /// (zone, name) → instance JSON.
    instances: BTreeMap<(String, String), Value>,
    operations: HashMap<String, Value>,
    /// requestId → operation name.
    requests: HashMap<String, String>,
    inserts_received: u32,
    deleted: Vec<String>,
    insert_delay: Option<Duration>,
    next_id: u64,
}

/// A running fake; dropped, it stops serving.
pub struct GceFake {
    pub url: String,
    cloud: Arc<Mutex<Cloud>>,
    server: tokio::task::JoinHandle<()>,
}

type Shared = Arc<Mutex<Cloud>>;

impl GceFake {
    /// Serves the fake on a free loopback port.
    pub async fn start() -> anyhow::Result<GceFake> {
        let cloud = Shared::default();
        let zone = "/compute/v1/projects/{project}/zones/{zone}";
        let app = Router::new()
            .route(&format!("{zone}/instances"), post(insert).get(list))
            .route(&format!("{zone}/instances/{{name}}"), get(get_instance).delete(delete))
            .route(&format!("{zone}/operations/{{op}}"), get(get_operation))
            .with_state(cloud.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        // Small responses must not wait on Nagle's algorithm.
        let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
            let _ = tcp.set_nodelay(true);
        });
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(GceFake { url, cloud, server })
    }

    /// Instances that exist now, as (zone, name, labels).
    pub fn instances(&self) -> Vec<(String, String, Value)> {
        let cloud = self.cloud.lock().unwrap();
        cloud.instances.iter().map(|((z, n), v)| (z.clone(), n.clone(), v["labels"].clone())).collect()
    }

    /// How many insert requests arrived (retries included).
    pub fn inserts_received(&self) -> u32 {
        self.cloud.lock().unwrap().inserts_received
    }

    /// Names of deleted instances, in order.
    pub fn deleted(&self) -> Vec<String> {
        self.cloud.lock().unwrap().deleted.clone()
    }

    /// The startup script of an instance.
    pub fn startup_script(&self, name: &str) -> Option<String> {
        let cloud = self.cloud.lock().unwrap();
        let instance = cloud.instances.iter().find(|((_, n), _)| n == name)?.1;
        instance["metadata"]["items"]
            .as_array()?
            .iter()
            .find(|item| item["key"] == "startup-script")
            .and_then(|item| item["value"].as_str())
            .map(str::to_owned)
    }

    /// Answers inserts only after `delay` (the instance exists at once).
    pub fn delay_inserts(&self, delay: Option<Duration>) {
        self.cloud.lock().unwrap().insert_delay = delay;
    }

    /// Adds an instance directly, as if someone else (or a lost gateway) made it.
    pub fn add_instance(&self, zone: &str, name: &str, labels: Value) {
        let mut cloud = self.cloud.lock().unwrap();
        cloud.instances.insert(
            (zone.into(), name.into()),
            json!({"kind": "compute#instance", "id": "1", "name": name, "status": "RUNNING", "labels": labels}),
        );
    }
}

impl Drop for GceFake {
    fn drop(&mut self) {
        self.server.abort();
    }
}

fn error(code: StatusCode, status: &str, message: String) -> Response {
    (code, Json(json!({"error": {"code": code.as_u16(), "message": message, "status": status}}))).into_response()
}

fn operation(cloud: &mut Cloud, zone: &str, kind: &str, target: &str) -> Value {
    cloud.next_id += 1;
    let name = format!("operation-{}-{}", cloud.next_id, kind);
    let op = json!({
        "kind": "compute#operation", "id": cloud.next_id.to_string(), "name": name, "zone": zone,
        "operationType": kind, "targetLink": target, "status": "RUNNING", "progress": 0
    });
    cloud.operations.insert(name, op.clone());
    op
}

async fn insert(
    State(cloud): State<Shared>,
    Path((project, zone)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
    Json(body): Json<Value>,
) -> Response {
    let (op, delay) = {
        let mut cloud = cloud.lock().unwrap();
        cloud.inserts_received += 1;
        if let Some(op) = query.get("requestId").and_then(|id| cloud.requests.get(id)).cloned() {
            return Json(cloud.operations[&op].clone()).into_response();
        }
        let name = body["name"].as_str().unwrap_or_default().to_owned();
        let machine_type = body["machineType"].as_str().unwrap_or_default();
        let short = machine_type.rsplit('/').next().unwrap_or_default();
        if !MACHINE_TYPES.contains(&short) {
            return error(
                StatusCode::BAD_REQUEST,
                "INVALID_ARGUMENT",
                format!(
                    "Invalid value for field 'resource.machineType': '{machine_type}'. \
                     Machine type with name '{short}' does not exist in zone '{zone}'."
                ),
            );
        }
        if cloud.instances.contains_key(&(zone.clone(), name.clone())) {
            return error(
                StatusCode::CONFLICT,
                "ALREADY_EXISTS",
                format!("The resource 'projects/{project}/zones/{zone}/instances/{name}' already exists"),
            );
        }
        let mut instance = body.clone();
        instance["status"] = json!("RUNNING");
        instance["kind"] = json!("compute#instance");
        instance["id"] = json!(cloud.next_id.to_string());
        cloud.instances.insert((zone.clone(), name.clone()), instance);
        let op = operation(&mut cloud, &zone, "insert", &name);
        if let Some(id) = query.get("requestId") {
            cloud.requests.insert(id.clone(), op["name"].as_str().unwrap().to_owned());
        }
        (op, cloud.insert_delay)
    };
    if let Some(delay) = delay {
        tokio::time::sleep(delay).await;
    }
    Json(op).into_response()
}

async fn get_instance(
    State(cloud): State<Shared>,
    Path((project, zone, name)): Path<(String, String, String)>,
) -> Response {
    let cloud = cloud.lock().unwrap();
    match cloud.instances.get(&(zone.clone(), name.clone())) {
        Some(instance) => Json(instance.clone()).into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            format!("The resource 'projects/{project}/zones/{zone}/instances/{name}' was not found"),
        ),
    }
}

async fn delete(State(cloud): State<Shared>, Path((project, zone, name)): Path<(String, String, String)>) -> Response {
    let mut cloud = cloud.lock().unwrap();
    if cloud.instances.remove(&(zone.clone(), name.clone())).is_none() {
        return error(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            format!("The resource 'projects/{project}/zones/{zone}/instances/{name}' was not found"),
        );
    }
    cloud.deleted.push(name.clone());
    Json(operation(&mut cloud, &zone, "delete", &name)).into_response()
}

async fn list(State(cloud): State<Shared>, Path((_project, zone)): Path<(String, String)>) -> Response {
    let cloud = cloud.lock().unwrap();
    let items: Vec<Value> = cloud.instances.iter().filter(|((z, _), _)| *z == zone).map(|(_, v)| v.clone()).collect();
    Json(json!({"kind": "compute#instanceList", "items": items})).into_response()
}

/// An operation is `DONE` from its first poll on.
async fn get_operation(State(cloud): State<Shared>, Path((_p, _zone, op)): Path<(String, String, String)>) -> Response {
    let mut cloud = cloud.lock().unwrap();
    match cloud.operations.get_mut(&op) {
        Some(operation) => {
            operation["status"] = json!("DONE");
            operation["progress"] = json!(100);
            Json(operation.clone()).into_response()
        }
        None => error(StatusCode::NOT_FOUND, "NOT_FOUND", format!("operation {op} not found")),
    }
}

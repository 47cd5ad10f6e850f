//! Run records as nodes send them: environments stored once, per-call parts
//! beside them, and batches that name what to fix.

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::spawn_app;

fn environment(numpy: &str) -> Value {
    json!({
        "python": "3.11.2 (main)", "platform": "linux 6.1.0 x86_64",
        "packages": [{"name": "numpy", "version": numpy}],
        "base_packages": [{"name": "pip", "version": "23.0"}],
        "env_names": ["HOME", "PATH"]
    })
}

#[tokio::test]
async fn calls_of_one_environment_share_one_stored_environment_and_read_it_back_whole() {
    let app = spawn_app().await;
    let (first, node) = app.placed_dispatch().await;
    let (second, _) = app.placed_dispatch().await;
    let (third, _) = app.placed_dispatch().await;
    let batch = json!({
        "environments": [environment("1.26.0"), environment("2.0.0")],
        "items": [
            {"dispatch_id": first, "environment": 0},
            {"dispatch_id": second, "environment": 0},
            // As nodes sent records before environments were shared: whole, beside the call.
            {"dispatch_id": third, "run": environment("2.0.0")}
        ]
    });
    let (status, body) = app.post("/v1/dispatches/records", &node, &batch).await;
    assert!(status.is_success(), "{status} {body}");
    assert_eq!(app.count("dispatch_record").await, 3);
    assert_eq!(
        app.count("run_environment").await,
        2,
        "the two calls of 1.26.0 share one row; 2.0.0, given twice, is stored once"
    );
    for (id, numpy) in [(&first, "1.26.0"), (&second, "1.26.0"), (&third, "2.0.0")] {
        let (status, record) = app.get(&format!("/v1/dispatches/{id}/record"), &app.user_token()).await;
        assert_eq!(status, StatusCode::OK, "{record}");
        assert_eq!(record["packages"], json!([{"name": "numpy", "version": numpy}]), "{record}");
        assert_eq!(record["base_packages"], json!([{"name": "pip", "version": "23.0"}]));
        assert_eq!(record["python"], "3.11.2 (main)");
        assert_eq!(record["env_names"], json!(["HOME", "PATH"]));
        assert_eq!(record["function"], "pipeline.train:fit", "the dispatch's own fields come with it");
        assert_eq!(record["args_hash"].as_str().map(str::len), Some(64));
        assert_eq!(record["place"]["node"], "node-1");
    }
    let (_, a) = app.get(&format!("/v1/dispatches/{first}/record"), &app.user_token()).await;
    let (_, b) = app.get(&format!("/v1/dispatches/{second}/record"), &app.user_token()).await;
    assert_eq!(a["args_hash"], b["args_hash"], "same arguments, same hash");

    // A record is written once: a resend with another environment changes nothing.
    let resend = json!({"environments": [environment("9.9.9")], "items": [{"dispatch_id": first, "environment": 0}]});
    let (status, _) = app.post("/v1/dispatches/records", &node, &resend).await;
    assert!(status.is_success());
    let (_, record) = app.get(&format!("/v1/dispatches/{first}/record"), &app.user_token()).await;
    assert_eq!(record["packages"], json!([{"name": "numpy", "version": "1.26.0"}]));
    assert_eq!(app.count("run_environment").await, 3, "(the resent environment is stored; no record names it)");
}

#[tokio::test]
async fn a_batch_naming_a_missing_environment_or_none_is_refused_and_stores_nothing() {
    let app = spawn_app().await;
    let (id, node) = app.placed_dispatch().await;
    for (item, names) in [
        (json!({"dispatch_id": id, "environment": 1}), "environment 1, and the batch has 1"),
        (json!({"dispatch_id": id}), "exactly one of `environment`"),
        (json!({"dispatch_id": id, "environment": 0, "run": environment("1.0")}), "exactly one of `environment`"),
    ] {
        let batch = json!({"environments": [environment("1.0")], "items": [item]});
        let (status, body) = app.post("/v1/dispatches/records", &node, &batch).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        assert!(body.to_string().contains(names), "the error names what to fix: {body}");
    }
    assert_eq!(app.count("dispatch_record").await, 0);
    assert_eq!(app.count("run_environment").await, 0);
}

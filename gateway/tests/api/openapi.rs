//! The served OpenAPI document matches the committed one, and documents
//! every route fully; the docs page works offline.

use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::spawn_app;

const COMMITTED: &str = include_str!("../../../openapi/gateway.json");

#[tokio::test]
async fn the_served_spec_matches_the_committed_one() {
    let app = spawn_app().await;
    let served: Value =
        app.client.get(format!("{}/openapi.json", app.address)).send().await.unwrap().json().await.unwrap();
    let committed: Value = serde_json::from_str(COMMITTED).unwrap();
    assert!(served == committed, "openapi/gateway.json is out of date: run `make openapi` and commit the result");
}

#[test]
fn every_v1_operation_documents_security_errors_and_examples() {
    let spec: Value = serde_json::from_str(COMMITTED).unwrap();
    let paths = spec["paths"].as_object().unwrap();
    assert!(paths.len() >= 7);
    for (path, item) in paths.iter().filter(|(p, _)| p.starts_with("/v1")) {
        for (method, op) in item.as_object().unwrap().iter().filter(|(k, _)| *k != "parameters") {
            let where_ = format!("{method} {path}");
            // A new machine holds only its join token (in the body, or as the
            // bearer for the binary download): no JWT, so no scopes and no 403.
            let join_route = ["node_join", "node_binary"].contains(&op["operationId"].as_str().unwrap_or_default());
            if !join_route {
                assert!(op["security"].as_array().is_some_and(|s| !s.is_empty()), "{where_}: no security");
            }
            assert!(op["operationId"].is_string(), "{where_}: no operationId");
            let responses = op["responses"].as_object().unwrap();
            let statuses: &[&str] = if join_route { &["401", "503"] } else { &["401", "403", "503"] };
            for &status in statuses {
                let response = responses.get(status).unwrap_or_else(|| panic!("{where_}: no {status}"));
                let content = &response["content"]["application/json"];
                assert!(
                    content["schema"]["$ref"].as_str().is_some_and(|r| r.ends_with("ErrorBody")),
                    "{where_} {status}"
                );
                assert!(content["example"].is_object(), "{where_} {status}: no example");
            }
        }
    }
    assert!(spec["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer");
    assert!(spec["components"]["schemas"]["CreateDispatch"]["example"].is_object());
}

#[tokio::test]
async fn the_docs_page_renders_from_vendored_assets() {
    let app = spawn_app().await;
    let page = app.client.get(format!("{}/docs/", app.address)).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    let html = page.text().await.unwrap();
    assert!(html.contains("swagger-ui"), "{html}");
    assert!(!html.contains("https://"), "the docs page must not load anything from the internet");
    for asset in ["swagger-ui.css", "swagger-ui-bundle.js", "swagger-initializer.js"] {
        let response = app.client.get(format!("{}/docs/{asset}", app.address)).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{asset}");
    }
    let init = app
        .client
        .get(format!("{}/docs/swagger-initializer.js", app.address))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(init.contains("/openapi.json"), "{init}");
}

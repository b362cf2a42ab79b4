//! The OpenAPI document: `herald openapi` prints what `herald serve` serves at `/openapi.json`,
//! `docs/openapi.json` is that document (regenerate with `HERALD_WRITE_DOCS=1`), and every
//! operation it lists is routed by the server (none answers "no such endpoint" or "method not
//! allowed"). Whether the answers match their schemas is schemathesis's job in `.ci/schemathesis`.

#[path = "support/serve.rs"]
mod serve;

use serde_json::Value;
use std::path::Path;

fn printed_document() -> Value {
    let out = serve::herald(&[])
        .arg("openapi")
        .output()
        .expect("run herald openapi");
    assert!(
        out.status.success(),
        "herald openapi: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("herald openapi prints JSON")
}

#[test]
fn the_document_in_docs_is_the_one_the_code_generates() {
    let doc = printed_document();
    assert_eq!(doc["openapi"], "3.1.0");
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/openapi.json");
    let text = serde_json::to_string_pretty(&doc).unwrap() + "\n";
    if std::env::var_os("HERALD_WRITE_DOCS").is_some() {
        std::fs::write(&path, &text).unwrap();
    }
    let kept = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        kept == text,
        "docs/openapi.json is not what the code generates: run \
         `HERALD_WRITE_DOCS=1 cargo nextest run -p herald --test openapi` and commit it"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_serves_the_document_and_routes_every_operation_it_lists() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve::serve(dir.path()).await;
    let client = reqwest::Client::new();
    let served: Value = client
        .get(format!("{}/openapi.json", server.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(served, printed_document());

    let paths = served["paths"].as_object().unwrap();
    assert!(paths.len() >= 37, "{} paths", paths.len());
    let mut checked = 0;
    for (path, item) in paths {
        for (method, op) in item.as_object().unwrap() {
            // Every operation documents its error body and the statuses it can answer.
            let responses = op["responses"].as_object().unwrap();
            assert!(responses.contains_key("500"), "{method} {path}: no 500");
            if path.starts_with("/v1/") {
                for status in ["401", "422"] {
                    assert!(
                        responses.contains_key(status),
                        "{method} {path}: no {status}"
                    );
                }
                assert!(op["security"].is_array(), "{method} {path}: no security");
            }
            // Path parameters filled with an id that names nothing: the route must still
            // match (a 404 of the resource, not the fallback's "no such endpoint").
            let url = path
                .split('/')
                .map(|seg| {
                    if seg.starts_with('{') {
                        "nothing-here"
                    } else {
                        seg
                    }
                })
                .collect::<Vec<_>>()
                .join("/");
            let method: reqwest::Method = method.to_uppercase().parse().unwrap();
            let resp = client
                .request(method.clone(), format!("{}{url}", server.base))
                .bearer_auth(&server.key)
                .send()
                .await
                .unwrap();
            let status = resp.status().as_u16();
            let body = resp.text().await.unwrap();
            assert!(
                !body.contains("no such endpoint") && status != 405,
                "{method} {path} is documented but not routed: {status} {body}"
            );
            checked += 1;
        }
    }
    assert!(checked >= 48, "{checked} operations");
}

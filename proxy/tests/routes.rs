//! `GET /v1/models/{id}` and the `/healthz` and `/readyz` probes, on the client port and on
//! the admin port.

mod common;

use bytes::Bytes;
use common::*;
use http::{Request, StatusCode};
use http_body_util::Full;
use serde_json::json;

/// GETs `path` on the client port with the certificate of a fresh account key (any key
/// passes the TLS layer; probes need no funds): status and JSON body.
async fn probe_get(p: &TestProxy, path: &str) -> (StatusCode, serde_json::Value) {
    let mut c = client(p.running.client_addr, 99).await;
    let resp = c.get(path).await;
    let status = resp.status();
    (status, json_body(resp).await)
}

async fn admin_json(p: &TestProxy, path: &str) -> (StatusCode, serde_json::Value) {
    let (status, body) = p.admin(path).await;
    (status, serde_json::from_str(&body).expect("json body"))
}

fn not_ready(reasons: &[&str]) -> serde_json::Value {
    json!({"status": "not_ready", "reasons": reasons})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_is_503_until_a_worker_registers() {
    let p = start_proxy(|_| {}).await;
    let missing = not_ready(&[proxy::health::NO_WORKER]);
    assert_eq!(
        admin_json(&p, "/readyz").await,
        (StatusCode::SERVICE_UNAVAILABLE, missing.clone())
    );
    assert_eq!(
        probe_get(&p, "/readyz").await,
        (StatusCode::SERVICE_UNAVAILABLE, missing.clone())
    );
    let mut c = client(p.running.client_addr, 1).await;
    let resp = c.get("/readyz").await;
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(resp.headers()["cache-control"], "no-store");
    assert_eq!(json_body(resp).await, missing);
    // Liveness does not depend on workers.
    let ok = json!({"status": "ok"});
    assert_eq!(
        admin_json(&p, "/healthz").await,
        (StatusCode::OK, ok.clone())
    );
    assert_eq!(probe_get(&p, "/healthz").await, (StatusCode::OK, ok));

    let w = FakeWorker::connect(p.running.worker_addr, WorkerSpec::new("w-a")).await;
    p.wait_workers(1).await;
    let ready = json!({"status": "ready", "reasons": []});
    assert_eq!(
        admin_json(&p, "/readyz").await,
        (StatusCode::OK, ready.clone())
    );
    assert_eq!(probe_get(&p, "/readyz").await, (StatusCode::OK, ready));

    // Not ready again once the only worker is gone.
    w.kill();
    p.wait_workers(0).await;
    assert_eq!(
        admin_json(&p, "/readyz").await,
        (StatusCode::SERVICE_UNAVAILABLE, missing)
    );
    // Probes are not counted as client requests.
    assert_eq!(p.stats()["requests"]["by_status"], json!({}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_refuse_other_methods() {
    let p = start_proxy(|_| {}).await;
    let mut c = client(p.running.client_addr, 1).await;
    let req = Request::post("https://proxy.invalid/healthz")
        .header("host", "proxy.invalid")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = c.send(req).await;
    assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(resp.headers()["allow"], "GET, HEAD");
    let (status, body) = p.admin("/readyz/").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_by_id_found_unknown_slashed_and_malformed() {
    let p = start_proxy(|_| {}).await;
    let _a = FakeWorker::connect(p.running.worker_addr, WorkerSpec::new("w-a")).await;
    let mut spec = WorkerSpec::new("w-b");
    spec.model = "org/name".into();
    let _b = FakeWorker::connect(p.running.worker_addr, spec).await;
    p.wait_workers(2).await;
    let mut c = client(p.running.client_addr, 1).await;

    let list = json_body(c.get("/v1/models").await).await;
    let listed = |id: &str| {
        list["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["id"] == id)
            .cloned()
            .unwrap()
    };

    // Found: the same object the list carries.
    let resp = c.get("/v1/models/stub-model").await;
    assert_eq!(resp.status(), StatusCode::OK);
    let m = json_body(resp).await;
    assert_eq!(m["id"], MODEL);
    assert_eq!(m["object"], "model");
    assert_eq!(m["owned_by"], "cocoon");
    assert!(m["created"].as_u64().unwrap() > 1_700_000_000);
    assert_eq!(m, listed(MODEL));

    // An id with a slash, literal or percent-encoded.
    for path in ["/v1/models/org/name", "/v1/models/org%2Fname"] {
        let resp = c.get(path).await;
        assert_eq!(resp.status(), StatusCode::OK, "{path}");
        let m = json_body(resp).await;
        assert_eq!(m["id"], "org/name", "{path}");
        assert_eq!(m, listed("org/name"), "{path}");
    }

    // Unknown: OpenAI's 404 with code model_not_found.
    let resp = c.get("/v1/models/no-such-model").await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    let e = json_body(resp).await;
    assert_eq!(
        e,
        json!({"error": {
            "message": "the model \"no-such-model\" does not exist",
            "type": "not_found_error", "param": "model", "code": "model_not_found"}})
    );
    // "org" alone is not "org/name".
    let resp = c.get("/v1/models/org").await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_kind(&json_body(resp).await), "model_not_found");

    // Malformed percent-encoding, and ids that fail the model-name check: 404, not 500.
    for (path, why) in [
        ("/v1/models/bad%zz", "malformed percent-encoding"),
        ("/v1/models/bad%2", "malformed percent-encoding"),
        ("/v1/models/a%20b", "printable ascii"),
        ("/v1/models/%FF", "not utf-8"),
        ("/v1/models/", "printable ascii"),
    ] {
        let resp = c.get(path).await;
        assert_eq!(resp.status(), StatusCode::NOT_FOUND, "{path}");
        let e = json_body(resp).await;
        assert_eq!(error_kind(&e), "model_not_found", "{path}");
        assert_eq!(e["error"]["param"], "model", "{path}");
        let msg = e["error"]["message"].as_str().unwrap();
        assert!(msg.contains(why), "{path}: {msg}");
    }
    let long = format!("/v1/models/{}", "a".repeat(129));
    assert_eq!(c.get(&long).await.status(), StatusCode::NOT_FOUND);

    // Other methods are refused.
    let req = Request::post("https://proxy.invalid/v1/models/stub-model")
        .header("host", "proxy.invalid")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = c.send(req).await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_kind(&json_body(resp).await), "not_found");
}

//! `GET /v1/models/{id}` and the `/healthz` and `/readyz` probes of the local endpoint,
//! against the fake attested proxy.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use client::serve::{Access, ApiKey, ServeOptions};
use common::*;
use measurements::ImageHash;
use serde_json::json;

async fn get(local: SocketAddr, path: &str) -> (u16, serde_json::Value) {
    let (status, _, body) = request(local, "GET", path, b"").await;
    (status, json(&body))
}

/// Polls `/readyz` until it answers `status`, returning the body (panics after 20 s).
async fn readyz_until(local: SocketAddr, status: u16) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (got, body) = get(local, "/readyz").await;
        if got == status {
            return body;
        }
        assert!(Instant::now() < deadline, "readyz stayed {got}: {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn model_paths(proxy: &FakeProxy) -> Vec<String> {
    proxy
        .requests
        .lock()
        .unwrap()
        .iter()
        .filter(|r| r.path.starts_with("/v1/models/"))
        .map(|r| r.path.clone())
        .collect()
}

#[tokio::test]
async fn model_by_id_found_unknown_slashed_and_malformed() {
    let proxy = spawn_proxy().await;
    let local = spawn_local(client_config(&proxy, proxy.image)).await;

    let found = json!({"id": "ok", "object": "model", "created": 0, "owned_by": "cocoon"});
    assert_eq!(get(local, "/v1/models/ok").await, (200, found));

    // Ids with a slash, literal or encoded, reach the proxy as one path.
    let slashed = json!({"id": "org/name", "object": "model", "created": 0, "owned_by": "cocoon"});
    assert_eq!(
        get(local, "/v1/models/org/name").await,
        (200, slashed.clone())
    );
    assert_eq!(get(local, "/v1/models/org%2Fname").await, (200, slashed));

    // Unknown: the proxy's 404 model_not_found.
    let (status, e) = get(local, "/v1/models/nope").await;
    assert_eq!(status, 404);
    assert_eq!(e["error"]["code"], "model_not_found");
    assert_eq!(e["error"]["param"], "model");
    assert_eq!(e["error"]["message"], "no model at \"nope\"");
    // A character outside the unreserved set is sent percent-encoded.
    let (status, e) = get(local, "/v1/models/a%3Ab").await;
    assert_eq!(status, 404);
    assert_eq!(e["error"]["message"], "no model at \"a%3Ab\"");
    assert_eq!(
        model_paths(&proxy),
        [
            "/v1/models/ok",
            "/v1/models/org/name",
            "/v1/models/org/name",
            "/v1/models/nope",
            "/v1/models/a%3Ab"
        ]
    );

    // Malformed or invalid ids: 404 model_not_found here; the proxy is not asked.
    for (path, why) in [
        ("/v1/models/bad%zz", "malformed percent-encoding"),
        ("/v1/models/bad%", "malformed percent-encoding"),
        ("/v1/models/a%20b", "printable ascii"),
        ("/v1/models/%FF", "not utf-8"),
        ("/v1/models/", "printable ascii"),
    ] {
        let (status, e) = get(local, path).await;
        assert_eq!(status, 404, "{path}");
        assert_eq!(e["error"]["code"], "model_not_found", "{path}");
        let msg = e["error"]["message"].as_str().unwrap();
        assert!(msg.contains(why), "{path}: {msg}");
    }
    assert_eq!(model_paths(&proxy).len(), 5);

    let (status, head, _) = request(local, "POST", "/v1/models/ok", b"{}").await;
    assert_eq!(status, 405);
    assert!(head.contains("allow: get"), "{head}");
}

#[tokio::test]
async fn healthz_answers_without_a_proxy_and_without_the_api_key() {
    // Nothing listens where the proxy should be.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let proxy = FakeProxy {
        addr,
        image: ImageHash([0; 32]),
        requests: Default::default(),
        control: Default::default(),
    };
    let opts = ServeOptions {
        access: Access {
            api_key: Some(ApiKey::new("sekrit").unwrap()),
            ..Access::default()
        },
        ..ServeOptions::default()
    };
    let local = spawn_local_with(client_config(&proxy, proxy.image), opts).await;
    let (status, head, body) = request(local, "GET", "/healthz", b"").await;
    assert_eq!(status, 200);
    assert_eq!(json(&body), json!({"status": "ok"}));
    assert!(head.contains("cache-control: no-store"), "{head}");

    // The proxy is down: not ready, naming why.
    let (status, body) = get(local, "/readyz").await;
    assert_eq!(status, 503);
    assert_eq!(body["status"], "not_ready");
    let reasons = body["reasons"].as_array().unwrap();
    assert_eq!(reasons.len(), 1, "{body}");
    let reason = reasons[0].as_str().unwrap();
    assert!(
        reason.starts_with(&format!("proxy {addr}: connect")),
        "{reason}"
    );

    // Other routes still need the key; the probes keep the Host check.
    let (status, _, _) = request(local, "GET", "/v1/models", b"").await;
    assert_eq!(status, 401);
    let (status, _, _) =
        request_with(local, "GET", "/healthz", &[("host", "evil.example")], b"").await;
    assert_eq!(status, 403);
    let (status, head, _) = request(local, "POST", "/healthz", b"{}").await;
    assert_eq!(status, 405);
    assert!(head.contains("allow: get, head"), "{head}");
}

#[tokio::test]
async fn readyz_follows_the_proxy_down_and_up() {
    let proxy = spawn_proxy().await;
    let addr = proxy.addr;
    let local = spawn_local(client_config(&proxy, proxy.image)).await;
    let ready = json!({"status": "ready", "reasons": []});
    assert_eq!(get(local, "/readyz").await, (200, ready.clone()));
    // A ready verdict is reused while the connection stays open: no request per probe.
    let asked = proxy.requests.lock().unwrap().len();
    for _ in 0..5 {
        assert_eq!(get(local, "/readyz").await, (200, ready.clone()));
    }
    assert_eq!(proxy.requests.lock().unwrap().len(), asked);

    // The proxy goes away: its connection closes, and the next probe sees it at once (the
    // cached "ready" is stale without an open connection, whatever its age).
    proxy.stop();
    let stopped = Instant::now();
    let body = readyz_until(local, 503).await;
    assert!(
        stopped.elapsed() < client::client::READY_TTL,
        "{:?}",
        stopped.elapsed()
    );
    let reason = body["reasons"][0].as_str().unwrap();
    assert!(reason.starts_with(&format!("proxy {addr}: ")), "{reason}");
    assert_eq!(body["reasons"].as_array().unwrap().len(), 1);

    // It comes back on the same address, with no model yet, then with models.
    let again = spawn_proxy_at(proxy_regs(), addr).await;
    again
        .control
        .no_models
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let body = readyz_until(local, 503).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut body = body;
    while body["reasons"][0] != format!("proxy {addr} reports no model") {
        assert!(Instant::now() < deadline, "{body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
        body = get(local, "/readyz").await.1;
    }
    again
        .control
        .no_models
        .store(false, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(readyz_until(local, 200).await, ready);
}

#[tokio::test]
async fn readyz_names_an_attestation_refusal() {
    let proxy = spawn_proxy().await;
    let local = spawn_local(client_config(&proxy, ImageHash([0x99; 32]))).await;
    let (status, body) = get(local, "/readyz").await;
    assert_eq!(status, 503);
    let reason = body["reasons"][0].as_str().unwrap();
    assert!(
        reason.contains(&format!("image hash {} not among", proxy.image)),
        "{reason}"
    );
    assert!(proxy.requests.lock().unwrap().is_empty());
}

//! The status port: `/healthz` always, `/readyz` once the models are loaded and while a
//! proxy registration is open.

mod service_support;

use std::net::SocketAddr;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use serde_json::json;
use service_support::*;
use tokio::sync::watch;
use worker::status::{self, Status, MODELS_LOADING, NO_PROXY};

async fn hello(conn: &mut ProxyConn) -> u16 {
    let req = Request::post("http://worker/cocoon/v1/hello")
        .body(Full::new(Bytes::from(r#"{"versions":[1],"proxy":"p"}"#)))
        .unwrap();
    send(conn, req).await.status().as_u16()
}

async fn status_port(status: &std::sync::Arc<Status>) -> (SocketAddr, watch::Sender<bool>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = watch::channel(false);
    tokio::spawn(status::serve(listener, status.clone(), stopped));
    (addr, stop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_follows_loading_and_registration() {
    let status = Status::new();
    let (addr, _stop) = status_port(&status).await;
    let ok = json!({"status": "ok"});
    assert_eq!(status_get(addr, "/healthz").await, (200, ok.clone()));
    assert_eq!(
        status_get(addr, "/readyz").await,
        (
            503,
            json!({"status": "not_ready", "reasons": [MODELS_LOADING, NO_PROXY]})
        )
    );

    // Loaded and dialing, but no hello answered yet.
    let mut h = Harness::start(Options::default()).await;
    status.serving(&h.service);
    let mut conn = h.next_conn().await;
    let no_proxy = json!({"status": "not_ready", "reasons": [NO_PROXY]});
    assert_eq!(status_get(addr, "/readyz").await, (503, no_proxy.clone()));
    assert_eq!(h.service.open_registrations(), 0);

    assert_eq!(hello(&mut conn).await, 200);
    let ready = json!({"status": "ready", "reasons": []});
    assert_eq!(status_get(addr, "/readyz").await, (200, ready.clone()));
    // The counters: one registration, nothing served or unbilled yet.
    let (code, stats) = status_get(addr, "/stats").await;
    assert_eq!(code, 200);
    assert_eq!(stats["registrations"], 1);
    assert_eq!(stats["requests"], 0);
    assert_eq!(stats["unbilled_prompt_tokens"], 0);
    assert_eq!(stats["unbilled_completion_tokens"], 0);
    assert_eq!(h.service.open_registrations(), 1);
    // A second hello on the same connection does not count twice.
    assert_eq!(hello(&mut conn).await, 200);
    assert_eq!(h.service.open_registrations(), 1);

    // The proxy drops the connection: not ready until the worker has registered again.
    conn.close();
    assert_eq!(readyz_until(addr, 503).await, no_proxy);
    assert_eq!(h.service.open_registrations(), 0);
    let mut again = h.next_conn().await;
    assert_eq!(status_get(addr, "/readyz").await, (503, no_proxy));
    assert_eq!(hello(&mut again).await, 200);
    assert_eq!(status_get(addr, "/readyz").await, (200, ready));
    assert_eq!(status_get(addr, "/healthz").await, (200, ok));
    h.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_hello_is_no_registration_and_other_paths_are_404() {
    let status = Status::new();
    let (addr, stop) = status_port(&status).await;
    let mut h = Harness::start(Options::default()).await;
    status.serving(&h.service);
    let mut conn = h.next_conn().await;
    let req = Request::post("http://worker/cocoon/v1/hello")
        .body(Full::new(Bytes::from(r#"{"versions":[99],"proxy":"p"}"#)))
        .unwrap();
    assert_eq!(send(&mut conn, req).await.status().as_u16(), 400);
    assert_eq!(h.service.open_registrations(), 0);
    assert_eq!(status_get(addr, "/readyz").await.0, 503);
    assert_eq!(
        status_get(addr, "/v1/models").await,
        (404, json!({"status": "not_found"}))
    );

    // Stopped: the port closes.
    stop.send_replace(true);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while tokio::net::TcpStream::connect(addr).await.is_ok() {
        assert!(
            std::time::Instant::now() < deadline,
            "status port still open"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    h.shutdown();
}

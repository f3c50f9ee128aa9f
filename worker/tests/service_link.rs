//! The dial loop: attestation of the proxy, reconnection, rotation onto a renewed certificate,
//! graceful shutdown.

mod service_support;

use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use ratls::Clock;
use serde_json::json;
use service_support::*;
use worker::dial::{self, DialError};

async fn hello(conn: &mut ProxyConn) -> u16 {
    let req = Request::post("http://worker/cocoon/v1/hello")
        .body(Full::new(Bytes::from(r#"{"versions":[1],"proxy":"p"}"#)))
        .unwrap();
    send(conn, req).await.status().as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_refuses_a_proxy_whose_image_is_not_in_its_policy() {
    let opts = Options {
        worker_trusts: policy_for(&regs(0x99)),
        ..Options::default()
    };
    let mut h = Harness::start(opts).await;
    // The loop keeps trying; each attempt fails on the proxy side with an alert.
    let seen = tokio::time::timeout(Duration::from_secs(20), h.conns.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(seen.is_err(), "the proxy must not get a connection");
    match dial::connect(&h.link).await {
        Err(DialError::ProxyRejected {
            reason,
            attestation,
            ..
        }) => {
            assert!(attestation);
            assert!(reason.contains("image hash"), "{reason}");
            assert!(reason.contains("not among"), "{reason}");
            assert!(
                reason.contains(&proxy_regs().image_hash().to_string()),
                "{reason}"
            );
        }
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("connected to an untrusted proxy"),
    }
    assert_eq!(h.service.stats().snapshot().registrations, 0);
    h.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnects_after_the_proxy_closes_the_connection() {
    let mut h = Harness::start(Options::default()).await;
    let mut first = h.next_conn().await;
    assert_eq!(hello(&mut first).await, 200);
    first.close();
    let mut second = h.next_conn().await;
    assert_eq!(hello(&mut second).await, 200);
    second.close();
    let mut third = h.next_conn().await;
    assert_eq!(hello(&mut third).await, 200);
    assert_eq!(h.service.stats().snapshot().registrations, 3);
    h.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewal_rotates_the_connection_and_in_flight_streams_finish() {
    let opts = Options {
        tokens: 30,
        tokens_per_second: 100.0,
        ..Options::default()
    };
    let mut h = Harness::start(opts).await;
    let mut old = h.next_conn().await;
    let old_key = old.worker.evidence.spki_der.clone();
    let resp = send(
        &mut old,
        completion_request("/v1/chat/completions", MODEL, 100, chat_body(json!({}))),
    )
    .await;
    assert_eq!(resp.status(), 200);

    assert!(
        !h.certs.renew_if_due(h.clock.now()).unwrap(),
        "fresh certificate"
    );
    h.clock.advance(5 * 3600);
    assert!(
        h.certs.renew_if_due(h.clock.now()).unwrap(),
        "due in its last quarter"
    );
    let mut new = h.next_conn().await;
    assert_ne!(new.worker.evidence.spki_der, old_key, "new key");
    assert_eq!(hello(&mut new).await, 200);

    // The stream on the old connection still completes.
    let evs = events(resp).await;
    assert!(evs.last().unwrap().is_done(), "{evs:?}");
    h.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_in_flight_streams_then_stops() {
    let opts = Options {
        tokens: 20,
        tokens_per_second: 100.0,
        ..Options::default()
    };
    let mut h = Harness::start(opts).await;
    let mut conn = h.next_conn().await;
    let resp = send(
        &mut conn,
        completion_request("/v1/chat/completions", MODEL, 100, chat_body(json!({}))),
    )
    .await;
    h.shutdown();
    let body = tokio::time::timeout(Duration::from_secs(10), resp.into_body().collect())
        .await
        .unwrap()
        .unwrap()
        .to_bytes();
    assert!(body.ends_with(b"data: [DONE]\n\n"));
    tokio::time::timeout(Duration::from_secs(10), h.worker.stopped())
        .await
        .expect("the dial loop ends")
        .unwrap();
    // No new streams are accepted after GOAWAY.
    let req = completion_request("/v1/chat/completions", MODEL, 1, chat_body(json!({})));
    let refused = match conn.send.ready().await {
        Err(_) => true,
        Ok(()) => conn.send.send_request(req).await.is_err(),
    };
    assert!(refused);
}

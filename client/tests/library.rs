//! The library API against a fake attested proxy.

mod common;

use bytes::Bytes;
use client::{Client, ErrorKind, RequestFields};
use common::*;
use measurements::ImageHash;
use protocol::sse::EVENT_USAGE;
use protocol::Endpoint;

#[tokio::test]
async fn connect_verifies_the_proxy() {
    let proxy = spawn_proxy().await;
    let client = Client::connect(client_config(&proxy, proxy.image))
        .await
        .unwrap();
    let info = client.warm().await.unwrap();
    assert_eq!(info.image_hash, proxy.image);
    assert_eq!(info.root, "cocoon-simulated-root");
    assert_eq!(client.models().await.unwrap()["object"], "list");
}

#[tokio::test]
async fn connect_refuses_another_image_with_the_named_reason() {
    let proxy = spawn_proxy().await;
    let err = Client::connect(client_config(&proxy, ImageHash([1; 32])))
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::Attestation);
    assert!(
        err.message.contains("attestation rejected: image hash"),
        "{err}"
    );
    assert!(err.message.contains(&proxy.image.to_string()), "{err}");
}

#[tokio::test]
async fn production_policy_refuses_the_simulated_root() {
    let proxy = spawn_proxy().await;
    let mut config = client_config(&proxy, proxy.image);
    config.policy = measurements::Policy::production().with_images([proxy.image]);
    let err = Client::connect(config).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::Attestation);
    assert!(err.message.contains("untrusted root"), "{err}");
}

#[tokio::test]
async fn unreachable_proxy_is_an_upstream_error() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let proxy = FakeProxy {
        addr,
        image: ImageHash([0; 32]),
        requests: Default::default(),
        control: Default::default(),
    };
    let err = Client::connect(client_config(&proxy, proxy.image))
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::Upstream);
    assert_eq!(err.status(), 502);
}

#[tokio::test]
async fn chat_stream_yields_protocol_events() {
    let proxy = spawn_proxy().await;
    let client = Client::new(client_config(&proxy, proxy.image)).unwrap();
    let body = Bytes::from_static(br#"{"model":"ok","messages":[],"max_completion_tokens":8}"#);
    let fields = RequestFields::parse(&body).unwrap();
    let meta = client.request_meta(&fields).unwrap();
    assert_eq!(meta.max_tokens, 8);
    assert_eq!(meta.model, "ok");
    assert_ne!(
        meta.request_id,
        client.request_meta(&fields).unwrap().request_id
    );
    let mut events = client.chat_stream(body.clone(), &meta).await.unwrap();
    let mut names = Vec::new();
    let mut done = false;
    while let Some(ev) = events.next_event().await {
        let ev = ev.unwrap();
        done |= ev.is_done();
        names.push(ev.name.clone());
    }
    assert!(done);
    assert!(names.contains(&Some(EVENT_USAGE.to_string())));
    // The aggregated form.
    let v = client
        .complete(Endpoint::ChatCompletions, body, &meta)
        .await
        .unwrap();
    assert_eq!(v["choices"][0]["message"]["content"], "Hello world");
    // Errors before the stream are typed.
    let meta = client
        .request_meta(&RequestFields::parse(br#"{"model":"busy"}"#).unwrap())
        .unwrap();
    let err = client
        .chat_stream(Bytes::from_static(b"{}"), &meta)
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::NoCapacity);
}

#[tokio::test]
async fn concurrent_requests_share_the_pool() {
    let proxy = spawn_proxy().await;
    let client = std::sync::Arc::new(Client::new(client_config(&proxy, proxy.image)).unwrap());
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let c = client.clone();
        tasks.push(tokio::spawn(async move {
            let body = Bytes::from_static(br#"{"model":"ok"}"#);
            let meta = c
                .request_meta(&RequestFields::parse(&body).unwrap())
                .unwrap();
            c.complete(Endpoint::ChatCompletions, body, &meta).await
        }));
    }
    for t in tasks {
        assert_eq!(
            t.await.unwrap().unwrap()["usage"]["prompt_tokens"],
            USAGE.prompt_tokens
        );
    }
    assert_eq!(proxy.requests.lock().unwrap().len(), 16);
}

/// A stream dropped before its end asks the proxy to stop the request (`POST
/// /cocoon/v1/cancel` with its id, on the connection it went on) so the end — usage, and with
/// encryption the receipt — is still read and logged; streams read to `[DONE]` or to an error
/// event send none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_dropped_early_is_cancelled_at_the_proxy() {
    let proxy = spawn_proxy().await;
    let client = Client::new(client_config(&proxy, proxy.image)).unwrap();
    let cancels = || {
        cancels(&proxy)
            .iter()
            .map(|r| {
                r.headers[protocol::meta::H_REQUEST_ID]
                    .to_str()
                    .unwrap()
                    .to_string()
            })
            .collect::<Vec<_>>()
    };
    let meta_of = |model: &str| {
        let body = format!(r#"{{"model":"{model}","messages":[]}}"#);
        let fields = RequestFields::parse(body.as_bytes()).unwrap();
        (Bytes::from(body), client.request_meta(&fields).unwrap())
    };
    // Read to [DONE], to an error event, or aggregated: no cancel.
    let (body, meta) = meta_of("ok");
    let mut events = client.chat_stream(body.clone(), &meta).await.unwrap();
    while let Some(ev) = events.next_event().await {
        if ev.unwrap().is_done() {
            break;
        }
    }
    drop(events);
    client
        .complete(Endpoint::ChatCompletions, body, &meta)
        .await
        .unwrap();
    let (body, meta) = meta_of("midfail");
    let mut events = client.chat_stream(body, &meta).await.unwrap();
    while let Some(Ok(ev)) = events.next_event().await {
        if ev.name.as_deref() == Some(protocol::sse::EVENT_ERROR) {
            break;
        }
    }
    drop(events);
    // Given up after the first event.
    let (body, meta) = meta_of("endless");
    let mut events = client.chat_stream(body, &meta).await.unwrap();
    events.next_event().await.unwrap().unwrap();
    drop(events);
    wait_until("a cancel sent", || !cancels().is_empty()).await;
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    assert_eq!(cancels(), vec![meta.request_id.to_string()]);
}

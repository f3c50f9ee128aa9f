//! End to end with the real worker service (`cocoon-worker`, stub engine): it dials the proxy
//! over mutual RA-TLS, registers, and serves a streamed request whose usage the proxy bills.

mod common;

use std::time::Duration;

use common::real::{start_real_worker, BODY_STUB};
use common::*;
use http::StatusCode;
use protocol::usage::Prices;
use worker::engine::stub::StubEngine;
use worker::service::ServiceOptions;
use worker::RunningWorker;

/// Starts the real worker service (stub engine, 24 tokens) dialing `p`.
fn start_worker(p: &TestProxy) -> RunningWorker {
    start_real_worker(
        p.running.worker_addr,
        StubEngine::new("stub", 24, 5000.0),
        ServiceOptions::default(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_worker_registers_streams_and_is_billed() {
    let p = start_proxy(|_| {}).await;
    let worker = start_worker(&p);
    p.wait_workers(1).await;
    let s = p.stats();
    assert_eq!(s["workers"][0]["name"], "real-worker");
    assert_eq!(
        s["workers"][0]["image_hash"],
        worker_regs().image_hash().to_string()
    );

    let mut c = client(p.running.client_addr, 1).await;
    let resp = c.send(chat("stub", 16, None, BODY_STUB)).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let evs = events(resp.into_body()).await;
    assert!(error_of(&evs).is_none(), "{:?}", error_of(&evs));
    let usage = usage_of(&evs).expect("usage");
    assert_eq!(usage.completion_tokens, 16);
    assert!(evs.last().unwrap().1.is_done());
    let s = p.stats();
    assert_eq!(s["clients"][&c.account]["completion_tokens"], 16);
    assert_eq!(
        s["clients"][&c.account]["cost_nano"],
        Prices::default().cost(&usage, 1000)
    );

    // A body the worker's validation refuses comes back as the worker's 400, not retried.
    let bad = br#"{"model":"stub","messages":[],"surprise":1}"#;
    let resp = c.send(chat("stub", 16, None, bad)).await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_kind(&json_body(resp).await), "invalid_request");
    assert_eq!(p.stats()["requests"]["retries"], 0);

    let _ = worker.shutdown(Duration::from_secs(5)).await;
    p.wait_workers(0).await;
}

/// A streamed stub chat request whose one message is `n` words (the stub counts n + 1 prompt
/// tokens).
fn words_prompt(n: usize) -> Vec<u8> {
    serde_json::json!({
        "model": "stub",
        "messages": [{"role": "user", "content": vec!["w"; n].join(" ")}],
        "stream": true,
    })
    .to_string()
    .into_bytes()
}

/// Regression (billing hole): the proxy reserved for `max_prompt_tokens` but no worker read the
/// budget header, and usage beyond the reservation was charged at the reservation: a 200,000
/// word prompt used 200,001 prompt tokens and was charged a fiftieth of its cost. The worker
/// now counts prompt tokens before generating and refuses a prompt over the budget; nothing is
/// billed for it, and a prompt within the budget is billed at exactly its usage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prompts_over_the_reserved_budget_are_refused_before_generation() {
    let p = start_proxy(|c| c.max_prompt_tokens = 100).await;
    let worker = start_worker(&p);
    p.wait_workers(1).await;
    let mut c = client(p.running.client_addr, 3).await;

    let resp = c.send(chat("stub", 16, None, &words_prompt(200_000))).await;
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let err = json_body(resp).await;
    assert_eq!(error_kind(&err), "payload_too_large");
    let msg = err["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(msg.contains("200001") && msg.contains("100"), "{msg}");
    let s = p.stats();
    assert!(
        s["clients"].get(&c.account).is_none()
            || s["clients"][&c.account]["cost_nano"].as_u64() == Some(0),
        "{s}"
    );
    assert_eq!(s["requests"]["retries"], 0);

    // 99 words + 1 per message: exactly the budget is served and billed at its usage.
    let resp = c.send(chat("stub", 16, None, &words_prompt(99))).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let evs = events(resp.into_body()).await;
    let usage = usage_of(&evs).expect("usage");
    assert_eq!(usage.prompt_tokens, 100);
    let s = p.stats();
    assert_eq!(
        s["clients"][&c.account]["cost_nano"],
        Prices::default().cost(&usage, 1000)
    );
    assert_eq!(
        s["requests"]["over_reservation"].as_u64().unwrap_or(0),
        0,
        "{s}"
    );

    let _ = worker.shutdown(Duration::from_secs(5)).await;
}

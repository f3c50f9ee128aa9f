//! Workers paid through their connection, end to end on a local chain running Cocoon's real
//! contracts: a proxy with payments on (durable ledger, engine, `PaidLedger`) and the real
//! worker service with `[payout]` (stub engine). A bound client's requests are billed to its
//! client contract and to the worker's contract; the anchored count reaches the worker as a
//! payout voucher over the attested connection; the worker submits it from its wallet and the
//! worker owner receives exactly tokens × worker_fee, read from the chain. The client contract
//! is charged exactly what the ledger billed. A worker that has seen a higher count from this
//! proxy contract refuses it at registration, and the proxy never routes to it.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::chain::*;
use common::real::{start_paid_worker, BODY_STUB};
use ed25519_dalek::SigningKey;
use http::StatusCode;
use proxy::payments::{PaidLedger, PaymentsConfig};
use proxy::Proxy;
use ratls::{Role, SystemClock};

use tonsim::TonChain;
use worker::engine::stub::StubEngine;
use worker::payout::{PayoutSetup, Payouts};
use worker::service::ServiceOptions;

/// The proxy with payments on: `p`'s engine and ledger, prices from the params, `tweak`ed.
async fn start_paid_proxy(
    p: &Arc<proxy::payments::Payments>,
    ledger: &Arc<proxy::ledger::durable::DurableLedger>,
    tweak: impl FnOnce(&mut proxy::ProxyConfig),
) -> proxy::RunningProxy {
    let mut config = proxy::ProxyConfig::local("test-proxy");
    config.prices = protocol::usage::Prices::of_params(&params());
    tweak(&mut config);
    Proxy {
        config,
        resolver: common::resolver(common::proxy_regs(), Role::Proxy, common::now()),
        worker_policy: common::worker_policy(),
        clock: Arc::new(SystemClock),
        ledger: Arc::new(PaidLedger::new(ledger.clone(), p.clone())),
        payments: Some(p.clone()),
        collateral_source: None,
    }
    .start()
    .await
    .expect("proxy starts")
}

fn payouts(chain: &Arc<dyn TonChain>, state_file: std::path::PathBuf) -> Arc<Payouts> {
    Payouts::new(PayoutSetup {
        chain: chain.clone(),
        owner: worker_owner(),
        wallet_key: SigningKey::from_bytes(&[5; 32]),
        wallet_owner: worker_owner(),
        state_file: Some(state_file),
        voucher_value_nano: 700_000_000,
        wallet_timeout: Duration::from_secs(5),
        poll: Duration::from_millis(10),
    })
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_is_paid_through_its_connection_and_refuses_a_proxy_that_went_back() {
    let d = dir("payouts-e2e");
    let ledger = open_ledger(&d.join("ledger.redb"));
    let worker_wallet = wallet_address(&SigningKey::from_bytes(&[5; 32]), worker_owner());
    let local = local_chain(wallet_address(&wallet_key(), owner()), worker_wallet);
    let chain: Arc<dyn TonChain> = Arc::new(local.clone());
    let p = engine(
        &chain,
        &ledger,
        PaymentsConfig {
            // charge whatever is anchored
            charge_threshold_nano: 1,
            ..config()
        },
    );
    let client_contract = deploy_proxy_and_client_for(&p, &local, &account_key_of(7)).await;
    p.sync_chain().await.unwrap();
    let start = log_len(&local).await;
    let task = p.start();

    let running = start_paid_proxy(&p, &ledger, |_| {}).await;
    let state_file = d.join("payout-state.json");
    let worker = start_paid_worker(
        running.worker_addr,
        StubEngine::new("stub", 24, 5000.0),
        ServiceOptions::default(),
        Some(payouts(&chain, state_file)),
    );
    until("the worker registers", || async {
        running.state().registry.len() == 1
    })
    .await;
    let contract = p.worker_contract(&worker_owner()).unwrap();

    // requests from the bound client
    let mut c = common::client(running.client_addr, 7).await;
    let mut completion = 0;
    for _ in 0..5 {
        let resp = c.send(common::chat("stub", 16, None, BODY_STUB)).await;
        assert_eq!(resp.status(), StatusCode::OK);
        let evs = common::events(resp.into_body()).await;
        assert!(
            common::error_of(&evs).is_none(),
            "{:?}",
            common::error_of(&evs)
        );
        completion += common::usage_of(&evs).expect("usage").completion_tokens;
    }
    assert_eq!(completion, 5 * 16);
    let billed = ledger
        .worker(&contract.to_string())
        .expect("billed to the worker contract")
        .tokens;
    let used = ledger
        .client(&client_contract.to_string())
        .unwrap()
        .used_tokens;
    assert_eq!(billed, used, "the worker served everything the client used");
    assert!(billed > 0);

    // anchored → voucher over the connection → submitted by the worker → paid on chain
    let wp = worker.service().payouts().unwrap().clone();
    until("the worker's payout", || async {
        wp.earnings().await.proxies.first().map(|e| e.paid_tokens) == Some(billed)
    })
    .await;
    let earned = received(&local, worker_owner(), start).await;
    assert_eq!(
        earned,
        u128::from(billed) * WORKER_FEE,
        "worker owner gets tokens × fee"
    );
    let e = wp.earnings().await;
    assert_eq!((e.paid_nano, e.pending_nano), (earned, 0));
    assert_eq!(e.proxies[0].worker_contract, contract.to_string());
    // the client contract is charged exactly what the ledger billed
    until("the client charge", || async {
        ledger
            .client(&client_contract.to_string())
            .unwrap()
            .charged_tokens
            == used
    })
    .await;
    let state = tonsim::tonchain::ClientState::from_stack(
        &chain
            .run_get_method(&client_contract, tonsim::tonchain::ClientState::GET_METHOD)
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(state.tokens_used, used);

    // the money in /jsonstats and /metrics
    until("the payout in the proxy's stats", || async {
        p.stats()
            .workers
            .get(&contract.to_string())
            .map(|w| w.paid_tokens)
            == Some(billed)
    })
    .await;
    let j = serde_json::to_value(running.json_stats()).unwrap();
    assert_eq!(j["workers"][0]["account"], contract.to_string());
    let money = &j["payments"];
    assert_eq!(money["health"], "healthy");
    assert_eq!(
        money["clients"][client_contract.to_string()]["charged_tokens"],
        used
    );
    assert_eq!(
        money["clients"][client_contract.to_string()]["pending_nano"],
        0
    );
    let w = &money["workers"][contract.to_string()];
    assert_eq!(
        (w["paid_tokens"].as_u64(), w["pending_tokens"].as_u64()),
        (Some(billed), Some(0))
    );
    assert_eq!(w["paid_nano"].as_u64().map(u128::from), Some(earned));
    let metrics = proxy::admin::prometheus(running.state());
    for line in [
        "cocoon_proxy_payments_healthy 1".to_string(),
        format!("cocoon_proxy_worker_paid_tokens{{worker_contract=\"{contract}\"}} {billed}"),
        format!("cocoon_proxy_client_charged_tokens{{client=\"{client_contract}\"}} {used}"),
        format!("cocoon_proxy_client_pending_nano{{client=\"{client_contract}\"}} 0"),
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "{line} missing:\n{metrics}"
        );
    }

    // a worker (same owner, so the same worker contract) that remembers a higher count from
    // this proxy contract refuses it when shown the last voucher; the proxy does not route to it
    let high = d.join("high-state.json");
    std::fs::write(
        &high,
        serde_json::json!({ p.proxy_contract().to_string(): 1_000_000_000u64 }).to_string(),
    )
    .unwrap();
    let suspicious = start_paid_worker(
        running.worker_addr,
        StubEngine::new("stub", 24, 5000.0),
        ServiceOptions::default(),
        Some(payouts(&chain, high)),
    );
    until("the refusal", || async {
        running
            .state()
            .stats
            .refusals()
            .get("payout_refused")
            .copied()
            .unwrap_or(0)
            >= 1
    })
    .await;
    assert_eq!(
        running.state().registry.len(),
        1,
        "only the first worker serves"
    );

    let _ = suspicious.shutdown(Duration::from_secs(2)).await;
    let _ = worker.shutdown(Duration::from_secs(2)).await;
    task.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insufficient_funds_name_both_amounts_and_a_top_up_on_chain_lets_the_next_request_pass() {
    let d = dir("payouts-topup");
    let ledger = open_ledger(&d.join("ledger.redb"));
    let local = local_chain(wallet_address(&wallet_key(), owner()), addr(0x42));
    let chain: Arc<dyn TonChain> = Arc::new(local.clone());
    let p = engine(&chain, &ledger, config());
    p.deploy_proxy_contract().await.unwrap();
    // a client contract holding 0.5 TON (below its 1 TON stake), bound to the key of seed 8
    let (init, _) = client_contract();
    let contract = deploy_client(&local, init, &account_key_of(8), TON / 2).await;
    p.sync_chain().await.unwrap();
    let task = p.start();

    // a reservation of (600,000 + 16) tokens x 1000 nano: more than 0.5 TON, less than 1 TON
    let running = start_paid_proxy(&p, &ledger, |c| c.max_prompt_tokens = 600_000).await;
    let worker = start_paid_worker(
        running.worker_addr,
        StubEngine::new("stub", 24, 5000.0),
        ServiceOptions::default(),
        None,
    );
    until("the worker registers", || async {
        running.state().registry.len() == 1
    })
    .await;

    let mut c = common::client(running.client_addr, 8).await;
    let body = br#"{"model":"stub","messages":[{"role":"user","content":"hi"}],"stream":true}"#;
    let resp = c.send(common::chat("stub", 16, None, body)).await;
    assert_eq!(resp.status(), StatusCode::PAYMENT_REQUIRED);
    let err = common::json_body(resp).await;
    let message = err["error"]["message"].as_str().unwrap().to_string();
    assert!(
        message.contains("600016000") && message.contains("available 500000000"),
        "the 402 names the needed and the available amount: {message}"
    );

    // the client tops up on chain; the proxy's watcher sees it; nothing restarts
    top_up(&local, contract, TON / 2, 3).await;
    until("the top-up in the ledger", || async {
        ledger.client(&contract.to_string()).map(|a| a.balance_nano) == Some(TON as u64)
    })
    .await;
    let resp = c.send(common::chat("stub", 16, None, body)).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let evs = common::events(resp.into_body()).await;
    assert!(
        common::usage_of(&evs).is_some(),
        "{:?}",
        common::error_of(&evs)
    );

    let _ = worker.shutdown(Duration::from_secs(2)).await;
    task.shutdown().await;
}

/// A client that submits its charge itself (Cocoon's client does once its unpaid usage passes
/// half its stake) gets the voucher from the proxy's client port: 404 while nothing is
/// anchored, then the Kp-signed charge for exactly the anchored count of its own contract, the
/// same count again until the chain charges it; submitted to the real client contract, it
/// charges exactly that count, and then nothing is due.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_fetches_its_charge_voucher_and_the_contract_accepts_it() {
    use ton::messages::signed::{SignedMessage, SignedOp};
    let d = dir("payouts-self-charge");
    let ledger = open_ledger(&d.join("ledger.redb"));
    let local = local_chain(wallet_address(&wallet_key(), owner()), addr(0x42));
    let chain: Arc<dyn TonChain> = Arc::new(local.clone());
    // The proxy never sends a charge itself here: its threshold is far away.
    let p = engine(
        &chain,
        &ledger,
        PaymentsConfig {
            charge_threshold_nano: u64::MAX,
            ..config()
        },
    );
    let contract = deploy_proxy_and_client_for(&p, &local, &account_key_of(9)).await;
    p.sync_chain().await.unwrap();
    let task = p.start();
    let running = start_paid_proxy(&p, &ledger, |_| {}).await;
    let worker = start_paid_worker(
        running.worker_addr,
        StubEngine::new("stub", 24, 5000.0),
        ServiceOptions::default(),
        None,
    );
    until("the worker registers", || async {
        running.state().registry.len() == 1
    })
    .await;

    let mut c = common::client(running.client_addr, 9).await;
    let resp = c.get(protocol::paths::CHARGE).await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND, "nothing billed yet");
    for _ in 0..3 {
        let body =
            br#"{"model":"stub","messages":[{"role":"user","content":"one two"}],"stream":true}"#;
        let resp = c.send(common::chat("stub", 16, None, body)).await;
        assert_eq!(resp.status(), StatusCode::OK);
        common::events(resp.into_body()).await;
    }
    let used = ledger.client(&contract.to_string()).unwrap().used_tokens;
    assert!(used > 0);
    until("everything anchored", || async {
        ledger
            .client(&contract.to_string())
            .unwrap()
            .anchored_tokens
            == used
    })
    .await;

    let v = fetch_charge(&mut c).await;
    assert_eq!(v.tokens, used);
    assert_eq!(v.client_contract, contract.to_string());
    assert_eq!(v.proxy_contract, p.proxy_contract().to_string());
    let cell = ton::boc::decode_hex(&v.voucher).unwrap();
    let msg =
        SignedMessage::parse_verified(&cell, &kp().verifying_key().to_bytes(), &contract).unwrap();
    assert_eq!((msg.op, msg.payload.tokens), (SignedOp::Charge, Some(used)));
    // Asked again before the chain charged it: the same count (nothing new is claimed).
    assert_eq!(fetch_charge(&mut c).await.tokens, used);

    // Submitted by the client (any sender; its own excess address), the contract charges it.
    let before = client_state(&chain, &contract).await;
    let body = msg.repack(&client_owner()).unwrap();
    send(&local, client_owner(), contract, 300_000_000, None, body).await;
    let after = client_state(&chain, &contract).await;
    assert_eq!(after.tokens_used, used);
    assert_eq!(
        before.balance - after.balance,
        u128::from(used) * params().price_per_token.nano()
    );
    until("the proxy sees the charge", || async {
        ledger.client(&contract.to_string()).unwrap().charged_tokens == used
    })
    .await;
    let resp = c.get(protocol::paths::CHARGE).await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND, "charged: nothing due");

    let _ = worker.shutdown(Duration::from_secs(2)).await;
    task.shutdown().await;
}

async fn fetch_charge(c: &mut common::Client) -> protocol::payout::ChargeVoucher {
    let resp = c.get(protocol::paths::CHARGE).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let v: protocol::payout::ChargeVoucher =
        serde_json::from_value(common::json_body(resp).await).unwrap();
    v.validate().unwrap();
    v
}

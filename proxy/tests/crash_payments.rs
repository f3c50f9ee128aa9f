//! Crash safety with money, real processes: the `cocoon-proxy` binary with its durable ledger
//! and payments engine, against a local chain running Cocoon's real contracts (served over the
//! toncenter-style HTTP API from this test process), a real worker service with payouts, and
//! four clients sending requests. The proxy is killed with SIGKILL 50 times at random moments —
//! during commits, anchors, and with charge and payout vouchers in flight — and restarted. At
//! the end, after one more start that settles everything:
//! * every voucher ever applied on chain is ≤ the ledger's final count, and no two vouchers
//!   for one count carry different contents (client charges and worker payouts);
//! * no request is billed twice or lost: billed = k × (tokens of one request) with
//!   completed ≤ k ≤ attempted (a request the client saw complete is billed; one cut off by the
//!   kill after its commit may be billed without the client having seen it);
//! * chain, ledger and worker agree: the client contract's `tokens_used`, the worker
//!   contract's paid tokens and the worker's own earnings equal the ledger's billed count.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::chain::*;
use common::process::{config, read_ready, scratch, spawn, terminate, wait_exit, write_config};
use common::real::start_worker_with;
use ed25519_dalek::SigningKey;
use http::StatusCode;
use proxy::keystore::KeyStore as _;
use proxy::payments::PaymentsConfig;
use ton::address::Addr;
use ton::contracts::{ClientData, ContractKind, ProxyData, WalletData, WorkerData};
use ton::messages::signed::{SignedMessage, SignedOp};
use tonsim::http_server::LocalServer;
use tonsim::TonChain;
use worker::dial::{Backoff, LinkOptions};
use worker::engine::stub::StubEngine;
use worker::payout::{PayoutSetup, Payouts};
use worker::service::ServiceOptions;

const KILLS: usize = 50;
const CLIENTS: usize = 4;
const BODY: &[u8] =
    br#"{"model":"stub","messages":[{"role":"user","content":"hi"}],"stream":true}"#;

/// Requests the clients sent, and those they saw complete (usage and `[DONE]`).
#[derive(Default)]
struct Load {
    attempted: AtomicU64,
    completed: AtomicU64,
    /// Adjusted tokens of one request (all are the same).
    tokens: AtomicU64,
}

async fn client_loop(addr: std::net::SocketAddr, seed: u8, load: Arc<Load>, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::SeqCst) {
        let Ok(tcp) = tokio::net::TcpStream::connect(addr).await else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        let Ok(mut c) = common::client_on(tcp, seed, false).await else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        while !stop.load(Ordering::SeqCst) {
            load.attempted.fetch_add(1, Ordering::SeqCst);
            let Some(resp) = c.try_send(common::chat("stub", 4, None, BODY)).await else {
                break;
            };
            if resp.status() != StatusCode::OK {
                // e.g. 503 while the worker reconnects
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
            let evs = common::try_events(resp.into_body()).await;
            let done = evs.last().is_some_and(|e| e.1.is_done());
            if let (Some(u), true) = (common::usage_of(&evs), done) {
                load.completed.fetch_add(1, Ordering::SeqCst);
                load.tokens.store(u.total(), Ordering::SeqCst);
            }
        }
    }
}

/// Charge (client contract) or payout (worker contract) vouchers applied on chain, by count:
/// the hashes of the signed payloads seen for each count.
async fn vouchers(
    local: &tonsim::LocalChain,
    contract: Addr,
    op: SignedOp,
) -> BTreeMap<u64, Vec<[u8; 32]>> {
    local
        .run(move |c| {
            let mut out: BTreeMap<u64, Vec<[u8; 32]>> = BTreeMap::new();
            for t in c
                .log()
                .iter()
                .filter(|t| t.account == contract && t.success())
            {
                let Some(m) = &t.in_msg else { continue };
                let Ok(s) = SignedMessage::parse(&m.body) else {
                    continue;
                };
                if s.op != op {
                    continue;
                }
                let h = s.payload_cell.hash();
                let e = out.entry(s.payload.tokens.unwrap_or(0)).or_default();
                if !e.contains(&h) {
                    e.push(h);
                }
            }
            out
        })
        .await
        .unwrap()
}

async fn jsonstats(admin: std::net::SocketAddr) -> serde_json::Value {
    serde_json::from_str(&common::admin_get(admin, "/jsonstats").await.1).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_kill_9s_with_vouchers_in_flight_lose_nothing_and_double_nothing() {
    let dir = scratch("crash-payments");
    // the proxy's key store, made here so the test knows the wallet to fund and Kp
    std::fs::write(dir.join("keys.pass"), "crash test passphrase\n").unwrap();
    let store = proxy::keystore::EncryptedFileStore::new(
        &dir.join("keys"),
        zeroize::Zeroizing::new(b"crash test passphrase".to_vec()),
    )
    .unwrap();
    let kp = SigningKey::from_bytes(&store.load_or_create(proxy::keystore::PROXY_KEY).unwrap());
    let wallet =
        SigningKey::from_bytes(&store.load_or_create(proxy::keystore::WALLET_KEY).unwrap());
    let kp_pub = kp.verifying_key().to_bytes();
    let proxy_wallet = WalletData::initial(wallet.verifying_key().to_bytes(), owner())
        .state_init()
        .unwrap()
        .address()
        .unwrap();
    let worker_key = SigningKey::from_bytes(&[5; 32]);
    let local = local_chain(proxy_wallet, wallet_address(&worker_key, worker_owner()));
    let server = LocalServer::start(local.clone()).await.unwrap();
    let chain: Arc<dyn TonChain> = Arc::new(local.clone());

    let pp = params().for_proxy(ContractKind::Worker.code(), ContractKind::Client.code());
    let proxy_contract = ProxyData::initial(owner(), kp_pub, root(), pp)
        .state_init()
        .unwrap()
        .address()
        .unwrap();
    let client_init = ClientData::initial(
        client_owner(),
        proxy_contract,
        kp_pub,
        params().min_client_stake,
        params(),
    )
    .state_init()
    .unwrap();
    let client = client_init.address().unwrap();
    let worker_contract = WorkerData::initial(worker_owner(), proxy_contract, kp_pub, params())
        .state_init()
        .unwrap()
        .address()
        .unwrap();

    let mut file = config();
    file.accounts = Default::default();
    file.ledger = Some(proxy::config::LedgerFile {
        path: "ledger.redb".into(),
    });
    file.keys = Some(proxy::config::KeysFile {
        dir: "keys".into(),
        passphrase_file: "keys.pass".into(),
    });
    file.payments = Some(PaymentsConfig {
        anchor_interval_ms: 150,
        poll_interval_ms: 50,
        charge_threshold_nano: 1,
        voucher_retry_ms: 300,
        wallet_timeout_ms: 3_000,
        ..PaymentsConfig::new(&server.url(), &params(), &owner(), &root())
    });
    let config_path = write_config(&dir, &file);

    // first start: the proxy deploys its contract; then the client contract is deployed,
    // bound to the clients' account key and funded
    let mut child = spawn(&config_path);
    let [workers, clients, admin] = read_ready(&mut child).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while chain.account(&proxy_contract).await.unwrap().status != tonsim::AccountStatus::Active {
        assert!(Instant::now() < deadline, "proxy contract not deployed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    deploy_client(&local, client_init, &account_key_of(9), 100 * TON).await;

    let payouts = Payouts::new(PayoutSetup {
        chain: chain.clone(),
        owner: worker_owner(),
        wallet_key: worker_key,
        wallet_owner: worker_owner(),
        state_file: Some(dir.join("payout-state.json")),
        voucher_value_nano: 700_000_000,
        wallet_timeout: Duration::from_secs(3),
        poll: Duration::from_millis(10),
    })
    .unwrap();
    let worker = start_worker_with(
        workers,
        StubEngine::new("stub", 24, 5000.0),
        ServiceOptions::default(),
        Some(payouts.clone()),
        LinkOptions {
            backoff: Backoff::new(
                Duration::from_millis(10),
                Duration::from_millis(100),
                Duration::from_millis(50),
            ),
            ..LinkOptions::default()
        },
    );
    let load = Arc::new(Load::default());
    let mut rng: u64 = 0x9e37_79b9_7f4a_7c15;
    let started = Instant::now();
    for kill in 0..=KILLS {
        if kill > 0 {
            child = spawn(&config_path);
            let [w, c, a] = read_ready(&mut child).await;
            assert_eq!((w, c, a), (workers, clients, admin), "same ports");
        }
        // the worker redials; the clients send until the kill
        let deadline = Instant::now() + Duration::from_secs(30);
        while jsonstats(admin).await["workers"]
            .as_array()
            .is_none_or(|w| w.is_empty())
        {
            assert!(
                Instant::now() < deadline,
                "kill {kill}: the worker did not register"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if kill == KILLS {
            break;
        }
        let stop = Arc::new(AtomicBool::new(false));
        let tasks: Vec<_> = (0..CLIENTS)
            .map(|_| tokio::spawn(client_loop(clients, 9, load.clone(), stop.clone())))
            .collect();
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        tokio::time::sleep(Duration::from_millis(100 + rng % 500)).await;
        child.kill().unwrap(); // SIGKILL
        let _ = child.wait();
        stop.store(true, Ordering::SeqCst);
        for t in tasks {
            let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
        }
    }
    let kills_took = started.elapsed();

    // the last start settles everything: anchored, charged, paid out
    let deadline = Instant::now() + Duration::from_secs(60);
    let (billed, stats) = loop {
        let j = jsonstats(admin).await;
        let c = &j["payments"]["clients"][client.to_string()];
        let w = &j["payments"]["workers"][worker_contract.to_string()];
        let billed = c["billed_tokens"].as_u64().unwrap_or(0);
        let settled = billed > 0
            && c["pending_tokens"].as_u64() == Some(0)
            && w["pending_tokens"].as_u64() == Some(0)
            && w["billed_tokens"].as_u64() == Some(billed)
            && payouts
                .earnings()
                .await
                .proxies
                .first()
                .map(|e| e.paid_tokens)
                == Some(billed);
        if settled {
            break (billed, j);
        }
        assert!(Instant::now() < deadline, "not settled: {}", j["payments"]);
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let attempted = load.attempted.load(Ordering::SeqCst);
    let completed = load.completed.load(Ordering::SeqCst);
    let per = load.tokens.load(Ordering::SeqCst);
    println!(
        "crash_payments: {KILLS} kills in {kills_took:.1?}; {attempted} requests sent, {completed} \
         completed at the clients, {billed} tokens billed ({per} per request); anchors {}",
        stats["payments"]["last_anchor_seqno"]
    );
    assert!(per > 0 && completed > 0);
    assert_eq!(billed % per, 0, "billed is a whole number of requests");
    let k = billed / per;
    assert!(
        k >= completed,
        "a completed request was lost: billed {k} < completed {completed}"
    );
    assert!(
        k <= attempted,
        "billed {k} requests, only {attempted} were sent"
    );

    // the chain agrees with the ledger
    let data = local.run(move |c| c.data(&client).unwrap()).await.unwrap();
    assert_eq!(ClientData::from_cell(&data).unwrap().tokens_used, billed);
    let data = local
        .run(move |c| c.data(&worker_contract).unwrap())
        .await
        .unwrap();
    assert_eq!(WorkerData::from_cell(&data).unwrap().tokens, billed);

    // vouchers: one content per count, none above the ledger's count
    for (contract, op, what) in [
        (client, SignedOp::Charge, "charge"),
        (worker_contract, SignedOp::Payout, "payout"),
    ] {
        let v = vouchers(&local, contract, op).await;
        assert!(!v.is_empty(), "no {what} voucher applied");
        for (count, hashes) in &v {
            assert_eq!(
                hashes.len(),
                1,
                "{what} count {count}: two different vouchers"
            );
            assert!(
                *count <= billed,
                "{what} voucher for {count} > ledger {billed}"
            );
        }
        println!(
            "crash_payments: {} {what} vouchers applied, last {:?}",
            v.len(),
            v.keys().last()
        );
    }

    terminate(&child);
    assert_eq!(wait_exit(&mut child, Duration::from_secs(60)), 0);
    let _ = worker.shutdown(Duration::from_secs(2)).await;
    let _ = std::fs::remove_dir_all(&dir);
}

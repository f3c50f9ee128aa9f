//! The `TonChain` interface, run twice on the same scenario: once on `LocalChain` and once
//! through `HttpChain` → the local toncenter-style server → a `LocalChain`, with identical
//! results asserted. Scenario: a Cocoon wallet deploys with its first external (state init),
//! which carries a charge voucher for 100,000 tokens to the funded client contract (balance 5 →
//! 4.9 TON, read with `get_cocoon_client_data`); the same voucher again → exit 1000, visible in
//! the client's transaction list; a replayed external → rejected. Then the HTTP error cases.

mod common;
use common::*;
use ed25519_dalek::SigningKey;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use ton::address::{Addr, Coins};
use ton::cell::Cell;
use ton::contracts::{ContractKind, StateInit, WalletData};
use ton::messages::signed::{build_signed, SignedOp, SignedPayload};
use ton::messages::unsigned::Request;
use ton::messages::wallet::{InternalMessage, WalletExternal};
use tonsim::chain_config::ApiKey;
use tonsim::http_server::LocalServer;
use tonsim::tonchain::{external_boc, ClientState};
use tonsim::{
    AccountState, AccountStatus, ChainError, ChainTx, HttpChain, LocalChain, StackValue, TonChain,
};

fn wallet_key() -> SigningKey {
    SigningKey::from_bytes(&[3; 32])
}
fn wallet_init() -> StateInit {
    WalletData::initial(
        wallet_key().verifying_key().to_bytes(),
        treasury("proxyOwner"),
    )
    .state_init()
    .unwrap()
}
fn wallet_addr() -> Addr {
    wallet_init().address().unwrap()
}

/// flow.js's deploys and top-up (5 TON on the client contract), and 3 TON on the (uninit)
/// wallet address; done on the chain itself, as the trait has no treasury sends.
fn funded() -> LocalChain {
    LocalChain::spawn(|| Ok(funded_chain())).unwrap()
}

fn funded_chain() -> tonsim::Chain {
    let mut c = chain();
    deploy_proxy_and_client(&mut c);
    let top_up = Request::TopUp {
        qid: 7,
        amount: Coins::from_nano(5 * TON),
        excess: treasury("clientOwner"),
    }
    .to_cell()
    .unwrap();
    send(&mut c, "clientOwner", client_addr(), 5_200_000_000, top_up);
    c.send_internal(&tonsim::Internal {
        src: treasury("proxyOwner"),
        dst: wallet_addr(),
        value: 3 * TON,
        bounce: false,
        init: None,
        body: Cell::empty(),
    })
    .unwrap();
    c
}

/// A wallet external (`seqno`) carrying the charge voucher for `tokens` to the client.
fn wallet_charge(seqno: u32, tokens: u64) -> Cell {
    let voucher = build_signed(
        &proxy_key(),
        &SignedPayload {
            op: SignedOp::Charge,
            qid: 42,
            tokens: Some(tokens),
            expected_address: client_addr(),
        },
        &treasury("relay"),
    )
    .unwrap();
    let msg = InternalMessage {
        bounce: true,
        dest: client_addr(),
        value: Coins::from_nano(700_000_000),
        init: None,
        body: Some(voucher),
    }
    .to_cell()
    .unwrap();
    WalletExternal {
        subwallet: 0,
        valid_until: NOW + 3600,
        seqno,
        messages: vec![(0, msg)],
    }
    .sign(&wallet_key())
    .unwrap()
}

/// What one run of the scenario observed.
#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    now: u32,
    before: Vec<StackValue>,
    after: Vec<StackValue>,
    client: AccountState,
    wallet: AccountState,
    client_txs: Vec<ChainTx>,
    wallet_txs: Vec<ChainTx>,
    missing: AccountState,
}

async fn scenario(c: &dyn TonChain) -> Outcome {
    let now = c.now().await.unwrap();
    assert_eq!(now, NOW);
    let start = c.account(&client_addr()).await.unwrap();
    let since = start.last_tx.unwrap().lt;
    let before = c
        .run_get_method(&client_addr(), "get_cocoon_client_data")
        .await
        .unwrap();
    assert_eq!(before[4].int(), Some(5 * TON as i128), "balance");
    assert_eq!(before[6].int(), Some(0), "tokens_used");
    assert_eq!(
        c.account(&wallet_addr()).await.unwrap().status,
        AccountStatus::Uninit
    );

    // deploy the wallet with its first external; it sends the charge voucher
    let first = external_boc(
        wallet_addr(),
        Some(&wallet_init()),
        &wallet_charge(0, 100_000),
    )
    .unwrap();
    c.send_message(&first).await.unwrap();
    let after = c
        .run_get_method(&client_addr(), ClientState::GET_METHOD)
        .await
        .unwrap();
    let state = ClientState::from_stack(&after).unwrap();
    assert_eq!(state.owner, treasury("clientOwner"));
    assert_eq!(state.proxy, proxy_addr());
    assert_eq!(state.state, 0);
    assert_eq!(state.balance, 4_900_000_000, "balance");
    assert_eq!(state.stake, TON, "stake");
    assert_eq!(state.tokens_used, 100_000, "tokens_used");
    assert_eq!(state.unlock_ts, 0, "unlock_ts");
    assert_eq!(
        state.proxy_public_key,
        SigningKey::from_bytes(&[1; 32]).verifying_key().to_bytes()
    );

    // the same voucher again (next wallet seqno) → the client contract refuses with 1000
    let second = external_boc(wallet_addr(), None, &wallet_charge(1, 100_000)).unwrap();
    c.send_message(&second).await.unwrap();
    // the first external replayed → the wallet does not accept it
    match c.send_message(&first).await {
        Err(ChainError::Rejected { .. }) => {}
        other => panic!("expected a rejected external, got {other:?}"),
    }
    // not a message at all
    assert!(c.send_message(b"not a boc").await.is_err());

    let client_txs = c.transactions(&client_addr(), since, 10).await.unwrap();
    assert_eq!(client_txs.len(), 2, "charge and replay");
    assert_eq!(client_txs[0].exit_code, Some(1000));
    assert!(!client_txs[0].success && client_txs[0].aborted);
    assert_eq!(client_txs[0].out_msgs.len(), 1, "the bounce");
    assert_eq!(client_txs[1].exit_code, Some(0));
    assert!(client_txs[1].success);
    assert_eq!(client_txs[0].prev, Some(client_txs[1].id));
    assert!(client_txs[1].in_msg.is_some());
    // a limit keeps the newest
    let newest = c.transactions(&client_addr(), 0, 1).await.unwrap();
    assert_eq!(newest, client_txs[..1]);
    let all = c.transactions(&client_addr(), 0, 100).await.unwrap();
    assert_eq!(all.len(), 4, "deploy, top-up, charge, replay");

    let client = c.account(&client_addr()).await.unwrap();
    assert_eq!(client.status, AccountStatus::Active);
    assert_eq!(
        client.code.as_ref().unwrap().hash(),
        ContractKind::Client.pinned_hash()
    );
    assert_eq!(client.last_tx, Some(client_txs[0].id));
    let wallet = c.account(&wallet_addr()).await.unwrap();
    assert_eq!(wallet.status, AccountStatus::Active);
    let wd = WalletData::from_cell(wallet.data.as_ref().unwrap()).unwrap();
    assert_eq!(wd.seqno, 2);
    let wallet_txs = c.transactions(&wallet_addr(), 0, 10).await.unwrap();
    // newest first: the replayed voucher's bounce coming back, the two externals, the funding
    assert_eq!(wallet_txs.len(), 4, "{wallet_txs:?}");
    assert!(wallet_txs[..3].iter().all(|t| t.success));
    assert!(wallet_txs[1..3].iter().all(|t| t.exit_code == Some(0)));
    assert_eq!(
        wallet_txs[3].exit_code, None,
        "funding an uninit address: no code to run"
    );

    let missing = c
        .account(&Addr {
            workchain: 0,
            hash: [0xee; 32],
        })
        .await
        .unwrap();
    assert_eq!(missing.status, AccountStatus::NonExist);
    match c.run_get_method(&wallet_addr(), "no_such_method").await {
        Err(ChainError::GetMethod { exit_code: 11, .. }) => {}
        other => panic!("expected exit code 11, got {other:?}"),
    }
    Outcome {
        now,
        before,
        after,
        client,
        wallet,
        client_txs,
        wallet_txs,
        missing,
    }
}

#[tokio::test]
async fn local_and_http_agree_on_the_charge_scenario() {
    let local = scenario(&funded()).await;

    let server = LocalServer::start(funded()).await.unwrap();
    let http = HttpChain::new(&server.url(), Some(ApiKey("test-key".into()))).unwrap();
    let over_http = scenario(&http).await;
    assert_eq!(local, over_http);

    // paging through getTransactions one transaction at a time (lt + hash of the previous
    // transaction as the next start) yields the same history
    let one = http.clone().with_page_size(1);
    for addr in [client_addr(), wallet_addr(), proxy_addr()] {
        let all = http.transactions(&addr, 0, 100).await.unwrap();
        assert!(all.len() >= 3, "{addr}");
        assert_eq!(
            one.transactions(&addr, 0, 100).await.unwrap(),
            all,
            "{addr}"
        );
        assert_eq!(
            one.transactions(&addr, all[2].id.lt, 100).await.unwrap(),
            all[..2]
        );
    }
}

/// The same client over TLS: a self-signed certificate for `localhost`, trusted explicitly.
#[tokio::test]
async fn https_end_to_end_with_a_test_root() {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let cert = ck.cert.der().clone();
    let key = rustls::pki_types::PrivateKeyDer::try_from(ck.signing_key.serialize_der()).unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut server_cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.clone()], key)
        .unwrap();
    server_cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let server = LocalServer::start_tls(funded(), std::sync::Arc::new(server_cfg))
        .await
        .unwrap();
    let url = format!("https://localhost:{}/api/v2", server.addr().port());

    // Mozilla's roots do not include the test certificate: the handshake fails, typed
    match HttpChain::new(&url, None).unwrap().now().await {
        Err(ChainError::Unreachable { reason, .. }) => assert!(reason.contains("tls"), "{reason}"),
        other => panic!("expected a tls failure, got {other:?}"),
    }

    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert).unwrap();
    let c = HttpChain::new(&url, None)
        .unwrap()
        .with_roots(roots)
        .unwrap();
    assert_eq!(c.now().await.unwrap(), NOW);
    let s = c
        .run_get_method(&client_addr(), "get_cocoon_client_data")
        .await
        .unwrap();
    assert_eq!(s[4].int(), Some(5 * TON as i128));
    let boc = external_boc(
        wallet_addr(),
        Some(&wallet_init()),
        &wallet_charge(0, 100_000),
    )
    .unwrap();
    c.send_message(&boc).await.unwrap();
    let txs = c.transactions(&client_addr(), 0, 1).await.unwrap();
    assert_eq!(txs[0].exit_code, Some(0));
}

#[tokio::test]
async fn server_down_is_unreachable() {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/api/v2", l.local_addr().unwrap());
    drop(l);
    let c = HttpChain::new(&url, None).unwrap();
    match c.account(&client_addr()).await {
        Err(ChainError::Unreachable { endpoint, .. }) => {
            assert_eq!(endpoint, "getAddressInformation")
        }
        other => panic!("expected unreachable, got {other:?}"),
    }
    match c.send_message(b"x").await {
        Err(ChainError::Unreachable { endpoint, .. }) => assert_eq!(endpoint, "sendBoc"),
        other => panic!("expected unreachable, got {other:?}"),
    }
}

type Seen = std::sync::Arc<std::sync::Mutex<Vec<String>>>;

/// A server that answers every request with `status` and `body`.
async fn canned(status: &'static str, body: &'static str) -> String {
    canned_seen(status, body).await.0
}

/// [`canned`], also recording each request's head.
async fn canned_seen(status: &'static str, body: &'static str) -> (String, Seen) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/api/v2", l.local_addr().unwrap());
    let seen = Seen::default();
    let record = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let record = record.clone();
            tokio::spawn(async move {
                let mut req = Vec::new();
                let mut buf = [0u8; 4096];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&req).to_string();
                record.lock().unwrap().push(head);
                let resp = format!(
                    "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
                let _ = s.shutdown().await;
            });
        }
    });
    (url, seen)
}

#[tokio::test]
async fn requests_carry_the_api_key_and_encoded_query() {
    let (url, seen) = canned_seen("200 OK", r#"{"ok": false, "error": "x", "code": 401}"#).await;
    let c = HttpChain::new(&url, Some(ApiKey("k-123".into()))).unwrap();
    assert!(matches!(
        c.account(&client_addr()).await,
        Err(ChainError::Api { code: 401, .. })
    ));
    let head = seen.lock().unwrap()[0].clone();
    let want = format!(
        "GET /api/v2/getAddressInformation?address=0%3A{} HTTP/1.1\r\n",
        hex::encode(client_addr().hash)
    );
    assert!(head.starts_with(&want), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("x-api-key: k-123\r\n"),
        "{head}"
    );
    let c = HttpChain::new(&url, None).unwrap();
    let _ = c.send_message(b"\x01").await;
    let head = seen.lock().unwrap()[1].clone();
    assert!(
        head.starts_with("POST /api/v2/sendBoc HTTP/1.1\r\n"),
        "{head}"
    );
    assert!(!head.to_ascii_lowercase().contains("x-api-key"), "{head}");
}

#[tokio::test]
async fn malformed_and_error_responses_are_typed() {
    let c = HttpChain::new(&canned("200 OK", "not json").await, None).unwrap();
    match c.account(&client_addr()).await {
        Err(e @ ChainError::Malformed { endpoint, .. }) => {
            assert_eq!(endpoint, "getAddressInformation");
            assert!(e.to_string().starts_with("getAddressInformation: "), "{e}");
        }
        other => panic!("expected malformed, got {other:?}"),
    }

    let body = r#"{"ok": false, "error": "Ratelimit exceed", "code": 429}"#;
    let c = HttpChain::new(&canned("429 Too Many Requests", body).await, None).unwrap();
    match c.transactions(&client_addr(), 0, 5).await {
        Err(ChainError::Api {
            endpoint,
            code,
            message,
        }) => {
            assert_eq!((endpoint, code), ("getTransactions", 429));
            assert_eq!(message, "Ratelimit exceed");
        }
        other => panic!("expected an api error, got {other:?}"),
    }

    let c = HttpChain::new(&canned("502 Bad Gateway", "<html>").await, None).unwrap();
    assert!(matches!(
        c.now().await,
        Err(ChainError::Api { code: 502, .. })
    ));

    for body in [
        r#"{"ok": true}"#,
        r#"{"ok": true, "result": {"balance": "1"}}"#,
        r#"{"result": 1}"#,
        r#"{"ok": true, "result": [{"data": "AAAA"}]}"#,
    ] {
        let c = HttpChain::new(&canned("200 OK", body).await, None).unwrap();
        assert!(
            matches!(
                c.account(&client_addr()).await,
                Err(ChainError::Malformed { .. })
            ),
            "{body}"
        );
        assert!(
            matches!(
                c.transactions(&client_addr(), 0, 5).await,
                Err(ChainError::Malformed { .. }) | Err(ChainError::Api { .. })
            ),
            "{body}"
        );
    }
    let stack = r#"{"ok": true, "result": {"exit_code": 0, "stack": [["num", "zz"]]}}"#;
    let c = HttpChain::new(&canned("200 OK", stack).await, None)
        .unwrap()
        .with_timeout(Duration::from_secs(5));
    match c.run_get_method(&client_addr(), "seqno").await {
        Err(ChainError::Malformed { endpoint, .. }) => assert_eq!(endpoint, "runGetMethod"),
        other => panic!("expected malformed, got {other:?}"),
    }
}

#[test]
fn urls_are_checked_up_front() {
    for url in ["ftp://x/api/v2", "::", "http:///api/v2"] {
        assert!(
            matches!(HttpChain::new(url, None), Err(ChainError::Invalid { .. })),
            "{url}"
        );
    }
    // the default URLs parse (https, Mozilla roots); roots only make sense for https
    let main = tonsim::chain_config::MAINNET_URL;
    assert!(HttpChain::new(main, None).is_ok());
    assert!(HttpChain::new(tonsim::chain_config::TESTNET_URL, None).is_ok());
    let plain = HttpChain::new("http://127.0.0.1:1/api/v2", None).unwrap();
    assert!(plain.with_roots(rustls::RootCertStore::empty()).is_err());
}

//! The worker's payouts on a local chain running Cocoon's real contracts: a proxy contract is
//! deployed; vouchers signed with its Kp are checked, kept and submitted from the worker's
//! wallet (deploying the worker contract with the first one); the owner receives exactly
//! Δ × worker_fee; a lower count is refused as a proxy that went backwards — also after a
//! restart, from the state file and from the chain alone; forged, misaddressed and malformed
//! vouchers are refused by name.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ed25519_dalek::SigningKey;
use protocol::payout::PayoutVoucher;
use ton::address::Addr;
use ton::cell::Cell;
use ton::contracts::{ContractKind, ProxyData, WalletData, WorkerData};
use ton::messages::signed::{build_signed, SignedOp, SignedPayload};
use tonsim::{Chain, Internal, LocalChain, TonChain};
use worker::payout::{PayoutError, PayoutSetup, Payouts};

const NOW: u32 = 1_750_000_000;
const TON: u128 = 1_000_000_000;
/// `ParamsV3::reference()`'s worker fee per token.
const WORKER_FEE: u128 = 400;

fn addr(b: u8) -> Addr {
    Addr::basechain([b; 32])
}
fn proxy_owner() -> Addr {
    addr(0x11)
}
fn root() -> Addr {
    addr(0x12)
}
/// Receives the earnings (a treasury: no fees of its own).
fn earner() -> Addr {
    addr(0x14)
}
fn funder() -> Addr {
    addr(0x16)
}
fn kp() -> SigningKey {
    SigningKey::from_bytes(&[1; 32])
}
fn wallet_key() -> SigningKey {
    SigningKey::from_bytes(&[5; 32])
}
fn wallet_address() -> Addr {
    WalletData::initial(wallet_key().verifying_key().to_bytes(), earner())
        .state_init()
        .unwrap()
        .address()
        .unwrap()
}

fn proxy_init(kp: &SigningKey) -> ton::contracts::StateInit {
    let pp = ton::params::ParamsV3::reference()
        .for_proxy(ContractKind::Worker.code(), ContractKind::Client.code());
    ProxyData::initial(proxy_owner(), kp.verifying_key().to_bytes(), root(), pp)
        .state_init()
        .unwrap()
}

fn worker_contract(proxy: Addr) -> Addr {
    WorkerData::initial(
        earner(),
        proxy,
        kp().verifying_key().to_bytes(),
        ton::params::ParamsV3::reference(),
    )
    .state_init()
    .unwrap()
    .address()
    .unwrap()
}

/// A chain with the proxy contract deployed and the worker's wallet funded with 10 TON.
fn chain() -> (LocalChain, Addr) {
    let init = proxy_init(&kp());
    let proxy = init.address().unwrap();
    let wallet = wallet_address();
    let local = LocalChain::spawn(move || {
        let mut c = Chain::new(NOW)?;
        for a in [proxy_owner(), root(), earner(), funder()] {
            c.add_treasury(a, 1_000_000 * TON)?;
        }
        for (dst, value, init) in [(proxy, TON, Some(init)), (wallet, 10 * TON, None)] {
            c.send_internal(&Internal {
                src: funder(),
                dst,
                value,
                bounce: false,
                init,
                body: Cell::empty(),
            })?;
        }
        Ok(c)
    })
    .unwrap();
    (local, proxy)
}

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("cocoon-payout-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn payouts(chain: &Arc<dyn TonChain>, state_file: Option<PathBuf>) -> Arc<Payouts> {
    Payouts::new(PayoutSetup {
        chain: chain.clone(),
        owner: earner(),
        wallet_key: wallet_key(),
        wallet_owner: earner(),
        state_file,
        voucher_value_nano: 700_000_000,
        wallet_timeout: Duration::from_secs(5),
        poll: Duration::from_millis(10),
    })
    .unwrap()
}

fn voucher(key: &SigningKey, proxy: Addr, target: Addr, tokens: u64) -> PayoutVoucher {
    let payload = SignedPayload {
        op: SignedOp::Payout,
        qid: tokens,
        tokens: Some(tokens),
        expected_address: target,
    };
    let cell = build_signed(key, &payload, &proxy).unwrap();
    PayoutVoucher {
        proxy_contract: proxy.to_string(),
        worker_contract: target.to_string(),
        tokens,
        voucher: ton::boc::encode_hex(&cell),
    }
}

async fn log_len(local: &LocalChain) -> usize {
    local.run(|c| c.log().len()).await.unwrap()
}

/// Value that reached `account` in messages after log position `from`.
async fn received(local: &LocalChain, account: Addr, from: usize) -> u128 {
    local
        .run(move |c| c.received(&account, from, None))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vouchers_are_checked_submitted_and_never_go_backwards() {
    let (local, proxy) = chain();
    let chain: Arc<dyn TonChain> = Arc::new(local.clone());
    let d = dir("flow");
    let state = d.join("payout-state.json");
    let p = payouts(&chain, Some(state.clone()));
    let contract = worker_contract(proxy);
    assert_eq!(p.advert().owner, earner().to_string());

    // forged, misaddressed and malformed vouchers
    let forged = voucher(&SigningKey::from_bytes(&[9; 32]), proxy, contract, 100_000);
    match p.receive(&forged).await {
        Err(PayoutError::Voucher(m)) => assert!(m.contains("signature"), "{m}"),
        other => panic!("forged: {other:?}"),
    }
    let other_contract = voucher(&kp(), proxy, addr(0x77), 100_000);
    assert!(matches!(
        p.receive(&other_contract).await,
        Err(PayoutError::WrongContract { .. })
    ));
    let mut lying = voucher(&kp(), proxy, contract, 100_000);
    lying.tokens = 200_000;
    match p.receive(&lying).await {
        Err(PayoutError::Voucher(m)) => assert!(m.contains("announced 200000"), "{m}"),
        other => panic!("count mismatch: {other:?}"),
    }
    let mut garbage = voucher(&kp(), proxy, contract, 100_000);
    garbage.voucher = "b5ee9c72".into();
    assert!(matches!(
        p.receive(&garbage).await,
        Err(PayoutError::Voucher(_))
    ));
    let nowhere = voucher(&kp(), addr(0x66), contract, 100_000);
    match p.receive(&nowhere).await {
        Err(e @ PayoutError::Proxy { .. }) => {
            assert!(e.to_string().contains("no active contract"), "{e}")
        }
        other => panic!("no proxy contract: {other:?}"),
    }
    assert_eq!(p.submit_pending().await, 0, "nothing accepted yet");

    // a real voucher: accepted, then submitted (deploying the worker contract)
    let ack = p
        .receive(&voucher(&kp(), proxy, contract, 100_000))
        .await
        .unwrap();
    assert_eq!(ack.highest_tokens, 100_000);
    let mark = log_len(&local).await;
    assert_eq!(p.submit_pending().await, 1);
    assert_eq!(
        received(&local, earner(), mark).await,
        100_000 * WORKER_FEE,
        "the owner receives Δ × worker_fee"
    );
    let e = p.earnings().await;
    assert_eq!(e.proxies.len(), 1);
    let pe = &e.proxies[0];
    assert_eq!(
        (
            pe.voucher_tokens,
            pe.paid_tokens,
            pe.pending_tokens,
            pe.paid_nano
        ),
        (100_000, 100_000, 0, 100_000 * WORKER_FEE)
    );
    assert_eq!(pe.worker_contract, contract.to_string());
    assert_eq!(pe.last_error, None);

    // the same voucher again: acknowledged, nothing sent
    p.receive(&voucher(&kp(), proxy, contract, 100_000))
        .await
        .unwrap();
    assert_eq!(p.submit_pending().await, 0);

    // 30,000 more: only the difference is paid
    p.receive(&voucher(&kp(), proxy, contract, 130_000))
        .await
        .unwrap();
    let mark = log_len(&local).await;
    assert_eq!(p.submit_pending().await, 1);
    assert_eq!(received(&local, earner(), mark).await, 30_000 * WORKER_FEE);

    // a lower count: the proxy went backwards
    match p.receive(&voucher(&kp(), proxy, contract, 120_000)).await {
        Err(
            e @ PayoutError::Backwards {
                seen: 130_000,
                got: 120_000,
                ..
            },
        ) => {
            assert!(e
                .to_string()
                .starts_with(protocol::payout::PROXY_WENT_BACKWARDS));
            assert_eq!(e.api().status(), 401);
        }
        other => panic!("backwards: {other:?}"),
    }

    // after a restart: the state file remembers 140,000 (accepted, not yet paid) ...
    p.receive(&voucher(&kp(), proxy, contract, 140_000))
        .await
        .unwrap();
    drop(p);
    let text = std::fs::read_to_string(&state).unwrap();
    assert!(text.contains("140000"), "{text}");
    let again = payouts(&chain, Some(state.clone()));
    assert!(matches!(
        again
            .receive(&voucher(&kp(), proxy, contract, 135_000))
            .await,
        Err(PayoutError::Backwards { seen: 140_000, .. })
    ));
    // ... and without a state file the chain's paid count (130,000) is the floor
    let stateless = payouts(&chain, None);
    assert!(matches!(
        stateless
            .receive(&voucher(&kp(), proxy, contract, 125_000))
            .await,
        Err(PayoutError::Backwards { seen: 130_000, .. })
    ));
    stateless
        .receive(&voucher(&kp(), proxy, contract, 140_000))
        .await
        .unwrap();
    assert_eq!(stateless.submit_pending().await, 1);
    assert_eq!(stateless.earnings().await.paid_nano, 140_000 * WORKER_FEE);

    // a corrupt state file is refused at start, by name
    std::fs::write(&state, b"{not json").unwrap();
    let e = Payouts::new(PayoutSetup {
        chain: chain.clone(),
        owner: earner(),
        wallet_key: wallet_key(),
        wallet_owner: earner(),
        state_file: Some(state.clone()),
        voucher_value_nano: 700_000_000,
        wallet_timeout: Duration::from_secs(5),
        poll: Duration::from_millis(10),
    })
    .unwrap_err();
    assert!(e.to_string().contains("payout-state.json"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unfunded_wallet_keeps_the_voucher_and_says_why() {
    let (local, proxy) = chain();
    let chain: Arc<dyn TonChain> = Arc::new(local.clone());
    let p = Payouts::new(PayoutSetup {
        chain: chain.clone(),
        owner: earner(),
        wallet_key: SigningKey::from_bytes(&[6; 32]),
        wallet_owner: earner(),
        state_file: None,
        voucher_value_nano: 700_000_000,
        wallet_timeout: Duration::from_secs(5),
        poll: Duration::from_millis(10),
    })
    .unwrap();
    let contract = worker_contract(proxy);
    p.receive(&voucher(&kp(), proxy, contract, 1_000))
        .await
        .unwrap();
    assert_eq!(p.submit_pending().await, 0);
    let e = p.earnings().await;
    assert_eq!(e.pending_nano, 1_000 * WORKER_FEE);
    let err = e.proxies[0].last_error.clone().expect("an error is shown");
    assert!(err.contains("balance 0"), "{err}");
}

/// A chain whose `send_message` takes `delay` (a live network's wallet wait, compressed).
#[derive(Debug)]
struct SlowChain {
    inner: Arc<dyn TonChain>,
    delay: Duration,
}

#[async_trait::async_trait]
impl TonChain for SlowChain {
    async fn send_message(&self, boc: &[u8]) -> Result<(), tonsim::ChainError> {
        tokio::time::sleep(self.delay).await;
        self.inner.send_message(boc).await
    }
    async fn account(
        &self,
        addr: &Addr,
    ) -> Result<tonsim::tonchain::AccountState, tonsim::ChainError> {
        self.inner.account(addr).await
    }
    async fn run_get_method(
        &self,
        addr: &Addr,
        method: &str,
    ) -> Result<Vec<tonsim::tonchain::StackValue>, tonsim::ChainError> {
        self.inner.run_get_method(addr, method).await
    }
    async fn transactions(
        &self,
        addr: &Addr,
        since_lt: u64,
        limit: usize,
    ) -> Result<Vec<tonsim::ChainTx>, tonsim::ChainError> {
        self.inner.transactions(addr, since_lt, limit).await
    }
    async fn now(&self) -> Result<u32, tonsim::ChainError> {
        self.inner.now().await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_submission_blocks_neither_vouchers_nor_earnings() {
    let (local, proxy) = chain();
    let chain: Arc<dyn TonChain> = Arc::new(SlowChain {
        inner: Arc::new(local.clone()),
        delay: Duration::from_secs(2),
    });
    let p = payouts(&chain, None);
    let contract = worker_contract(proxy);
    p.receive(&voucher(&kp(), proxy, contract, 1_000))
        .await
        .unwrap();
    let submitting = tokio::spawn({
        let p = p.clone();
        async move { p.submit_pending().await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    // while the wallet waits for the chain: a new voucher is accepted and earnings answer
    let t = std::time::Instant::now();
    p.receive(&voucher(&kp(), proxy, contract, 2_000))
        .await
        .unwrap();
    let e = p.earnings().await;
    assert!(
        t.elapsed() < Duration::from_millis(500),
        "blocked for {:?} behind the submission",
        t.elapsed()
    );
    assert_eq!(e.proxies[0].voucher_tokens, 2_000);
    assert_eq!(submitting.await.unwrap(), 1);
    // the next pass sends the newer voucher; the first is not sent again
    assert_eq!(p.submit_pending().await, 1);
    assert_eq!(p.earnings().await.proxies[0].paid_tokens, 2_000);
    assert_eq!(p.submit_pending().await, 0);
}

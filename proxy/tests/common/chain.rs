//! A local chain running Cocoon's real contracts, with a proxy's payments engine, its
//! durable ledger and a bound client contract (shared by the payments tests).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ed25519_dalek::SigningKey;
use protocol::Usage;
use proxy::ledger::durable::{DurableLedger, DurableOptions, LedgerKey};
use proxy::ledger::Ledger;
use proxy::payments::{Payments, PaymentsConfig, PaymentsSetup};
use ton::address::{Addr, Coins};
use ton::cell::Cell;
use ton::contracts::{ClientData, ProxyData, WalletData};
use ton::messages::unsigned::Request;
use tonsim::tonchain::ClientState;
use tonsim::{Chain, Internal, LocalChain, TonChain};

pub const NOW: u32 = 1_750_000_000;
pub const TON: u128 = 1_000_000_000;
/// `ParamsV3::reference()`: price 1000 nano per token, worker fee 400.
pub const PRICE: u64 = 1000;
pub const WORKER_FEE: u128 = 400;

pub fn addr(b: u8) -> Addr {
    Addr::basechain([b; 32])
}
pub fn owner() -> Addr {
    addr(0x11)
}
pub fn root() -> Addr {
    addr(0x12)
}
pub fn client_owner() -> Addr {
    addr(0x13)
}
pub fn worker_owner() -> Addr {
    addr(0x14)
}
pub fn forger() -> Addr {
    addr(0x15)
}
pub fn funder() -> Addr {
    addr(0x16)
}
pub const KP_SEED: [u8; 32] = [1; 32];
pub fn kp() -> SigningKey {
    SigningKey::from_bytes(&KP_SEED)
}
pub fn wallet_key() -> SigningKey {
    SigningKey::from_bytes(&[3; 32])
}
pub fn params() -> ton::params::ParamsV3 {
    ton::params::ParamsV3::reference()
}

pub fn wallet_address(key: &SigningKey, owner: Addr) -> Addr {
    WalletData::initial(key.verifying_key().to_bytes(), owner)
        .state_init()
        .unwrap()
        .address()
        .unwrap()
}

pub fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("cocoon-payments-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

pub fn open_ledger(path: &Path) -> Arc<DurableLedger> {
    DurableLedger::open(
        DurableOptions {
            path: path.to_path_buf(),
            price_per_token: PRICE,
            default_balance_nano: None,
        },
        LedgerKey::derive(&KP_SEED),
    )
    .unwrap()
    .0
}

pub fn config() -> PaymentsConfig {
    PaymentsConfig {
        anchor_interval_ms: 50,
        poll_interval_ms: 20,
        charge_threshold_nano: 100_000_000,
        wallet_timeout_ms: 2_000,
        // small pages: a poll that comes back full asks again for twice as many
        history_page: 2,
        ..PaymentsConfig::new("http://127.0.0.1:1/api/v2", &params(), &owner(), &root())
    }
}

pub fn engine(
    chain: &Arc<dyn TonChain>,
    ledger: &Arc<DurableLedger>,
    c: PaymentsConfig,
) -> Arc<Payments> {
    Payments::new(PaymentsSetup {
        chain: chain.clone(),
        ledger: ledger.clone(),
        proxy_key: kp(),
        wallet_key: wallet_key(),
        params: params(),
        settings: c.validate().unwrap(),
    })
    .unwrap()
}

pub fn client_contract() -> (ton::contracts::StateInit, Addr) {
    // The proxy contract address, as the engine derives it.
    let pp = params().for_proxy(
        ton::contracts::ContractKind::Worker.code(),
        ton::contracts::ContractKind::Client.code(),
    );
    let proxy = ProxyData::initial(owner(), kp().verifying_key().to_bytes(), root(), pp)
        .state_init()
        .unwrap()
        .address()
        .unwrap();
    let init = ClientData::initial(
        client_owner(),
        proxy,
        kp().verifying_key().to_bytes(),
        params().min_client_stake,
        params(),
    )
    .state_init()
    .unwrap();
    let a = init.address().unwrap();
    (init, a)
}

/// A chain with treasuries, the proxy wallet's address funded with 50 TON.
pub fn local_chain(wallet: Addr, worker_wallet: Addr) -> LocalChain {
    LocalChain::spawn(move || {
        let mut c = Chain::new(NOW)?;
        for a in [
            owner(),
            root(),
            client_owner(),
            worker_owner(),
            forger(),
            funder(),
        ] {
            c.add_treasury(a, 1_000_000 * TON)?;
        }
        for (to, value) in [(wallet, 50 * TON), (worker_wallet, 10 * TON)] {
            c.send_internal(&Internal {
                src: funder(),
                dst: to,
                value,
                bounce: false,
                init: None,
                body: Cell::empty(),
            })?;
        }
        Ok(c)
    })
    .unwrap()
}

pub async fn send(
    local: &LocalChain,
    src: Addr,
    dst: Addr,
    value: u128,
    init: Option<ton::contracts::StateInit>,
    body: Cell,
) {
    local
        .run(move |c| {
            c.send_internal(&Internal {
                src,
                dst,
                value,
                bounce: init.is_none(),
                init,
                body,
            })
            .unwrap()
        })
        .await
        .unwrap();
}

/// Deploys the proxy contract (through the engine's wallet) and a client contract topped up
/// with 5 TON; returns the client contract.
pub async fn deploy_proxy_and_client(p: &Payments, local: &LocalChain) -> Addr {
    deploy_proxy_and_client_for(p, local, &ACCOUNT_KEY).await
}

/// [`deploy_proxy_and_client`] with the contract bound to the account key `account_key`.
pub async fn deploy_proxy_and_client_for(
    p: &Payments,
    local: &LocalChain,
    account_key: &[u8; 32],
) -> Addr {
    let sent = p.deploy_proxy_contract().await.unwrap();
    assert!(sent.is_some(), "deployed through the wallet");
    assert!(
        p.deploy_proxy_contract().await.unwrap().is_none(),
        "only once"
    );
    let (init, client) = client_contract();
    assert_eq!(p.client_contract(&client_owner()).unwrap(), client);
    deploy_client(local, init, account_key, 5 * TON).await;
    client
}

/// Deploys the client contract `init` from the client owner, binds it to the cocoon account
/// key `account_key` (the TLS key the client will present) and deposits `deposit`; returns its
/// address.
pub async fn deploy_client(
    local: &LocalChain,
    init: ton::contracts::StateInit,
    account_key: &[u8; 32],
    deposit: u128,
) -> Addr {
    let client = init.address().unwrap();
    send(
        local,
        client_owner(),
        client,
        800_000_000,
        Some(init),
        Cell::empty(),
    )
    .await;
    let set_secret = Request::SetSecret {
        qid: 6,
        secret_hash: ton::contracts::account_binding_hash(account_key),
        excess: client_owner(),
    }
    .to_cell()
    .unwrap();
    send(local, client_owner(), client, 300_000_000, None, set_secret).await;
    top_up(local, client, deposit, 7).await;
    client
}

/// Tops `client` up by `amount` from the client owner.
pub async fn top_up(local: &LocalChain, client: Addr, amount: u128, qid: u64) {
    let body = Request::TopUp {
        qid,
        amount: Coins::from_nano(amount),
        excess: client_owner(),
    }
    .to_cell()
    .unwrap();
    send(
        local,
        client_owner(),
        client,
        amount + 200_000_000,
        None,
        body,
    )
    .await;
}

/// The account key (public, bytes) of the cocoon client key with `seed`.
pub fn account_key_of(seed: u8) -> [u8; 32] {
    let mut key = [0u8; 32];
    hex::decode_to_slice(
        ratls::account::AccountKey::from_seed([seed; 32]).account_id(),
        &mut key,
    )
    .unwrap();
    key
}

/// Value that reached `account` in inbound messages after log position `from`.
pub async fn received(local: &LocalChain, account: Addr, from: usize) -> u128 {
    local
        .run(move |c| c.received(&account, from, None))
        .await
        .unwrap()
}

/// The account key (public) the client contract is bound to.
pub const ACCOUNT_KEY: [u8; 32] = [0xac; 32];

pub async fn client_state(chain: &Arc<dyn TonChain>, client: &Addr) -> ClientState {
    ClientState::from_stack(
        &chain
            .run_get_method(client, ClientState::GET_METHOD)
            .await
            .unwrap(),
    )
    .unwrap()
}

/// Polls `check` every 10 ms for up to 15 s.
pub async fn until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Bills `tokens` to `client` (and the same to `worker`) through reserve + charge.
pub async fn bill(ledger: &DurableLedger, client: &Addr, worker: Option<&Addr>, tokens: u64) {
    let cost = tokens * PRICE;
    let r = ledger.reserve(&client.to_string(), cost).unwrap();
    let usage = Usage {
        prompt_tokens: tokens,
        ..Usage::default()
    };
    let w = worker.map(|w| w.to_string());
    let (charged, ticket) = ledger.charge(&r, cost, &usage, w.as_deref()).unwrap();
    assert_eq!(charged, cost);
    ticket.wait().await.unwrap();
}

/// Fees the chain took from `account`'s transactions after log position `from`.
pub async fn fees_since(local: &LocalChain, account: Addr, from: usize) -> u128 {
    local
        .run(move |c| {
            c.log()[from..]
                .iter()
                .filter(|t| t.account == account)
                .map(|t| t.total_fees)
                .sum()
        })
        .await
        .unwrap()
}

pub async fn log_len(local: &LocalChain) -> usize {
    local.run(|c| c.log().len()).await.unwrap()
}

pub async fn balance(local: &LocalChain, a: Addr) -> u128 {
    local.run(move |c| c.balance(&a).unwrap()).await.unwrap()
}

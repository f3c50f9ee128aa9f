//! The setup of testdata/ton/reference/flow.js (the official emulator's run), rebuilt with the
//! `ton` crate: the same params, proxy key (seed 0x01×32), owners (the sandbox treasury addresses
//! recorded in ton/tests/fixtures/flow_inputs.json) and values.
#![allow(dead_code)]

use ed25519_dalek::SigningKey;
use serde_json::Value;
use ton::address::{Addr, Coins};
use ton::cell::Cell;
use ton::contracts::{ClientData, ContractKind, ProxyData, StateInit, WorkerData};
use ton::params::ParamsV3;
use tonsim::{Chain, Internal, TxRecord};

/// The chain's fixed unix time (no clock in tests).
pub const NOW: u32 = 1_750_000_000;
pub const TON: u128 = 1_000_000_000;

pub fn inputs() -> Value {
    serde_json::from_str(include_str!("../../../ton/tests/fixtures/flow_inputs.json")).unwrap()
}
pub fn vectors() -> Value {
    serde_json::from_str(include_str!("../../../ton/tests/fixtures/vectors.json")).unwrap()
}
pub fn treasury(name: &str) -> Addr {
    Addr::parse_raw(inputs()["treasury"][name].as_str().unwrap()).unwrap()
}
pub fn vector_addr(name: &str) -> Addr {
    Addr::parse_raw(vectors()[name].as_str().unwrap()).unwrap()
}

/// `params(null, null, null)` of flow.js.
pub fn flow_params() -> ParamsV3 {
    ParamsV3::reference()
}

pub fn proxy_key() -> SigningKey {
    SigningKey::from_bytes(&[1; 32])
}
pub fn wrong_key() -> SigningKey {
    SigningKey::from_bytes(&[9; 32])
}
pub fn pubkey() -> [u8; 32] {
    proxy_key().verifying_key().to_bytes()
}

pub fn proxy_init() -> StateInit {
    let pp = flow_params().for_proxy(ContractKind::Worker.code(), ContractKind::Client.code());
    ProxyData::initial(treasury("proxyOwner"), pubkey(), treasury("root"), pp)
        .state_init()
        .unwrap()
}
pub fn proxy_addr() -> Addr {
    proxy_init().address().unwrap()
}
pub fn client_init() -> StateInit {
    ClientData::initial(
        treasury("clientOwner"),
        proxy_addr(),
        pubkey(),
        Coins::from_nano(TON),
        flow_params(),
    )
    .state_init()
    .unwrap()
}
pub fn client_addr() -> Addr {
    client_init().address().unwrap()
}
pub fn worker_init() -> StateInit {
    WorkerData::initial(
        treasury("workerOwner"),
        proxy_addr(),
        pubkey(),
        flow_params(),
    )
    .state_init()
    .unwrap()
}
pub fn worker_addr() -> Addr {
    worker_init().address().unwrap()
}

/// A chain with flow.js's treasuries (1,000,000 TON each, as the sandbox's).
pub fn chain() -> Chain {
    let mut c = Chain::new(NOW).unwrap();
    for name in ["proxyOwner", "clientOwner", "workerOwner", "relay", "root"] {
        c.add_treasury(treasury(name), 1_000_000 * TON).unwrap();
    }
    c
}

/// `from.send({ to, value, init, bounce: false })`.
pub fn deploy(c: &mut Chain, from: &str, init: StateInit, value: u128) -> Vec<TxRecord> {
    let dst = init.address().unwrap();
    c.send_internal(&Internal {
        src: treasury(from),
        dst,
        value,
        bounce: false,
        init: Some(init),
        body: Cell::empty(),
    })
    .unwrap()
}

/// `from.send({ to, value, body })` (bounceable, as @ton/sandbox's treasury default).
pub fn send(c: &mut Chain, from: &str, to: Addr, value: u128, body: Cell) -> Vec<TxRecord> {
    c.send_internal(&Internal {
        src: treasury(from),
        dst: to,
        value,
        bounce: true,
        init: None,
        body,
    })
    .unwrap()
}

/// flow.js's first three steps: deploy proxy (2 TON), deploy client (0.8 TON).
pub fn deploy_proxy_and_client(c: &mut Chain) {
    deploy(c, "proxyOwner", proxy_init(), 2 * TON);
    deploy(c, "clientOwner", client_init(), 800_000_000);
}

/// One line per transaction, for failure messages.
pub fn show(txs: &[TxRecord]) -> String {
    txs.iter()
        .map(|t| {
            format!(
                "{} exit={:?} aborted={} out={}",
                t.account,
                t.exit_code(),
                t.aborted,
                t.out_msgs.len()
            )
        })
        .collect::<Vec<_>>()
        .join(" | ")
}

/// What the official emulator recorded for one contract transaction (flow.js run with
/// `bc.now = 1750000000`, instrumented to print per-transaction values and fees).
pub struct Expect {
    pub account: Addr,
    pub in_value: u128,
    pub exit: Option<i32>,
    pub aborted: bool,
    pub fees: u128,
    pub outs: &'static [(&'static str, u128)],
}

/// Asserts that `t` is exactly the emulator's transaction `e` (destination names are resolved
/// with `name_addr`).
pub fn check(t: &TxRecord, e: &Expect) {
    let ctx = format!("tx on {}", t.account);
    assert_eq!(t.account, e.account, "{ctx}");
    assert_eq!(
        t.in_msg.as_ref().unwrap().value,
        e.in_value,
        "{ctx}: in value"
    );
    assert_eq!(t.exit_code(), e.exit, "{ctx}: exit code");
    assert_eq!(t.aborted, e.aborted, "{ctx}: aborted");
    assert_eq!(t.total_fees, e.fees, "{ctx}: total fees");
    let outs: Vec<(Addr, u128)> = t
        .out_msgs
        .iter()
        .map(|m| (m.dst.unwrap(), m.value))
        .collect();
    let want: Vec<(Addr, u128)> = e.outs.iter().map(|(n, v)| (name_addr(n), *v)).collect();
    assert_eq!(outs, want, "{ctx}: outbound messages");
}

/// Contract or treasury address by flow.js name.
pub fn name_addr(n: &str) -> Addr {
    match n {
        "proxy" => proxy_addr(),
        "client" => client_addr(),
        "worker" => worker_addr(),
        other => treasury(other),
    }
}

/// flow.js's top-up: 5 TON to the client contract (5.2 TON sent by the client owner).
pub fn top_up(c: &mut Chain) -> Vec<TxRecord> {
    let body = ton::messages::unsigned::Request::TopUp {
        qid: 7,
        amount: Coins::from_nano(5 * TON),
        excess: treasury("clientOwner"),
    }
    .to_cell()
    .unwrap();
    send(c, "clientOwner", client_addr(), 5_200_000_000, body)
}

/// flow.js's state before its first voucher: proxy (2 TON), client (0.8 TON) topped up with
/// 5 TON, worker (0.3 TON) deployed.
pub fn funded_with_worker() -> Chain {
    let mut c = chain();
    deploy_proxy_and_client(&mut c);
    let txs = top_up(&mut c);
    assert!(txs.iter().all(|t| t.success()), "{}", show(&txs));
    deploy(&mut c, "workerOwner", worker_init(), 300_000_000);
    c
}

/// A signed envelope built field by field (`op qid send_excesses_to sig ^payload`), for
/// messages `ton` refuses to build (op mismatch, tampered payload).
pub fn raw_envelope(op: u32, qid: u64, excess: &Addr, sig: &[u8; 64], payload: Cell) -> Cell {
    let mut b = ton::cell::CellBuilder::new();
    b.store_uint(op.into(), 32).unwrap();
    b.store_uint(qid.into(), 64).unwrap();
    b.store_addr(excess).unwrap();
    b.store_bytes(sig).unwrap();
    b.store_ref(payload).unwrap();
    b.build().unwrap()
}

/// Ed25519 signature of the proxy key over `payload`'s representation hash.
pub fn proxy_sig(payload: &Cell) -> [u8; 64] {
    use ed25519_dalek::Signer;
    proxy_key().sign(&payload.hash()).to_bytes()
}

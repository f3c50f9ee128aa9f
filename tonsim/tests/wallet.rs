//! Must-show 4b: the Cocoon wallet accepts a signed external carrying its state init (deploy on
//! first use) and refuses a replay, an expired message and a wrong key (not accepted: the
//! executor skips the message, as a validator drops it). Values and fees are the official
//! emulator's (testdata/ton/reference/wallet.js, instrumented to print fees).

mod common;
use common::*;
use ed25519_dalek::SigningKey;
use ton::address::{Addr, Coins};
use ton::cell::Cell;
use ton::contracts::{StateInit, WalletData};
use ton::messages::wallet::{InternalMessage, WalletExternal};
use tonsim::log::SkipReason;
use tonsim::{Chain, Compute, Internal, SimError, Status};

const WALLET_NOW: u32 = 1_700_000_000;

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

fn external(seqno: u32, valid_until: u32, key: &SigningKey) -> Cell {
    let inner = InternalMessage {
        bounce: false,
        dest: treasury("relay"),
        value: Coins::from_nano(500_000_000),
        init: None,
        body: None,
    }
    .to_cell()
    .unwrap();
    WalletExternal {
        subwallet: 0,
        valid_until,
        seqno,
        messages: vec![(0, inner)],
    }
    .sign(key)
    .unwrap()
}

fn refused(c: &mut Chain, addr: Addr, body: &Cell) {
    let before = c.account(&addr).unwrap().unwrap();
    let log_len = c.log().len();
    match c.send_external(addr, None, body) {
        Err(SimError::Skipped { .. }) => {}
        other => panic!("expected the wallet to refuse, got {other:?}"),
    }
    assert_eq!(c.log().len(), log_len, "no transaction is recorded");
    let after = c.account(&addr).unwrap().unwrap();
    assert_eq!(after.balance, before.balance);
    assert_eq!(after.data.unwrap().hash(), before.data.unwrap().hash());
}

#[test]
fn wallet_external_with_init_then_refusals() {
    let mut c = Chain::new(WALLET_NOW).unwrap();
    c.add_treasury(treasury("proxyOwner"), 1_000_000 * TON)
        .unwrap();
    c.add_treasury(treasury("relay"), 1_000_000 * TON).unwrap();
    let init = wallet_init();
    let addr = init.address().unwrap();

    // fund the (uninit) address: no code yet, so the compute phase is skipped
    let txs = c
        .send_internal(&Internal {
            src: treasury("proxyOwner"),
            dst: addr,
            value: 3 * TON,
            bounce: false,
            init: None,
            body: Cell::empty(),
        })
        .unwrap();
    assert_eq!(txs[0].compute, Compute::Skipped(SkipReason::NoState));
    assert_eq!(c.account(&addr).unwrap().unwrap().status, Status::Uninit);

    // seqno 0 with the state init: deployed, 0.5 TON sent (mode 0: fees from the value)
    let m0 = external(0, WALLET_NOW + 3600, &wallet_key());
    let txs = c.send_external(addr, Some(&init), &m0).unwrap();
    assert_eq!(txs[0].account, addr);
    assert_eq!(txs[0].exit_code(), Some(0));
    assert!(txs[0].success());
    assert_eq!(txs[0].total_fees, 4_780_131);
    assert_eq!(txs[0].out_msgs.len(), 1);
    assert_eq!(txs[0].out_msgs[0].dst, Some(treasury("relay")));
    assert_eq!(txs[0].out_msgs[0].value, 499_600_000);
    let acc = c.account(&addr).unwrap().unwrap();
    assert_eq!(acc.status, Status::Active);
    assert_eq!(WalletData::from_cell(&acc.data.unwrap()).unwrap().seqno, 1);

    // replay, expired, wrong key: refused, nothing changes
    refused(&mut c, addr, &m0);
    refused(&mut c, addr, &external(1, WALLET_NOW - 1, &wallet_key()));
    refused(
        &mut c,
        addr,
        &external(1, WALLET_NOW + 60, &SigningKey::from_bytes(&[4; 32])),
    );

    // the next seqno is accepted
    let txs = c
        .send_external(addr, None, &external(1, WALLET_NOW + 60, &wallet_key()))
        .unwrap();
    assert_eq!(txs[0].exit_code(), Some(0));
    assert_eq!(txs[0].total_fees, 2_117_731);
    assert_eq!(txs[0].out_msgs[0].value, 499_600_000);
}

//! The remaining must-show exit codes and the closing flows, executed with the real compiled
//! contracts: op mismatch → 1005, tampered payload → 1007, payout with ≤ 0.1 TON → 1003,
//! last_payout closes the worker (later payout → 1006), grant_refund closes the client and
//! refunds its owner, request_refund + client_delay_before_close + request_refund → forced
//! refund from the proxy stake, a wallet below 2 TON refuses to send (1035). Every value and
//! fee is the official emulator's (tonsim/fixtures/reference/exits.js, @ton/sandbox 0.41.0).

mod common;
use common::*;
use ton::address::Coins;
use ton::cell::Cell;
use ton::contracts::{ClientData, ProxyData, StateInit, WalletData, WorkerData};
use ton::messages::notify::{ClientNotification, ClientPayload};
use ton::messages::signed::{build_signed, SignedOp, SignedPayload};
use ton::messages::unsigned::Request;
use ton::messages::wallet::{InternalMessage, WalletExternal};
use tonsim::{Chain, Internal, SimError, Status, TxRecord};

fn client_data(c: &Chain) -> ClientData {
    ClientData::from_cell(&c.data(&client_addr()).unwrap()).unwrap()
}
fn proxy_data(c: &Chain) -> ProxyData {
    ProxyData::from_cell(&c.data(&proxy_addr()).unwrap()).unwrap()
}
fn worker_data(c: &Chain) -> WorkerData {
    WorkerData::from_cell(&c.data(&worker_addr()).unwrap()).unwrap()
}

fn voucher(op: SignedOp, qid: u64, tokens: u64, to: ton::address::Addr, excess: &str) -> Cell {
    let p = SignedPayload {
        op,
        qid,
        tokens: Some(tokens),
        expected_address: to,
    };
    build_signed(&proxy_key(), &p, &treasury(excess)).unwrap()
}

fn payload(op: SignedOp, qid: u64, tokens: u64, to: ton::address::Addr) -> Cell {
    SignedPayload {
        op,
        qid,
        tokens: Some(tokens),
        expected_address: to,
    }
    .to_cell()
    .unwrap()
}

/// A refused message is bounced: the transaction and its single outbound message.
fn bounced(t: &TxRecord) {
    assert!(t.bounced && t.out_msgs.len() == 1 && t.out_msgs[0].bounced);
}

#[test]
fn charge_with_op_mismatch_is_1005() {
    let mut c = funded_with_worker();
    // envelope says charge, the (correctly signed) payload says grant_refund
    let p = payload(SignedOp::GrantRefund, 42, 100_000, client_addr());
    let body = raw_envelope(
        SignedOp::Charge.op(),
        42,
        &treasury("relay"),
        &proxy_sig(&p),
        p,
    );
    let txs = send(&mut c, "relay", client_addr(), 700_000_000, body);
    check(
        &txs[0],
        &Expect {
            account: client_addr(),
            in_value: 700_000_000,
            exit: Some(1005),
            aborted: true,
            fees: 2_031_331,
            outs: &[("relay", 697_702_000)],
        },
    );
    bounced(&txs[0]);
    let cd = client_data(&c);
    assert_eq!(cd.balance, Coins::from_nano(5 * TON));
    assert_eq!(cd.tokens_used, 0);
}

#[test]
fn charge_with_tampered_payload_is_1007() {
    let mut c = funded_with_worker();
    // signed for 100,000 tokens, sent with 1 token and the same signature
    let sig = proxy_sig(&payload(SignedOp::Charge, 42, 100_000, client_addr()));
    let body = raw_envelope(
        SignedOp::Charge.op(),
        42,
        &treasury("relay"),
        &sig,
        payload(SignedOp::Charge, 42, 1, client_addr()),
    );
    let txs = send(&mut c, "relay", client_addr(), 700_000_000, body);
    check(
        &txs[0],
        &Expect {
            account: client_addr(),
            in_value: 700_000_000,
            exit: Some(1007),
            aborted: true,
            fees: 1_972_131,
            outs: &[("relay", 697_761_200)],
        },
    );
    bounced(&txs[0]);
    let cd = client_data(&c);
    assert_eq!(cd.balance, Coins::from_nano(5 * TON));
    assert_eq!(cd.tokens_used, 0);
}

#[test]
fn payout_with_0_1_ton_is_1003() {
    let mut c = funded_with_worker();
    let body = voucher(SignedOp::Payout, 5, 50_000, worker_addr(), "workerOwner");
    let txs = send(&mut c, "relay", worker_addr(), 100_000_000, body);
    check(
        &txs[0],
        &Expect {
            account: worker_addr(),
            in_value: 100_000_000,
            exit: Some(1003),
            aborted: true,
            fees: 1_680_131,
            outs: &[("relay", 98_053_200)],
        },
    );
    bounced(&txs[0]);
    assert_eq!(worker_data(&c).tokens, 0);
    assert_eq!(worker_data(&c).state, 0);
}

#[test]
fn last_payout_closes_the_worker_then_payout_is_1006() {
    let mut c = funded_with_worker();
    let owner_before = c.balance(&treasury("workerOwner")).unwrap();
    let body = voucher(
        SignedOp::LastPayout,
        6,
        50_000,
        worker_addr(),
        "workerOwner",
    );
    let txs = send(&mut c, "relay", worker_addr(), 700_000_000, body);
    // the worker contract sends everything it holds (0.3 deploy + 0.7 now, minus fees)
    check(
        &txs[0],
        &Expect {
            account: worker_addr(),
            in_value: 700_000_000,
            exit: Some(0),
            aborted: false,
            fees: 4_050_795,
            outs: &[("proxy", 985_156_000)],
        },
    );
    check(
        &txs[1],
        &Expect {
            account: proxy_addr(),
            in_value: 985_156_000,
            exit: Some(0),
            aborted: false,
            fees: 5_526_262,
            outs: &[("workerOwner", 20_000_000), ("workerOwner", 979_096_400)],
        },
    );
    let owner_fees: u128 = txs[2..].iter().map(|t| t.total_fees).sum();
    assert_eq!(
        c.balance(&treasury("workerOwner")).unwrap() - owner_before,
        20_000_000 + 979_096_400 - owner_fees
    );
    let wd = worker_data(&c);
    assert_eq!(wd.state, 2, "closed");
    assert_eq!(wd.tokens, 50_000);
    assert_eq!(proxy_data(&c).balance, Coins::from_nano(30_000_000));

    // a later payout with a higher counter → 1006 (closed), bounced
    let body = voucher(SignedOp::Payout, 7, 60_000, worker_addr(), "workerOwner");
    let txs = send(&mut c, "relay", worker_addr(), 700_000_000, body);
    check(
        &txs[0],
        &Expect {
            account: worker_addr(),
            in_value: 700_000_000,
            exit: Some(1006),
            aborted: true,
            fees: 794_931,
            outs: &[("relay", 698_938_400)],
        },
    );
    assert_eq!(worker_data(&c).tokens, 50_000);
}

#[test]
fn grant_refund_closes_the_client_and_refunds_the_owner() {
    let mut c = funded_with_worker();
    let txs = send(
        &mut c,
        "relay",
        client_addr(),
        700_000_000,
        voucher(SignedOp::Charge, 42, 100_000, client_addr(), "relay"),
    );
    assert_eq!(txs[0].exit_code(), Some(0), "{}", show(&txs));
    assert_eq!(client_data(&c).balance, Coins::from_nano(4_900_000_000));

    let owner_before = c.balance(&treasury("clientOwner")).unwrap();
    let body = voucher(SignedOp::GrantRefund, 8, 100_000, client_addr(), "relay");
    let txs = send(&mut c, "relay", client_addr(), 700_000_000, body);
    check(
        &txs[0],
        &Expect {
            account: client_addr(),
            in_value: 700_000_000,
            exit: Some(0),
            aborted: false,
            fees: 5_905_061,
            outs: &[("proxy", 1_483_224_400)],
        },
    );
    let n = ClientNotification::parse(&txs[0].out_msgs[0].body).unwrap();
    assert_eq!(
        n.payload,
        Some(ClientPayload::RefundGranted {
            coins: Coins::from_nano(4_900_000_000),
            excess: treasury("relay"),
        })
    );
    // the proxy contract pays the owner the client's whole remaining balance (4.9 TON: the
    // stake is not withheld) and returns the excess to the relay
    check(
        &txs[1],
        &Expect {
            account: proxy_addr(),
            in_value: 1_483_224_400,
            exit: Some(0),
            aborted: false,
            fees: 6_220_662,
            outs: &[("clientOwner", 4_900_000_000), ("relay", 1_476_470_400)],
        },
    );
    let owner_fees: u128 = txs
        .iter()
        .filter(|t| t.account == treasury("clientOwner"))
        .map(|t| t.total_fees)
        .sum();
    assert_eq!(
        c.balance(&treasury("clientOwner")).unwrap() - owner_before,
        4_900_000_000 - owner_fees
    );
    let cd = client_data(&c);
    assert_eq!(cd.state, 2, "closed");
    assert_eq!(cd.balance, Coins::from_nano(0));
    assert_eq!(cd.stake, Coins::from_nano(TON));
    assert_eq!(cd.tokens_used, 100_000);
    // the client contract keeps 0.01 TON for storage
    assert_eq!(c.balance(&client_addr()).unwrap(), 10_000_000);
    assert_eq!(proxy_data(&c).balance, Coins::from_nano(0));

    // a charge after the close → 1006
    let body = voucher(SignedOp::Charge, 43, 200_000, client_addr(), "relay");
    let txs = send(&mut c, "relay", client_addr(), 700_000_000, body);
    check(
        &txs[0],
        &Expect {
            account: client_addr(),
            in_value: 700_000_000,
            exit: Some(1006),
            aborted: true,
            fees: 2_157_331,
            outs: &[("relay", 697_576_000)],
        },
    );
}

fn request_refund(c: &mut Chain, qid: u64) -> Vec<TxRecord> {
    let body = Request::RequestRefund {
        qid,
        excess: treasury("clientOwner"),
    }
    .to_cell()
    .unwrap();
    send(c, "clientOwner", client_addr(), 500_000_000, body)
}

/// request_refund, then the same message again once `client_delay_before_close` has passed:
/// the second one makes the client contract send the proxy a forced refund (0xf4c354c9), paid
/// from the proxy's stake. Returns the chain and the forced refund's transactions.
fn forced_refund(proxy_stake: u128) -> (Chain, Vec<TxRecord>, u128) {
    let mut c = funded_with_worker();
    if proxy_stake > 0 {
        let body = Request::ProxyIncreaseStake {
            qid: 1,
            grams: Coins::from_nano(proxy_stake),
            excess: treasury("proxyOwner"),
        }
        .to_cell()
        .unwrap();
        let txs = send(
            &mut c,
            "proxyOwner",
            proxy_addr(),
            proxy_stake + 200_000_000,
            body,
        );
        check(
            &txs[0],
            &Expect {
                account: proxy_addr(),
                in_value: 3_200_000_000,
                exit: Some(0),
                aborted: false,
                fees: 2_708_531,
                outs: &[("proxyOwner", 197_024_800)],
            },
        );
        assert_eq!(proxy_data(&c).stake, Coins::from_nano(proxy_stake));
    }

    // first request_refund: pays out the balance above the stake (4 TON) and starts closing
    let txs = request_refund(&mut c, 1);
    check(
        &txs[0],
        &Expect {
            account: client_addr(),
            in_value: 500_000_000,
            exit: Some(0),
            aborted: false,
            fees: 5_333_861,
            outs: &[("proxy", 494_028_000)],
        },
    );
    check(
        &txs[1],
        &Expect {
            account: proxy_addr(),
            in_value: 494_028_000,
            exit: Some(0),
            aborted: false,
            fees: 6_220_662,
            outs: &[("clientOwner", 4_000_000_000), ("clientOwner", 487_274_000)],
        },
    );
    let cd = client_data(&c);
    assert_eq!(cd.state, 1, "closing");
    assert_eq!(cd.balance, Coins::from_nano(TON));
    assert_eq!(cd.unlock_ts, NOW + 86_400);

    // again before the delay → 1011, bounced to the owner
    let txs = request_refund(&mut c, 2);
    check(
        &txs[0],
        &Expect {
            account: client_addr(),
            in_value: 500_000_000,
            exit: Some(1011),
            aborted: true,
            fees: 1_648_131,
            outs: &[("clientOwner", 498_085_200)],
        },
    );

    // after client_delay_before_close (86,400 s): the same message forces the refund
    c.set_now(NOW + 86_400 + 1).unwrap();
    let owner_before = c.balance(&treasury("clientOwner")).unwrap();
    let txs = request_refund(&mut c, 3);
    check(
        &txs[0],
        &Expect {
            account: client_addr(),
            in_value: 500_000_000,
            exit: Some(0),
            aborted: false,
            fees: 4_816_299,
            outs: &[("proxy", 494_598_800)],
        },
    );
    let n = ClientNotification::parse(&txs[0].out_msgs[0].body).unwrap();
    assert_eq!(
        n.payload,
        Some(ClientPayload::RefundForce {
            coins: Coins::from_nano(TON),
            excess: treasury("clientOwner"),
        })
    );
    let cd = client_data(&c);
    assert_eq!(cd.state, 2, "closed");
    assert_eq!(cd.balance, Coins::from_nano(0));
    assert_eq!(c.balance(&client_addr()).unwrap(), 799_716_496);
    (c, txs, owner_before)
}

#[test]
fn request_refund_after_the_delay_forces_a_refund_from_the_proxy_stake() {
    let (c, txs, owner_before) = forced_refund(3 * TON);
    // the proxy pays the client's remaining 1 TON out of its 3 TON stake
    check(
        &txs[1],
        &Expect {
            account: proxy_addr(),
            in_value: 494_598_800,
            exit: Some(0),
            aborted: false,
            fees: 6_368_068,
            outs: &[("clientOwner", TON), ("clientOwner", 487_781_600)],
        },
    );
    let owner_fees: u128 = txs
        .iter()
        .filter(|t| t.account == treasury("clientOwner"))
        .map(|t| t.total_fees)
        .sum();
    assert_eq!(
        c.balance(&treasury("clientOwner")).unwrap() - owner_before,
        TON + 487_781_600 - owner_fees
    );
    assert_eq!(proxy_data(&c).stake, Coins::from_nano(2 * TON));
    assert_eq!(c.balance(&proxy_addr()).unwrap(), 4_999_656_194);
}

#[test]
fn forced_refund_pays_nothing_when_the_proxy_has_no_stake() {
    let (c, txs, _) = forced_refund(0);
    // payout = min(refund, proxy stake) = 0: the owner gets a 0-value message
    check(
        &txs[1],
        &Expect {
            account: proxy_addr(),
            in_value: 494_598_800,
            exit: Some(0),
            aborted: false,
            fees: 6_387_616,
            outs: &[("clientOwner", 0), ("clientOwner", 487_762_000)],
        },
    );
    assert_eq!(proxy_data(&c).stake, Coins::from_nano(0));
    assert_eq!(c.balance(&proxy_addr()).unwrap(), 2_999_656_246);
}

#[test]
fn wallet_below_2_ton_refuses_to_send_with_1035() {
    const WALLET_NOW: u32 = 1_700_000_000;
    let key = ed25519_dalek::SigningKey::from_bytes(&[3; 32]);
    let mut c = Chain::new(WALLET_NOW).unwrap();
    c.add_treasury(treasury("proxyOwner"), 1_000_000 * TON)
        .unwrap();
    c.add_treasury(treasury("relay"), 1_000_000 * TON).unwrap();
    let init: StateInit =
        WalletData::initial(key.verifying_key().to_bytes(), treasury("proxyOwner"))
            .state_init()
            .unwrap();
    let addr = init.address().unwrap();
    c.send_internal(&Internal {
        src: treasury("proxyOwner"),
        dst: addr,
        value: TON,
        bounce: false,
        init: None,
        body: Cell::empty(),
    })
    .unwrap();
    let inner = InternalMessage {
        bounce: false,
        dest: treasury("relay"),
        value: Coins::from_nano(500_000_000),
        init: None,
        body: None,
    }
    .to_cell()
    .unwrap();
    let ext = WalletExternal {
        subwallet: 0,
        valid_until: WALLET_NOW + 3600,
        seqno: 0,
        messages: vec![(0, inner)],
    }
    .sign(&key)
    .unwrap();
    let log_len = c.log().len();
    match c.send_external(addr, Some(&init), &ext) {
        Err(SimError::Skipped { exit_code, .. }) => assert_eq!(exit_code, Some(1035)),
        other => panic!("expected the wallet to refuse with 1035, got {other:?}"),
    }
    // not accepted: no transaction, nothing deployed, nothing spent
    assert_eq!(c.log().len(), log_len);
    let acc = c.account(&addr).unwrap().unwrap();
    assert_eq!(acc.status, Status::Uninit);
    assert_eq!(acc.balance, TON);
}

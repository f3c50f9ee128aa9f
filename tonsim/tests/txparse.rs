//! The `ton` crate's own transaction and message parser (`ton::transaction`, what `HttpChain`
//! uses without the TVM library) against tycho-types on every transaction of real runs: the
//! flow with a worker, failing charges (bounces), a payout, a request_refund, a wallet deploy
//! with its first external, a skipped compute phase; and `external_in` against tycho's layout.

mod common;
use common::*;
use ed25519_dalek::SigningKey;
use ton::address::Coins;
use ton::cell::{Cell, CellBuilder};
use ton::contracts::WalletData;
use ton::messages::signed::{build_signed, SignedOp, SignedPayload};
use ton::messages::unsigned::Request;
use ton::messages::wallet::{InternalMessage, WalletExternal};
use ton::transaction::{ComputePhase, Message, MsgInfo, Transaction};
use tonsim::{Compute, Internal, TxRecord};
use tycho_types::boc::Boc;
use tycho_types::models::{ComputePhase as TCompute, Transaction as TTx, TxInfo};

/// What tycho-types reads from the transaction BOC.
fn tycho_view(boc: &[u8]) -> (u64, [u8; 32], u32, u128, Option<i32>, bool, bool, usize) {
    let cell = Boc::decode(boc).unwrap();
    let tx: TTx = cell.parse().unwrap();
    let info = tx.load_info().unwrap();
    let TxInfo::Ordinary(o) = &info else {
        panic!("tick-tock")
    };
    let (exit, compute_ok) = match &o.compute_phase {
        TCompute::Executed(e) => (Some(e.exit_code), e.success),
        TCompute::Skipped(_) => (None, true),
    };
    let action_ok = o.action_phase.as_ref().is_none_or(|a| a.success);
    (
        tx.lt,
        cell.repr_hash().0,
        tx.now,
        tx.total_fees.tokens.into_inner(),
        exit,
        o.aborted,
        !o.aborted && compute_ok && action_ok,
        tx.out_msgs.values().count(),
    )
}

fn check_all(log: &[TxRecord]) -> usize {
    let mut n = 0;
    for r in log.iter().filter(|r| !r.boc.is_empty()) {
        let cell = ton::boc::decode(&r.boc).unwrap();
        let t = Transaction::parse(&cell).unwrap();
        let (lt, hash, now, fees, exit, aborted, success, outs) = tycho_view(&r.boc);
        assert_eq!(
            (t.lt, cell.hash(), t.now, t.total_fees.nano()),
            (lt, hash, now, fees)
        );
        assert_eq!(
            (t.exit_code(), t.aborted, t.success()),
            (exit, aborted, success)
        );
        assert_eq!(t.out_msgs.len(), outs);
        // and the chain's own record
        assert_eq!(t.account, r.account.hash);
        assert_eq!(
            (t.lt, t.exit_code(), t.success()),
            (r.lt, r.exit_code(), r.success())
        );
        assert_eq!(t.total_fees.nano(), r.total_fees);
        assert_eq!(t.action.map(|a| (a.success, a.result_code)), r.action);
        if let Compute::Skipped(_) = r.compute {
            assert!(matches!(t.compute, ComputePhase::Skipped(_)));
        }
        for (m, o) in t.out_msgs.iter().zip(&r.out_msgs) {
            let m = Message::parse(m).unwrap();
            assert_eq!(m.body, o.body);
            match m.info {
                MsgInfo::Internal {
                    dst,
                    value,
                    bounced,
                    bounce,
                    created_lt,
                    ..
                } => {
                    assert_eq!(dst.std(), o.dst);
                    assert_eq!(
                        (value.nano(), bounced, bounce, created_lt),
                        (o.value, o.bounced, o.bounce, o.created_lt)
                    );
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        if let (Some(m), Some(i)) = (&t.in_msg, &r.in_msg) {
            let m = Message::parse(m).unwrap();
            assert_eq!(m.body, i.body);
            assert_eq!(m.init.is_some(), i.has_init);
        }
        n += 1;
    }
    n
}

#[test]
fn every_transaction_parses_the_same_as_tycho() {
    let mut c = funded_with_worker();
    let charge = |tokens, key: &SigningKey| {
        build_signed(
            key,
            &SignedPayload {
                op: SignedOp::Charge,
                qid: 1,
                tokens: Some(tokens),
                expected_address: client_addr(),
            },
            &treasury("relay"),
        )
        .unwrap()
    };
    send(
        &mut c,
        "relay",
        client_addr(),
        700_000_000,
        charge(100_000, &proxy_key()),
    );
    send(
        &mut c,
        "relay",
        client_addr(),
        700_000_000,
        charge(100_000, &proxy_key()),
    );
    send(
        &mut c,
        "relay",
        client_addr(),
        700_000_000,
        charge(200_000, &wrong_key()),
    );
    let payout = build_signed(
        &proxy_key(),
        &SignedPayload {
            op: SignedOp::Payout,
            qid: 2,
            tokens: Some(50_000),
            expected_address: worker_addr(),
        },
        &treasury("workerOwner"),
    )
    .unwrap();
    send(&mut c, "relay", worker_addr(), 700_000_000, payout);
    let refund = Request::RequestRefund {
        qid: 3,
        excess: treasury("clientOwner"),
    }
    .to_cell()
    .unwrap();
    send(&mut c, "clientOwner", client_addr(), 500_000_000, refund);

    // a wallet: funded while uninit (compute skipped), then deployed by its first external
    let key = SigningKey::from_bytes(&[3; 32]);
    let init = WalletData::initial(key.verifying_key().to_bytes(), treasury("proxyOwner"))
        .state_init()
        .unwrap();
    let wallet = init.address().unwrap();
    c.send_internal(&Internal {
        src: treasury("proxyOwner"),
        dst: wallet,
        value: 3 * TON,
        bounce: false,
        init: None,
        body: Cell::empty(),
    })
    .unwrap();
    let inner = InternalMessage {
        bounce: false,
        dest: treasury("relay"),
        value: Coins::from_nano(TON / 2),
        init: None,
        body: None,
    }
    .to_cell()
    .unwrap();
    let ext = WalletExternal {
        subwallet: 0,
        valid_until: NOW + 60,
        seqno: 0,
        messages: vec![(3, inner)],
    }
    .sign(&key)
    .unwrap();
    let txs = c.send_external(wallet, Some(&init), &ext).unwrap();
    assert!(txs[0].success());
    let n = check_all(c.log());
    assert!(n >= 15, "{n} transactions checked");

    // damaged transaction bytes: errors, never a panic (every byte flipped, every truncation)
    for r in c.log().iter().filter(|r| !r.boc.is_empty()).take(4) {
        for i in 0..r.boc.len() {
            let mut b = r.boc.clone();
            b[i] ^= 0x5a;
            let _ = tonsim::ChainTx::from_boc(&b);
            let _ = tonsim::ChainTx::from_boc(&r.boc[..i]);
        }
    }
}

#[test]
fn external_in_is_laid_out_as_tycho_lays_it_out() {
    let key = SigningKey::from_bytes(&[3; 32]);
    let init = WalletData::initial(key.verifying_key().to_bytes(), treasury("proxyOwner"))
        .state_init()
        .unwrap();
    let dst = init.address().unwrap();
    let mut bodies = vec![Cell::empty()];
    for bits in [8, 500, 700, 746, 747, 748, 1000, 1023] {
        let mut b = CellBuilder::new();
        b.store_bits(&[0xa5; 128], bits).unwrap();
        bodies.push(b.build().unwrap());
    }
    let mut with_refs = CellBuilder::new();
    with_refs.store_uint(7, 32).unwrap();
    for _ in 0..3 {
        with_refs.store_ref(Cell::empty()).unwrap();
    }
    bodies.push(with_refs.build().unwrap());
    for body in &bodies {
        for init in [None, Some(&init)] {
            let ours = ton::transaction::external_in(dst, init, body).unwrap();
            let theirs = tonsim::chain::external_cell(dst, init, body).unwrap();
            assert_eq!(
                ours.hash(),
                theirs.repr_hash().0,
                "body {} bits {} refs, init {}",
                body.bit_len(),
                body.refs().len(),
                init.is_some()
            );
        }
    }
}

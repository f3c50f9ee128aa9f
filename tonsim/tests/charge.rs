//! Must-shows 2 and 3, following testdata/ton/reference/flow.js step by step: the client
//! contract's top-up reaches the proxy contract; a charge voucher for 100,000 tokens at 1000 nano
//! takes the client balance from 5 to 4.9 TON; replay or a lower counter → 1000, wrong key →
//! 1007, a voucher for another contract → 1015.

mod common;
use common::*;
use ton::address::Coins;
use ton::cell::Cell;
use ton::contracts::{ClientData, ProxyData};
use ton::messages::notify::{ClientNotification, ClientPayload};
use ton::messages::signed::{build_signed, SignedOp, SignedPayload};
use ton::messages::unsigned::Request;
use tonsim::log::SkipReason;
use tonsim::{Chain, Compute, TxRecord};

fn client_data(c: &Chain) -> ClientData {
    ClientData::from_cell(&c.data(&client_addr()).unwrap()).unwrap()
}
fn proxy_data(c: &Chain) -> ProxyData {
    ProxyData::from_cell(&c.data(&proxy_addr()).unwrap()).unwrap()
}

fn top_up(c: &mut Chain) -> Vec<TxRecord> {
    let body = Request::TopUp {
        qid: 7,
        amount: Coins::from_nano(5 * TON),
        excess: treasury("clientOwner"),
    }
    .to_cell()
    .unwrap();
    send(c, "clientOwner", client_addr(), 5_200_000_000, body)
}

fn charge(qid: u64, tokens: u64, to: ton::address::Addr, key: &ed25519_dalek::SigningKey) -> Cell {
    let p = SignedPayload {
        op: SignedOp::Charge,
        qid,
        tokens: Some(tokens),
        expected_address: to,
    };
    build_signed(key, &p, &treasury("relay")).unwrap()
}

/// The state after flow.js's deploys and top-up.
fn funded() -> Chain {
    let mut c = chain();
    deploy_proxy_and_client(&mut c);
    let txs = top_up(&mut c);
    assert!(txs.iter().all(|t| t.success()), "{}", show(&txs));
    c
}

#[test]
fn top_up_reaches_the_proxy_contract() {
    let mut c = chain();
    deploy_proxy_and_client(&mut c);
    assert_eq!(client_data(&c).balance, Coins::from_nano(0));
    let proxy_before = proxy_data(&c);
    let txs = top_up(&mut c);
    eprintln!("{}", show(&txs));
    assert!(txs.iter().all(|t| t.success()), "{}", show(&txs));

    // client contract: exit 0, and it sends the proxy contract a notification carrying the top-up
    let t0 = &txs[0];
    assert_eq!(t0.account, client_addr());
    assert_eq!(t0.exit_code(), Some(0));
    let to_proxy = t0
        .out_msgs
        .iter()
        .find(|m| m.dst == Some(proxy_addr()))
        .expect("client contract notifies the proxy contract");
    let n = ClientNotification::parse(&to_proxy.body).unwrap();
    assert_eq!(n.owner, treasury("clientOwner"));
    assert_eq!(n.snapshot.balance, Coins::from_nano(5 * TON));
    assert_eq!(n.snapshot.stake, Coins::from_nano(TON));
    assert_eq!(n.snapshot.tokens_used, 0);
    match n.payload {
        Some(ClientPayload::TopUp { coins, excess }) => {
            assert_eq!(coins, Coins::from_nano(5 * TON));
            assert_eq!(excess, treasury("clientOwner"));
        }
        other => panic!("unexpected payload {other:?}"),
    }

    // proxy contract: a transaction on that message, which its code accepts (exit 0)
    let tp = txs
        .iter()
        .find(|t| t.account == proxy_addr())
        .expect("proxy contract transaction");
    assert_eq!(tp.exit_code(), Some(0), "{}", show(&txs));
    assert_eq!(tp.in_msg.as_ref().unwrap().src, Some(client_addr()));
    assert_eq!(tp.in_msg.as_ref().unwrap().value, to_proxy.value);

    // value and fees exactly as in the official emulator
    check(
        &txs[0],
        &Expect {
            account: client_addr(),
            in_value: 5_200_000_000,
            exit: Some(0),
            aborted: false,
            fees: 3_862_395,
            outs: &[("proxy", 5_195_495_200)],
        },
    );
    check(
        &txs[1],
        &Expect {
            account: proxy_addr(),
            in_value: 5_195_495_200,
            exit: Some(0),
            aborted: false,
            fees: 5_398_931,
            outs: &[("clientOwner", 189_829_600)],
        },
    );
    assert_eq!(txs[0].out_msgs[0].fwd_fee, 642_405);
    assert_eq!(txs[1].out_msgs[0].fwd_fee, 266_669);

    // contract state: client balance 5 TON, stake 1 TON; the proxy's data unchanged except
    // what its code writes
    let cd = client_data(&c);
    assert_eq!(cd.balance, Coins::from_nano(5 * TON));
    assert_eq!(cd.stake, Coins::from_nano(TON));
    assert_eq!(cd.tokens_used, 0);
    let pd = proxy_data(&c);
    eprintln!(
        "proxy data before: balance {:?} stake {:?}; after: balance {:?} stake {:?}",
        proxy_before.balance, proxy_before.stake, pd.balance, pd.stake
    );
    for t in &txs {
        eprintln!(
            "tx {} in={} exit={:?} fees={} balance_after={} outs={:?}",
            t.account,
            t.in_msg.as_ref().map_or(0, |m| m.value),
            t.exit_code(),
            t.total_fees,
            t.balance_after,
            t.out_msgs
                .iter()
                .map(|m| (m.dst, m.value))
                .collect::<Vec<_>>()
        );
    }
}

#[test]
fn charge_takes_client_balance_from_5_to_4_9_ton() {
    let mut c = funded();
    let body = charge(42, 100_000, client_addr(), &proxy_key());
    // the body is the golden vector's, byte for byte
    assert_eq!(
        ton::boc::encode_hex(&body),
        vectors()["charge_body_boc"].as_str().unwrap()
    );
    let txs = send(&mut c, "relay", client_addr(), 700_000_000, body.clone());
    eprintln!("charge: {}", show(&txs));
    assert_eq!(txs[0].account, client_addr());
    assert_eq!(txs[0].exit_code(), Some(0));
    assert!(txs[0].success(), "{}", show(&txs));
    check(
        &txs[0],
        &Expect {
            account: client_addr(),
            in_value: 700_000_000,
            exit: Some(0),
            aborted: false,
            fees: 6_770_260,
            outs: &[("proxy", 1), ("relay", 692_438_799)],
        },
    );
    assert_eq!(txs[0].out_msgs[0].fwd_fee, 524_271);
    // the client contract notifies the proxy contract with 1 nanoton: too little for gas, so the
    // proxy's compute phase is skipped (README: a watcher reads these inbound messages)
    let note = txs.iter().find(|t| t.account == proxy_addr()).unwrap();
    assert_eq!(note.in_msg.as_ref().unwrap().value, 1);
    assert_eq!(note.in_msg.as_ref().unwrap().src, Some(client_addr()));
    assert_eq!(note.compute, Compute::Skipped(SkipReason::NoGas));
    // the excess goes back to the relay
    let excess = txs.iter().find(|t| t.account == treasury("relay")).unwrap();
    assert!(excess.success());
    for t in &txs {
        eprintln!(
            "tx {} in={} exit={:?} fees={} balance_after={} outs={:?}",
            t.account,
            t.in_msg.as_ref().map_or(0, |m| m.value),
            t.exit_code(),
            t.total_fees,
            t.balance_after,
            t.out_msgs
                .iter()
                .map(|m| (m.dst, m.value))
                .collect::<Vec<_>>()
        );
    }
    let cd = client_data(&c);
    assert_eq!(cd.balance, Coins::from_nano(4_900_000_000));
    assert_eq!(cd.tokens_used, 100_000);
    // the same through the contract's get-method, read as flow.js reads it
    let s = c
        .run_get_method(&client_addr(), "get_cocoon_client_data")
        .unwrap();
    assert_eq!(s[0].addr(), Some(treasury("clientOwner")));
    assert_eq!(s[1].addr(), Some(proxy_addr()));
    assert_eq!(s[3].int(), Some(0), "state");
    assert_eq!(s[4].int(), Some(4_900_000_000), "balance");
    assert_eq!(s[5].int(), Some(1_000_000_000), "stake");
    assert_eq!(s[6].int(), Some(100_000), "tokens_used");

    // replay of the same voucher → 1000 (old counter), state unchanged
    let txs = send(&mut c, "relay", client_addr(), 700_000_000, body);
    check(
        &txs[0],
        &Expect {
            account: client_addr(),
            in_value: 700_000_000,
            exit: Some(1000),
            aborted: true,
            fees: 2_298_131,
            outs: &[("relay", 697_435_200)],
        },
    );
    assert!(txs[0].bounced && txs[0].out_msgs[0].bounced);
    assert_eq!(client_data(&c).balance, Coins::from_nano(4_900_000_000));

    // a lower counter, correctly signed → 1000
    let txs = send(
        &mut c,
        "relay",
        client_addr(),
        700_000_000,
        charge(45, 50_000, client_addr(), &proxy_key()),
    );
    assert_eq!(txs[0].exit_code(), Some(1000), "{}", show(&txs));

    // wrong key → 1007
    let txs = send(
        &mut c,
        "relay",
        client_addr(),
        700_000_000,
        charge(43, 200_000, client_addr(), &wrong_key()),
    );
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

    // a voucher for another contract (the proxy's address) → 1015
    let txs = send(
        &mut c,
        "relay",
        client_addr(),
        700_000_000,
        charge(44, 300_000, proxy_addr(), &proxy_key()),
    );
    check(
        &txs[0],
        &Expect {
            account: client_addr(),
            in_value: 700_000_000,
            exit: Some(1015),
            aborted: true,
            fees: 2_339_731,
            outs: &[("relay", 697_393_600)],
        },
    );

    // none of the refused vouchers moved the balance or the counter
    let cd = client_data(&c);
    assert_eq!(cd.balance, Coins::from_nano(4_900_000_000));
    assert_eq!(cd.tokens_used, 100_000);
}

//! Must-show 4a: a worker payout voucher (50,000 tokens) sent to the worker contract makes the
//! proxy contract pay the worker's owner Δ × worker_fee = 20,000,000 nano and keep
//! Δ × (price − fee) = 30,000,000 nano as proxy fees; the replay → 1000. Values and fees are the
//! official emulator's (flow.js).

mod common;
use common::*;
use ton::address::Coins;
use ton::contracts::{ProxyData, WorkerData};
use ton::messages::signed::{build_signed, SignedOp, SignedPayload};
use ton::messages::unsigned::Request;

#[test]
fn payout_pays_worker_owner_delta_times_worker_fee() {
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
    deploy(&mut c, "workerOwner", worker_init(), 300_000_000);

    let p = SignedPayload {
        op: SignedOp::Payout,
        qid: 5,
        tokens: Some(50_000),
        expected_address: worker_addr(),
    };
    let body = build_signed(&proxy_key(), &p, &treasury("workerOwner")).unwrap();
    assert_eq!(
        ton::boc::encode_hex(&body),
        vectors()["payout_body_boc"].as_str().unwrap()
    );
    let owner_before = c.balance(&treasury("workerOwner")).unwrap();
    let txs = send(&mut c, "relay", worker_addr(), 700_000_000, body.clone());
    check(
        &txs[0],
        &Expect {
            account: worker_addr(),
            in_value: 700_000_000,
            exit: Some(0),
            aborted: false,
            fees: 4_027_195,
            outs: &[("proxy", 695_439_200)],
        },
    );
    check(
        &txs[1],
        &Expect {
            account: proxy_addr(),
            in_value: 695_439_200,
            exit: Some(0),
            aborted: false,
            fees: 5_526_262,
            outs: &[("workerOwner", 20_000_000), ("workerOwner", 689_379_600)],
        },
    );
    assert_eq!(20_000_000, 50_000 * 400);
    // the owner (an always-accepting treasury here) is credited both messages, minus its own
    // compute fees (the sandbox's wallet treasury pays 123,600 per message instead of 40,000)
    let owner_fees: u128 = txs[2..].iter().map(|t| t.total_fees).sum();
    assert_eq!(
        c.balance(&treasury("workerOwner")).unwrap() - owner_before,
        20_000_000 + 689_379_600 - owner_fees
    );
    let wd = WorkerData::from_cell(&c.data(&worker_addr()).unwrap()).unwrap();
    assert_eq!(wd.tokens, 50_000);
    let pd = ProxyData::from_cell(&c.data(&proxy_addr()).unwrap()).unwrap();
    assert_eq!(pd.balance, Coins::from_nano(50_000 * (1000 - 400)));
    assert_eq!(pd.stake, Coins::from_nano(0));

    // replay → 1000, bounced to the relay
    let txs = send(&mut c, "relay", worker_addr(), 700_000_000, body);
    check(
        &txs[0],
        &Expect {
            account: worker_addr(),
            in_value: 700_000_000,
            exit: Some(1000),
            aborted: true,
            fees: 2_351_331,
            outs: &[("relay", 697_382_000)],
        },
    );
    let wd = WorkerData::from_cell(&c.data(&worker_addr()).unwrap()).unwrap();
    assert_eq!(wd.tokens, 50_000);
}

//! The differential scenario on the local chain: the steps of
//! `fixtures/reference/scenario.js` (flow_fees.js: deploy proxy/client, top-up, charge 100,000,
//! replay, wrong key, wrong address, deploy worker, worker payout, payout replay), run on
//! [`tonsim::Chain`] with the real contract code, printed as one JSON document in the shape the
//! node script prints for the official emulator. `ci/ton-differential.sh` compares the two.
//!
//! Run: `cargo run --release -p cocoon-tonsim --example scenario`.
//!
//! Only contract accounts (proxy, client, worker) are listed: the treasuries are empty-code
//! accounts here and wallet contracts in the sandbox. Integers are decimal strings.

#[path = "../tests/common/mod.rs"]
mod common;

use common::*;
use serde_json::{json, Map, Value};
use ton::address::{Addr, Coins};
use ton::cell::Cell;
use ton::messages::signed::{build_signed, SignedOp, SignedPayload};
use ton::messages::unsigned::Request;
use tonsim::log::SkipReason;
use tonsim::{Chain, Compute, TxRecord};

fn voucher(op: SignedOp, qid: u64, tokens: u64, to: Addr, excess: &str, wrong: bool) -> Cell {
    let p = SignedPayload {
        op,
        qid,
        tokens: Some(tokens),
        expected_address: to,
    };
    let key = if wrong { wrong_key() } else { proxy_key() };
    build_signed(&key, &p, &treasury(excess)).expect("voucher")
}

fn skip_name(r: SkipReason) -> &'static str {
    match r {
        SkipReason::NoState => "no-state",
        SkipReason::BadState => "bad-state",
        SkipReason::NoGas => "no-gas",
        SkipReason::Suspended => "suspended",
    }
}

/// One contract transaction as the comparison sees it.
fn tx_json(t: &TxRecord) -> Value {
    let (exit, skipped) = match t.compute {
        Compute::Executed { exit_code, .. } => (json!(exit_code), Value::Null),
        Compute::Skipped(r) => (Value::Null, json!(skip_name(r))),
    };
    json!({
        "account": t.account.to_string(),
        "in_value": t.in_msg.as_ref().map_or(0, |m| m.value).to_string(),
        "exit": exit,
        "skipped": skipped,
        "aborted": t.aborted,
        "fees": t.total_fees.to_string(),
        "out_values": t.out_msgs.iter().map(|m| m.value.to_string()).collect::<Vec<_>>(),
        "out_dsts": t.out_msgs.iter().map(|m| m.dst.map(|a| a.to_string())).collect::<Vec<_>>(),
    })
}

fn main() {
    let contracts = [proxy_addr(), client_addr(), worker_addr()];
    let mut c: Chain = chain();
    let mut steps = Vec::new();
    let mut record = |name: &str, txs: Vec<TxRecord>| {
        let txs: Vec<Value> = txs
            .iter()
            .filter(|t| contracts.contains(&t.account))
            .map(tx_json)
            .collect();
        steps.push(json!({ "name": name, "txs": txs }));
    };

    record(
        "deploy proxy",
        deploy(&mut c, "proxyOwner", proxy_init(), 2 * TON),
    );
    record(
        "deploy client",
        deploy(&mut c, "clientOwner", client_init(), 800_000_000),
    );
    let top_up = Request::TopUp {
        qid: 7,
        amount: Coins::from_nano(5 * TON),
        excess: treasury("clientOwner"),
    }
    .to_cell()
    .expect("top-up body");
    record(
        "top-up",
        send(&mut c, "clientOwner", client_addr(), 5_200_000_000, top_up),
    );
    let charge = voucher(SignedOp::Charge, 42, 100_000, client_addr(), "relay", false);
    let v = 700_000_000;
    record(
        "charge 100000",
        send(&mut c, "relay", client_addr(), v, charge.clone()),
    );
    record(
        "charge replay",
        send(&mut c, "relay", client_addr(), v, charge),
    );
    let bad = voucher(SignedOp::Charge, 43, 200_000, client_addr(), "relay", true);
    record(
        "charge wrong key",
        send(&mut c, "relay", client_addr(), v, bad),
    );
    let other = voucher(SignedOp::Charge, 44, 300_000, proxy_addr(), "relay", false);
    record(
        "charge wrong address",
        send(&mut c, "relay", client_addr(), v, other),
    );
    record(
        "deploy worker",
        deploy(&mut c, "workerOwner", worker_init(), 300_000_000),
    );
    let payout = voucher(
        SignedOp::Payout,
        5,
        50_000,
        worker_addr(),
        "workerOwner",
        false,
    );
    record(
        "worker payout 50000",
        send(&mut c, "relay", worker_addr(), v, payout.clone()),
    );
    record(
        "payout replay",
        send(&mut c, "relay", worker_addr(), v, payout),
    );

    let mut fin = Map::new();
    for a in &contracts {
        let acc = c.account(a).expect("account").expect("contract exists");
        fin.insert(
            a.to_string(),
            json!({
                "data_hash": acc.data.map(|d| hex::encode(d.hash())),
                "balance": acc.balance.to_string(),
            }),
        );
    }
    let accounts = json!({
        "proxy": contracts[0].to_string(),
        "client": contracts[1].to_string(),
        "worker": contracts[2].to_string(),
    });
    let doc = json!({ "accounts": accounts, "steps": steps, "final": fin });
    println!(
        "{}",
        serde_json::to_string_pretty(&doc).expect("json serialises")
    );
}

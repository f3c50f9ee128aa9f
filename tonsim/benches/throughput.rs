//! Payments (TON layer) figures: how fast the local chain executes charge transactions with the
//! real contract code, and what building + signing one voucher costs, each next to a same-run
//! baseline (one Ed25519 signature) so that machines compare by ratio. Prints a table; asserts
//! nothing about time.
//!
//! Run: `cargo bench -p cocoon-tonsim --bench throughput` (`-- --quick` for a short run).
//!
//! Charge: flow.js's setup (deploy proxy and client contracts, top up 5 TON), then N vouchers
//! with increasing token counters (100, 200, …) sent one after another to the one client
//! contract, 0.7 TON each. Each delivery runs the client contract's transaction, the proxy
//! contract's (a 1-nano notification, compute skipped: no gas) and the relay treasury's (the
//! excess). Vouchers are built before the clock starts; the client's `tokens_used` is checked
//! after each round.

#[path = "../tests/common/mod.rs"]
mod common;

use std::hint::black_box;
use std::time::Instant;

use common::*;
use ed25519_dalek::Signer;
use ton::address::Coins;
use ton::cell::Cell;
use ton::contracts::ClientData;
use ton::messages::signed::{build_signed, SignedOp, SignedPayload};
use ton::messages::unsigned::Request;
use tonsim::Chain;

const TOKENS_PER_CHARGE: u64 = 100;

fn voucher(qid: u64, tokens: u64) -> Cell {
    let p = SignedPayload {
        op: SignedOp::Charge,
        qid,
        tokens: Some(tokens),
        expected_address: client_addr(),
    };
    build_signed(&proxy_key(), &p, &treasury("relay")).expect("voucher")
}

/// flow.js's deploys and 5-TON top-up.
fn funded() -> Chain {
    let mut c = chain();
    deploy_proxy_and_client(&mut c);
    let body = Request::TopUp {
        qid: 7,
        amount: Coins::from_nano(5 * TON),
        excess: treasury("clientOwner"),
    }
    .to_cell()
    .expect("top-up body");
    let txs = send(&mut c, "clientOwner", client_addr(), 5_200_000_000, body);
    assert!(txs.iter().all(|t| t.success()), "top-up: {}", show(&txs));
    c
}

/// One round: `n` sequential charges on a fresh chain; returns (seconds, transactions run).
fn charge_round(n: u64) -> (f64, usize) {
    let mut c = funded();
    let vouchers: Vec<Cell> = (1..=n).map(|i| voucher(i, i * TOKENS_PER_CHARGE)).collect();
    let start_log = c.log().len();
    let t0 = Instant::now();
    for v in vouchers {
        black_box(send(&mut c, "relay", client_addr(), 700_000_000, v));
    }
    let secs = t0.elapsed().as_secs_f64();
    let txs = c.log().len() - start_log;
    let cd = ClientData::from_cell(&c.data(&client_addr()).expect("client data")).expect("parse");
    assert_eq!(
        cd.tokens_used,
        n * TOKENS_PER_CHARGE,
        "every charge applied"
    );
    (secs, txs)
}

/// Median of `rounds` timings of `iters` calls of `f`, in µs per call.
fn per_call_us(rounds: usize, iters: u32, mut f: impl FnMut(u32)) -> f64 {
    let mut v: Vec<f64> = (0..rounds)
        .map(|_| {
            let t0 = Instant::now();
            for i in 0..iters {
                f(i);
            }
            t0.elapsed().as_secs_f64() * 1e6 / f64::from(iters)
        })
        .collect();
    median(&mut v)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let (rounds, charges, sig_iters) = if quick {
        (3, 200, 2_000)
    } else {
        (5, 1_000, 20_000)
    };

    // (1) local-chain throughput
    let _ = charge_round(20); // warm-up
    let mut per_charge = Vec::new();
    let mut tx_per_charge = 0.0;
    for _ in 0..rounds {
        let (secs, txs) = charge_round(charges);
        per_charge.push(secs * 1e6 / charges as f64);
        tx_per_charge = txs as f64 / charges as f64;
    }
    let charge_us = median(&mut per_charge);

    // (2) voucher build + sign with the `ton` crate
    let key = proxy_key();
    let relay = treasury("relay");
    let client = client_addr();
    let voucher_us = per_call_us(rounds, sig_iters, |i| {
        let p = SignedPayload {
            op: SignedOp::Charge,
            qid: u64::from(i),
            tokens: Some(u64::from(i) * TOKENS_PER_CHARGE),
            expected_address: client,
        };
        black_box(build_signed(&key, black_box(&p), &relay).expect("voucher"));
    });

    // (3) baseline: one Ed25519 signature of a 32-byte hash (what build_signed signs)
    let msg = [7u8; 32];
    let sign_us = per_call_us(rounds, sig_iters, |i| {
        let mut m = msg;
        m[0] = i as u8;
        black_box(key.sign(black_box(&m)));
    });

    let mode = if quick { "quick" } else { "full" };
    println!("cocoon payments (TON layer) benchmark ({mode} mode, median of {rounds} rounds)");
    println!(
        "{:<58} {:>12} {:>14} {:>12}",
        "measure", "µs each", "per second", "× Ed25519"
    );
    let row = |name: &str, us: f64| {
        println!(
            "{:<58} {:>12.1} {:>14.0} {:>12.1}",
            name,
            us,
            1e6 / us,
            us / sign_us
        );
    };
    row(
        &format!("local chain: charge ({charges} sequential vouchers, 1 client)"),
        charge_us,
    );
    row(
        &format!("  per transaction ({tx_per_charge:.1} tx per charge)"),
        charge_us / tx_per_charge,
    );
    row("voucher: build + sign (ton::messages::signed)", voucher_us);
    row(
        "baseline: Ed25519 sign of 32 bytes (ed25519-dalek)",
        sign_us,
    );
}

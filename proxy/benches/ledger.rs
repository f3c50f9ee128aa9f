//! Ledger benchmark (prints figures; not a timed assert).
//!
//! Durable charges per second through [`DurableLedger`] (reserve → charge → wait until the
//! group commit that holds it is on disk) at several concurrency levels, against two baselines
//! measured in the same run: a plain `write + fdatasync` loop on the same filesystem (what one
//! durable write per request would cost) and the in-memory ledger (no durability at all).
//!
//! Run: `cargo bench -p cocoon-proxy --bench ledger` (release profile).

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use protocol::Usage;
use proxy::config::AccountsConfig;
use proxy::ledger::durable::{DurableLedger, DurableOptions, LedgerKey};
use proxy::ledger::{Ledger, MemoryLedger};

const PRICE: u64 = 10;
const RUN: Duration = Duration::from_secs(3);

fn usage() -> Usage {
    Usage {
        prompt_tokens: 20,
        completion_tokens: 30,
        ..Usage::default()
    }
}

fn fsync_loop(dir: &std::path::Path) -> f64 {
    let path = dir.join("fsync-baseline");
    let mut f = std::fs::File::create(&path).unwrap();
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < RUN {
        f.write_all(&[0u8; 128]).unwrap();
        f.sync_data().unwrap();
        n += 1;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

fn memory(concurrency: usize) -> f64 {
    let ledger = Arc::new(MemoryLedger::new(&AccountsConfig {
        default_balance_nano: Some(u64::MAX / 4),
        balances: Default::default(),
    }));
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < RUN {
        for i in 0..concurrency {
            let account = format!("client-{}", i % 64);
            let r = ledger.reserve(&account, 1000).unwrap();
            ledger.commit(&r, 500, &usage(), None).unwrap();
            n += 1;
        }
    }
    n as f64 / start.elapsed().as_secs_f64()
}

fn durable(dir: &std::path::Path, concurrency: usize) -> (f64, f64, Duration) {
    let path = dir.join(format!("ledger-{concurrency}.redb"));
    let _ = std::fs::remove_file(&path);
    let (ledger, _) = DurableLedger::open(
        DurableOptions {
            path,
            price_per_token: PRICE,
            default_balance_nano: Some(u64::MAX / 4),
        },
        LedgerKey::derive(&[1u8; 32]),
    )
    .unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (c0, _) = ledger.counters();
    let start = Instant::now();
    let (n, latency) = rt.block_on(async {
        let mut tasks = Vec::new();
        for i in 0..concurrency {
            let ledger = ledger.clone();
            tasks.push(tokio::spawn(async move {
                let account = format!("client-{}", i % 64);
                let worker = format!("worker-{}", i % 8);
                let mut n = 0u64;
                let mut waited = Duration::ZERO;
                while start.elapsed() < RUN {
                    let r = ledger.reserve(&account, 1000).unwrap();
                    let (_, ticket) = ledger.charge(&r, 500, &usage(), Some(&worker)).unwrap();
                    let t = Instant::now();
                    ticket.wait().await.unwrap();
                    waited += t.elapsed();
                    n += 1;
                }
                (n, waited)
            }));
        }
        let mut total = 0u64;
        let mut waited = Duration::ZERO;
        for t in tasks {
            let (n, w) = t.await.unwrap();
            total += n;
            waited += w;
        }
        (
            total,
            waited / u32::try_from(total.max(1)).unwrap_or(u32::MAX),
        )
    });
    let secs = start.elapsed().as_secs_f64();
    let (c1, _) = ledger.counters();
    (n as f64 / secs, (c1 - c0) as f64 / secs, latency)
}

fn main() {
    let dir = std::env::temp_dir().join(format!("cocoon-ledger-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    println!(
        "ledger benchmark ({}s per figure, files in {})",
        RUN.as_secs(),
        dir.display()
    );
    let fsyncs = fsync_loop(&dir);
    println!("baseline: plain write+fdatasync loop      {fsyncs:>10.0} fsyncs/s");
    let mem = memory(256);
    println!("baseline: in-memory ledger (no durability) {mem:>10.0} charges/s");
    for c in [1usize, 16, 128, 512, 2048] {
        let (rate, commits, wait) = durable(&dir, c);
        println!(
            "durable ledger, {c:>4} in flight: {rate:>9.0} charges/s  {commits:>6.0} commits/s  \
             {:>5.1} charges/commit  wait for durability {:>6.2} ms  = {:>5.1}x the fsync loop",
            rate / commits.max(1.0),
            wait.as_secs_f64() * 1e3,
            rate / fsyncs
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

//! The durable ledger: what survives a reopen, what a tampered or rolled-back file looks like,
//! anchors and vouchers, and `kill -9` at random points of a loaded writer.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use protocol::Usage;
use proxy::ledger::durable::{DurableLedger, DurableOptions, LedgerKey, OpenError, RollbackError};
use proxy::ledger::{Ledger, LedgerError};
use redb::ReadableTable;

const PRICE: u64 = 10;

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("cocoon-ledger-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn key() -> LedgerKey {
    LedgerKey::derive(&[7u8; 32])
}

fn options(path: &Path) -> DurableOptions {
    DurableOptions {
        path: path.to_path_buf(),
        price_per_token: PRICE,
        default_balance_nano: None,
    }
}

fn open(path: &Path) -> Arc<DurableLedger> {
    DurableLedger::open(options(path), key()).unwrap().0
}

fn usage(p: u64, c: u64) -> Usage {
    Usage {
        prompt_tokens: p,
        completion_tokens: c,
        ..Usage::default()
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn accounting_matches_the_memory_ledger_and_survives_reopen() {
    let d = dir("reopen");
    let path = d.join("ledger.redb");
    let l = open(&path);
    let _ = l.deposit("a", 1000);
    assert!(matches!(
        l.reserve("b", 1),
        Err(LedgerError::UnknownAccount { .. })
    ));
    let r1 = l.reserve("a", 600).unwrap();
    assert_eq!(
        l.reserve("a", 500),
        Err(LedgerError::InsufficientFunds {
            account: "a".into(),
            needed: 500,
            available: 400
        })
    );
    // Capped at the reservation: 600 nano = 60 tokens.
    let (charged, ticket) = l.charge(&r1, 700, &usage(3, 4), Some("w1")).unwrap();
    assert_eq!(charged, 600);
    assert!(l.charge(&r1, 1, &usage(0, 0), None).is_err());
    let r2 = l.reserve("a", 100).unwrap();
    let r3 = l.reserve("a", 200).unwrap();
    l.release(&r2).unwrap();
    assert!(l.release(&r2).is_err());
    rt().block_on(async {
        ticket.wait().await.unwrap();
        l.flush().await.unwrap();
    });
    let _ = r3; // in flight when the process "dies"
    l.close();
    drop(l);

    let (l, recovery) = DurableLedger::open(options(&path), key()).unwrap();
    assert_eq!(recovery.clients, 1);
    assert_eq!(recovery.workers, 1);
    assert_eq!(recovery.stale_reservations, 1);
    assert_eq!(recovery.stale_reserved_nano, 200);
    let a = l.client("a").unwrap();
    assert_eq!(a.used_tokens, 60);
    assert_eq!(a.usage.requests, 1);
    assert_eq!(a.usage.cost_nano, 600);
    assert_eq!(l.worker("w1").unwrap().tokens, 60);
    // The stale reservation is released: 1000 − 600 is available again.
    assert_eq!(l.balance("a").unwrap().available(), 400);
    drop(l);
    // And its release is durable too.
    let (_, recovery) = DurableLedger::open(options(&path), key()).unwrap();
    assert_eq!(recovery.stale_reservations, 0);
}

#[test]
fn receipts_are_stored_with_their_charge_and_authenticated() {
    let d = dir("receipts");
    let path = d.join("ledger.redb");
    let l = open(&path);
    let _ = l.deposit("a", 10_000);
    let mut tickets = Vec::new();
    for i in 0..3u8 {
        let r = l.reserve("a", 1000).unwrap();
        let receipt = vec![i; 200];
        let (_, t) = l
            .charge_receipted(&r, 500, &usage(1, 1), Some("w"), Some((&[i; 32], &receipt)))
            .unwrap();
        tickets.push(t);
    }
    // A charge without a receipt (a plaintext request) stores none.
    let r = l.reserve("a", 1000).unwrap();
    tickets.push(l.charge(&r, 500, &usage(1, 1), None).unwrap().1);
    rt().block_on(async {
        for t in tickets {
            t.wait().await.unwrap();
        }
    });
    assert_eq!(l.receipt_count("a"), 3);
    assert_eq!(l.receipts("a"), Some(3));
    l.close();
    drop(l);
    let l = open(&path);
    assert_eq!(l.receipt_count("a"), 3);
    assert_eq!(l.client("a").unwrap().usage.requests, 4);
    l.close();
    drop(l);

    // An edited receipt row fails its tag; a removed one fails the digest.
    let def: redb::TableDefinition<&[u8], &[u8]> = redb::TableDefinition::new("receipts");
    let db = redb::Database::create(&path).unwrap();
    let tx = db.begin_write().unwrap();
    {
        let mut t = tx.open_table(def).unwrap();
        let mut v = t
            .get([1u8; 32].as_slice())
            .unwrap()
            .unwrap()
            .value()
            .to_vec();
        v[10] ^= 1;
        t.insert([1u8; 32].as_slice(), v.as_slice()).unwrap();
    }
    tx.commit().unwrap();
    drop(db);
    let err = DurableLedger::open(options(&path), key()).unwrap_err();
    assert!(
        matches!(&err, OpenError::BadTag { what, .. } if what.starts_with("receipt 0101")),
        "{err}"
    );
    let db = redb::Database::create(&path).unwrap();
    let tx = db.begin_write().unwrap();
    tx.open_table(def)
        .unwrap()
        .remove([1u8; 32].as_slice())
        .unwrap();
    tx.commit().unwrap();
    drop(db);
    let err = DurableLedger::open(options(&path), key()).unwrap_err();
    assert!(matches!(err, OpenError::DigestMismatch { .. }), "{err}");
}

#[test]
fn chain_state_limits_what_a_client_may_owe() {
    let d = dir("chain");
    let l = open(&d.join("ledger.redb"));
    // balance 5000, stake 1000, nothing charged: may owe at most 1000.
    let _ = l.observe_client("c", 5000, 1000, 0).unwrap();
    let r = l.reserve("c", 1000).unwrap();
    let _ = l.charge(&r, 1000, &usage(1, 1), None).unwrap();
    assert!(matches!(
        l.reserve("c", 10),
        Err(LedgerError::InsufficientFunds { available: 0, .. })
    ));
    // The chain charged 100 tokens (1000 nano) and the balance dropped: credit again.
    let _ = l.observe_client("c", 4000, 1000, 100).unwrap();
    assert_eq!(l.balance("c").unwrap().available(), 1000);
    // A chain that charged more than the ledger billed: rolled back.
    assert_eq!(
        l.observe_client("c", 4000, 1000, 101).unwrap_err(),
        RollbackError::ChargedAhead {
            account: "c".into(),
            chain_tokens: 101,
            ledger_tokens: 100
        }
    );
}

/// Overwrites the stored value of `key` in `table` with `value` (raw, tag included).
fn poke(path: &Path, table: &str, key: &str, f: impl FnOnce(Vec<u8>) -> Vec<u8>) {
    let def: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new(table);
    let db = redb::Database::create(path).unwrap();
    let tx = db.begin_write().unwrap();
    {
        let mut t = tx.open_table(def).unwrap();
        let old = t.get(key).unwrap().unwrap().value().to_vec();
        t.insert(key, f(old).as_slice()).unwrap();
    }
    tx.commit().unwrap();
}

fn peek(path: &Path, table: &str, key: &str) -> Vec<u8> {
    use redb::ReadableDatabase;
    let def: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new(table);
    let db = redb::Database::create(path).unwrap();
    let tx = db.begin_read().unwrap();
    let t = tx.open_table(def).unwrap();
    let v = t.get(key).unwrap().unwrap().value().to_vec();
    v
}

fn write_two_clients(path: &Path) {
    let l = open(path);
    let _ = l.deposit("alice", 1000);
    let _ = l.deposit("bob", 2000);
    rt().block_on(l.flush()).unwrap();
}

#[test]
fn a_changed_value_is_refused_by_name() {
    let d = dir("tamper");
    let path = d.join("ledger.redb");
    write_two_clients(&path);
    // Raise alice's balance (byte 1 is the low byte of balance_nano).
    poke(&path, "clients", "alice", |mut v| {
        v[2] ^= 0x01;
        v
    });
    let err = DurableLedger::open(options(&path), key()).unwrap_err();
    assert!(
        matches!(&err, OpenError::BadTag { what, .. } if what == "client \"alice\""),
        "{err}"
    );
    assert!(err.to_string().contains("ledger.redb"), "{err}");
}

#[test]
fn a_record_moved_to_another_key_is_refused() {
    let d = dir("swap");
    let path = d.join("ledger.redb");
    write_two_clients(&path);
    let bob = peek(&path, "clients", "bob");
    poke(&path, "clients", "alice", |_| bob);
    let err = DurableLedger::open(options(&path), key()).unwrap_err();
    assert!(
        matches!(&err, OpenError::BadTag { what, .. } if what == "client \"alice\""),
        "{err}"
    );
}

#[test]
fn one_record_restored_from_an_older_copy_is_refused() {
    let d = dir("rollback-one");
    let path = d.join("ledger.redb");
    write_two_clients(&path);
    let old = peek(&path, "clients", "alice");
    {
        let l = open(&path);
        let r = l.reserve("alice", 500).unwrap();
        let (_, t) = l.charge(&r, 500, &usage(5, 5), None).unwrap();
        rt().block_on(t.wait()).unwrap();
    }
    // Every tag is valid, but the records no longer sum to the state digest.
    poke(&path, "clients", "alice", |_| old);
    let err = DurableLedger::open(options(&path), key()).unwrap_err();
    assert!(matches!(err, OpenError::DigestMismatch { .. }), "{err}");
}

#[test]
fn another_proxy_key_cannot_open_the_ledger() {
    let d = dir("otherkey");
    let path = d.join("ledger.redb");
    write_two_clients(&path);
    let err = DurableLedger::open(options(&path), LedgerKey::derive(&[8u8; 32])).unwrap_err();
    assert!(matches!(err, OpenError::BadTag { .. }), "{err}");
}

#[test]
fn a_flipped_byte_in_the_file_is_refused() {
    let d = dir("flip");
    let path = d.join("ledger.redb");
    write_two_clients(&path);
    let sealed = peek(&path, "clients", "bob");
    let mut bytes = std::fs::read(&path).unwrap();
    let mut hits = 0;
    let mut i = 0;
    while let Some(pos) = bytes[i..].windows(sealed.len()).position(|w| w == sealed) {
        bytes[i + pos + 9] ^= 0x40;
        hits += 1;
        i += pos + 1;
    }
    assert!(hits > 0, "the record's bytes were not found in the file");
    std::fs::write(&path, &bytes).unwrap();
    // redb's page checksums or the ledger's tag catch it; either way the file is named.
    let err = DurableLedger::open(options(&path), key()).unwrap_err();
    assert!(err.to_string().contains("ledger.redb"), "{err}");
    assert!(
        matches!(err, OpenError::Storage { .. } | OpenError::BadTag { .. }),
        "{err}"
    );
}

#[test]
fn vouchers_only_for_anchored_counts_and_rollback_is_caught() {
    let d = dir("anchor");
    let path = d.join("ledger.redb");
    let l = open(&path);
    let rt = rt();
    let _ = l.deposit("c", 1_000_000);
    let charge = |nano: u64| {
        let r = l.reserve("c", nano).unwrap();
        let (_, t) = l.charge(&r, nano, &usage(1, 1), Some("w")).unwrap();
        rt.block_on(t.wait()).unwrap();
    };
    charge(1000);
    // Nothing anchored yet: no voucher.
    assert!(l.claim_charge_voucher("c").is_none());
    let (s1, d1) = rt.block_on(l.begin_anchor()).unwrap();
    assert_eq!(s1, 1);
    charge(500); // after the anchor's snapshot
    assert!(l.claim_charge_voucher("c").is_none(), "not confirmed yet");
    l.check_anchor(1, &d1).unwrap();
    let t = l.anchor_confirmed(1).unwrap();
    rt.block_on(t.wait()).unwrap();
    let (count, t) = l.claim_charge_voucher("c").unwrap();
    assert_eq!(count, 100, "the anchored count, not the 150 billed");
    rt.block_on(t.wait()).unwrap();
    assert!(
        l.claim_charge_voucher("c").is_none(),
        "one voucher per count"
    );
    let (count, _t) = l.claim_payout_voucher("w").unwrap();
    assert_eq!(count, 100);

    // A copy of the file as of anchor 1 ...
    rt.block_on(l.flush()).unwrap();
    l.close();
    drop(l);
    std::fs::copy(&path, d.join("old.redb")).unwrap();
    let l = open(&path);
    let (s2, d2) = rt.block_on(l.begin_anchor()).unwrap();
    assert_eq!(s2, 2);
    assert_ne!(d1, d2);
    assert_eq!(
        l.check_anchor(1, &d2).unwrap_err(),
        RollbackError::AnchorDiffers {
            seqno: 1,
            chain: hex::encode(d2),
            ledger: hex::encode(d1)
        }
    );
    l.close();
    drop(l);
    // ... restored after anchor 2 reached the chain: the chain is ahead.
    std::fs::copy(d.join("old.redb"), &path).unwrap();
    let l = open(&path);
    assert_eq!(
        l.check_anchor(2, &d2).unwrap_err(),
        RollbackError::AnchorAhead {
            chain_seqno: 2,
            ledger_seqno: 1
        }
    );
    // The restored ledger remembers the voucher it issued: no second one for 100.
    assert!(l.claim_charge_voucher("c").is_none());
}

// ---- kill -9 ----------------------------------------------------------------------------

const CHILD_ENV: &str = "COCOON_LEDGER_CRASH_CHILD";

/// Child mode: charge 1 token at a time, printing each count once it is durable, until killed.
#[test]
fn crash_child() {
    let Ok(path) = std::env::var(CHILD_ENV) else {
        return;
    };
    let l = open(Path::new(&path));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut tasks = Vec::new();
        for t in 0..32 {
            let l = l.clone();
            tasks.push(tokio::spawn(async move {
                let mut done = 0u64;
                loop {
                    let r = l.reserve("c", PRICE * 3).unwrap();
                    let (_, ticket) = l.charge(&r, PRICE, &usage(1, 0), Some("w")).unwrap();
                    ticket.wait().await.unwrap();
                    // Printed after it is durable: this task's count is a lower bound.
                    done += 1;
                    println!("durable {t} {done}");
                }
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
    });
}

#[test]
fn kill_9_at_random_points_loses_nothing_durable() {
    use std::io::{BufRead, BufReader};
    let d = dir("kill9");
    let path = d.join("ledger.redb");
    {
        let l = open(&path);
        let _ = l.deposit("c", u64::MAX / 4);
        rt().block_on(l.flush()).unwrap();
    }
    let exe = std::env::current_exe().unwrap();
    let mut seed = 0x9e37_79b9_7f4a_7c15u64 ^ u64::from(std::process::id());
    let mut last = 0u64;
    for iteration in 0..50 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let mut child = std::process::Command::new(&exe)
            .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, &path)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // Read a random number of durable lines (0..400), then kill -9 mid-flight.
        let want = seed % 400;
        let mut reader = BufReader::new(child.stdout.take().unwrap());
        let mut seen = 0u64;
        let mut per_task = std::collections::HashMap::<u64, u64>::new();
        let mut line = String::new();
        while seen < want {
            line.clear();
            if reader.read_line(&mut line).unwrap() == 0 {
                break;
            }
            if let Some(n) = line.trim().strip_prefix("durable ") {
                let (task, count) = n.split_once(' ').unwrap();
                let e = per_task.entry(task.parse().unwrap()).or_default();
                *e = (*e).max(count.parse().unwrap());
                seen += 1;
            }
        }
        child.kill().unwrap(); // SIGKILL
                               // Charges this child reported durable, on top of what was on disk before it ran.
        let highest = last + per_task.values().sum::<u64>();
        let _ = child.wait();
        let (l, recovery) = DurableLedger::open(options(&path), key())
            .unwrap_or_else(|e| panic!("iteration {iteration}: {e}"));
        let a = l.client("c").unwrap();
        assert!(
            a.used_tokens >= highest,
            "iteration {iteration}: {} durable-reported but {} on disk",
            highest,
            a.used_tokens
        );
        assert!(
            a.used_tokens >= last,
            "iteration {iteration}: went backwards"
        );
        // Every charge is one token to the client and the same to the worker.
        assert_eq!(a.used_tokens, l.worker("w").unwrap().tokens);
        assert_eq!(a.usage.requests, a.used_tokens);
        assert_eq!(l.balance("c").unwrap().reserved_nano, 0);
        let _ = recovery;
        last = a.used_tokens;
    }
    assert!(last > 0, "the children made no progress");
}

//! The `cocoon-proxy` binary: config file with the simulated TEE, readiness line, serving a
//! worker and a client, clean exit on SIGTERM, and the documented exit codes.

mod common;

use std::time::{Duration, Instant};

use common::process::*;
use common::*;
use http::StatusCode;

/// Waits (20 s at most) until the proxy lists a model: its worker registered.
async fn wait_listed(c: &mut Client) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while json_body(c.get("/v1/models").await).await["data"]
        .as_array()
        .unwrap()
        .is_empty()
    {
        assert!(Instant::now() < deadline, "worker never registered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_serves_and_exits_cleanly_on_sigterm() {
    let dir = scratch("serve");
    let config_path = write_config(&dir, &config());
    let mut child = spawn(&config_path);
    let [workers, clients, _admin] = read_ready(&mut child).await;

    let _w = FakeWorker::connect(workers, WorkerSpec::new("w")).await;
    let mut c = client(clients, 1).await;
    wait_listed(&mut c).await;
    let resp = c.send(chat(MODEL, 16, None, BODY)).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let evs = events(resp.into_body()).await;
    assert_eq!(usage_of(&evs).unwrap().completion_tokens, 16);

    terminate(&child);
    assert_eq!(wait_exit(&mut child, Duration::from_secs(20)), 0);
    let _ = std::fs::remove_dir_all(&dir);
}

/// SIGTERM during two streams (drain 2 s): the short one completes, the long one is stopped at
/// its worker at the drain deadline and ends with the usage of the work done and a
/// `service_unavailable` error event (not a cut), and the process exits 0 soon after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_then_ends_streams_with_an_error_event() {
    let dir = scratch("drain");
    let config_path = write_config(
        &dir,
        &proxy::config::ConfigFile {
            shutdown_drain_secs: Some(2),
            ..config()
        },
    );
    let mut child = spawn(&config_path);
    let [workers, clients, _admin] = read_ready(&mut child).await;
    let mut spec = WorkerSpec::new("w");
    spec.tokens = 1000;
    spec.interval = Duration::from_millis(10); // long: 10 s; short (50 tokens): 0.5 s
    let _w = FakeWorker::connect(workers, spec).await;
    let mut c = client(clients, 1).await;
    wait_listed(&mut c).await;
    let long = c.send(chat(MODEL, 1000, None, BODY)).await;
    let short = c.send(chat(MODEL, 50, None, BODY)).await;
    assert_eq!(
        (long.status(), short.status()),
        (StatusCode::OK, StatusCode::OK)
    );
    let long = tokio::spawn(events(long.into_body()));
    let short = tokio::spawn(events(short.into_body()));

    let signalled = Instant::now();
    terminate(&child);
    let short = short.await.unwrap();
    assert!(error_of(&short).is_none());
    assert_eq!(usage_of(&short).unwrap().completion_tokens, 50);
    let long = long.await.unwrap();
    let (at, err) = error_of(&long).expect("an error event, not a cut");
    let after = at.duration_since(signalled);
    assert!(
        after >= Duration::from_secs(2) && after < Duration::from_secs(5),
        "{after:?}"
    );
    assert_eq!(err.kind, protocol::ErrorKind::Unavailable);
    // Stopped at its worker: the usage of the work done (billed) precedes the error event,
    // and no [DONE] follows.
    let done = usage_of(&long)
        .expect("usage of the work done")
        .completion_tokens;
    assert!((50..1000).contains(&done), "{done}");
    assert!(!long.iter().any(|(_, e)| e.is_done()));
    assert_eq!(wait_exit(&mut child, Duration::from_secs(20)), 0);
    assert!(signalled.elapsed() < Duration::from_secs(8));
    let _ = std::fs::remove_dir_all(&dir);
}

/// A SIGTERM right after the readiness line is handled (a clean exit), not the default
/// action: the handlers are installed before the line is printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_right_after_ready_exits_cleanly() {
    let dir = scratch("early-term");
    let config_path = write_config(&dir, &config());
    for _ in 0..10 {
        let mut child = spawn(&config_path);
        let _ = read_ready(&mut child).await;
        terminate(&child);
        assert_eq!(wait_exit(&mut child, Duration::from_secs(30)), 0);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn exit_codes_config_2_tee_3() {
    let dir = scratch("codes");
    // Deliberately wrong: the valid config with one unknown key.
    let mut table = toml::Table::try_from(config()).unwrap();
    table.insert("surprise".into(), 1.into());
    let config_path = write_config_text(&dir, &toml::to_string(&table).unwrap());
    let mut child = spawn(&config_path);
    assert_eq!(wait_exit(&mut child, Duration::from_secs(20)), 2);

    let mut child = spawn(&dir.join("missing.toml"));
    assert_eq!(wait_exit(&mut child, Duration::from_secs(20)), 2);

    let config_path = write_config(&dir, &config());
    std::fs::remove_file(dir.join("sim-platform.json")).unwrap();
    let mut child = spawn(&config_path);
    assert_eq!(wait_exit(&mut child, Duration::from_secs(20)), 3);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The config with a durable ledger and its key store in `dir`.
fn ledger_config(dir: &std::path::Path) -> proxy::config::ConfigFile {
    std::fs::write(dir.join("keys.pass"), "test passphrase\n").unwrap();
    proxy::config::ConfigFile {
        ledger: Some(proxy::config::LedgerFile {
            path: "ledger.redb".into(),
        }),
        keys: Some(proxy::config::KeysFile {
            dir: "keys".into(),
            passphrase_file: "keys.pass".into(),
        }),
        ..config()
    }
}

/// The account's billed requests as `/jsonstats` reports them.
async fn billed_requests(admin: std::net::SocketAddr) -> u64 {
    let (status, body) = admin_get(admin, "/jsonstats").await;
    assert_eq!(status, StatusCode::OK);
    let j: serde_json::Value = serde_json::from_str(&body).unwrap();
    j["clients"]
        .as_object()
        .unwrap()
        .values()
        .map(|c| c["requests"].as_u64().unwrap())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_ledger_survives_kill_9_and_refuses_a_tampered_file() {
    let dir = scratch("ledger");
    let config_path = write_config(&dir, &ledger_config(&dir));
    let mut completed = 0u64;
    for round in 0..3 {
        let mut child = spawn(&config_path);
        let [workers, clients, admin] = read_ready(&mut child).await;
        // Everything billed before the restart is still there.
        assert_eq!(billed_requests(admin).await, completed, "round {round}");
        let _w = FakeWorker::connect(workers, WorkerSpec::new("w")).await;
        let mut c = client(clients, 1).await;
        wait_listed(&mut c).await;
        for _ in 0..3 {
            let resp = c.send(chat(MODEL, 4, None, BODY)).await;
            assert_eq!(resp.status(), StatusCode::OK);
            // The usage event arrives only once the charge is on disk.
            let evs = events(resp.into_body()).await;
            assert!(usage_of(&evs).is_some());
            completed += 1;
        }
        child.kill().unwrap(); // SIGKILL: no shutdown, no flush
        let _ = child.wait();
    }
    // A clean stop last: after an unclean one redb verifies its checksums at open and, if the
    // newest commit fails them, falls back to the previous commit (docs/threat-model.md,
    // "Proxy keys and ledger"); after a clean stop it reads the pages as they are, so the
    // ledger's own tags must catch the change.
    let mut child = spawn(&config_path);
    let [_, _, admin] = read_ready(&mut child).await;
    assert_eq!(billed_requests(admin).await, completed);
    terminate(&child);
    assert_eq!(wait_exit(&mut child, Duration::from_secs(90)), 0);
    // A changed byte anywhere in a record: refused at start, exit 4. (The key store's
    // PBKDF2 runs first: slow in an unoptimised build on a loaded machine, hence the wait.)
    let path = dir.join("ledger.redb");
    let mut bytes = std::fs::read(&path).unwrap();
    let db_len = bytes.len();
    // Flip the stored request counter: find the 8-byte little-endian `completed` value right
    // after the client's usage record starts (requests is the first usage field).
    let pattern = completed.to_le_bytes();
    let mut flipped = 0;
    for i in 0..db_len.saturating_sub(8) {
        if bytes[i..i + 8] == pattern {
            bytes[i] ^= 0x02;
            flipped += 1;
        }
    }
    assert!(flipped > 0, "the request counter was not found in the file");
    std::fs::write(&path, &bytes).unwrap();
    let mut child = spawn(&config_path);
    let code = wait_exit(&mut child, Duration::from_secs(90));
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(code, 4, "{stderr}");
    assert!(stderr.contains("ledger.redb"), "{stderr}");
    // A wrong passphrase: the key store refuses, exit 4.
    std::fs::remove_file(&path).unwrap();
    std::fs::write(dir.join("keys.pass"), "another passphrase").unwrap();
    let mut child = spawn(&config_path);
    assert_eq!(wait_exit(&mut child, Duration::from_secs(90)), 4);
    let _ = std::fs::remove_dir_all(&dir);
}

/// SIGTERM while a client takes nothing of its stream (a 4 KiB HTTP/2 window that never
/// moves): at the drain deadline the process stops the generation at the worker and writes
/// the charge to its durable ledger before it exits, without waiting for a client that does
/// not read. Restarted on the same ledger, the stream is there, billed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_bills_a_stalled_client_before_exit() {
    let dir = scratch("stalled-term");
    let config_path = write_config(
        &dir,
        &proxy::config::ConfigFile {
            shutdown_drain_secs: Some(1),
            ..ledger_config(&dir)
        },
    );
    let mut child = spawn(&config_path);
    let [workers, clients, admin] = read_ready(&mut child).await;
    let mut spec = WorkerSpec::new("w");
    spec.tokens = 100_000;
    spec.interval = Duration::from_micros(100);
    let w = FakeWorker::connect(workers, spec).await;
    let mut c = client_with_window(clients, 1, 4 << 10).await;
    wait_listed(&mut c).await;
    let resp = c.send(chat(MODEL, 100_000, None, BODY)).await;
    assert_eq!(resp.status(), StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(billed_requests(admin).await, 0);
    let signalled = Instant::now();
    terminate(&child);
    assert_eq!(wait_exit(&mut child, Duration::from_secs(20)), 0);
    let took = signalled.elapsed();
    println!("exit {took:?} after SIGTERM (drain 1 s)");
    // Before: the process waited CUT_FLUSH (2 s) past the deadline and exited unbilled.
    assert!(took < Duration::from_millis(2500), "{took:?}");
    assert_eq!(w.obs.stopped.load(std::sync::atomic::Ordering::SeqCst), 1);
    drop(resp);
    let mut child = spawn(&config_path);
    let [_, _, admin] = read_ready(&mut child).await;
    assert_eq!(
        billed_requests(admin).await,
        1,
        "the stalled stream was billed"
    );
    terminate(&child);
    assert_eq!(wait_exit(&mut child, Duration::from_secs(30)), 0);
    let _ = std::fs::remove_dir_all(&dir);
}

//! The `cocoon-proxy` binary: config file with the simulated TEE, readiness line, serving a
//! worker and a client, clean exit on SIGTERM, and the documented exit codes.

mod common;

use std::time::{Duration, Instant};

use common::process::*;
use common::*;
use http::StatusCode;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_serves_and_exits_cleanly_on_sigterm() {
    let dir = scratch("serve");
    let config_path = write_config(&dir, &config());
    let mut child = spawn(&config_path);
    let [workers, clients, _admin] = read_ready(&mut child).await;

    let _w = FakeWorker::connect(workers, WorkerSpec::new("w")).await;
    let mut c = client(clients, 1).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let j = json_body(c.get("/v1/models").await).await;
        if !j["data"].as_array().unwrap().is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "worker never registered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let resp = c.send(chat(MODEL, 16, None, BODY)).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let evs = events(resp.into_body()).await;
    assert_eq!(usage_of(&evs).unwrap().completion_tokens, 16);

    terminate(&child);
    assert_eq!(wait_exit(&mut child, Duration::from_secs(20)), 0);
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

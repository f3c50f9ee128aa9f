//! The `cocoon-proxy` binary: config file with the simulated TEE, readiness line, serving a
//! worker and a client, clean exit on SIGTERM, and the documented exit codes.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use http::StatusCode;

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("cocoon-proxy-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Writes a sim platform, registers, root and a config into `dir`; returns the config path.
fn write_config(dir: &Path, extra: &str) -> PathBuf {
    std::fs::write(
        dir.join("sim-platform.json"),
        net().platform.export().to_json().unwrap(),
    )
    .unwrap();
    std::fs::write(
        dir.join("proxy-registers.json"),
        serde_json::to_string(&proxy_regs()).unwrap(),
    )
    .unwrap();
    std::fs::write(dir.join("sim-root.der"), net().platform.root_ca_der()).unwrap();
    let cfg = format!(
        r#"name = "test-proxy"
worker_listen = "127.0.0.1:{}"
client_listen = "127.0.0.1:{}"
admin_listen = "127.0.0.1:{}"
max_prompt_tokens = 4096
{extra}
[accounts]
default_balance_nano = 1000000000000
[tee]
kind = "sim"
platform_file = "sim-platform.json"
registers_file = "proxy-registers.json"
[policy]
roots = ["sim-root.der"]
images = ["{}"]
"#,
        free_port(),
        free_port(),
        free_port(),
        worker_regs().image_hash()
    );
    let path = dir.join("proxy.toml");
    std::fs::write(&path, cfg).unwrap();
    path
}

fn spawn(config: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_cocoon-proxy"))
        .arg("--config")
        .arg(config)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn wait_exit(child: &mut Child, timeout: Duration) -> i32 {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code().unwrap_or(-1);
        }
        assert!(Instant::now() < deadline, "cocoon-proxy did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Parses `cocoon-proxy: ready (workers A, clients B, admin C)`.
fn parse_ready(line: &str) -> [SocketAddr; 3] {
    let inner = line
        .trim()
        .strip_prefix("cocoon-proxy: ready (")
        .and_then(|s| s.strip_suffix(')'))
        .unwrap_or_else(|| panic!("not a readiness line: {line:?}"));
    let addrs: Vec<SocketAddr> = inner
        .split(", ")
        .map(|p| p.split_once(' ').unwrap().1.parse().unwrap())
        .collect();
    [addrs[0], addrs[1], addrs[2]]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_serves_and_exits_cleanly_on_sigterm() {
    let dir = scratch("serve");
    let config = write_config(&dir, "");
    let mut child = spawn(&config);
    let stdout = child.stdout.take().unwrap();
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        line
    })
    .await
    .unwrap();
    let [workers, clients, _admin] = parse_ready(&line);

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

    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    assert_eq!(wait_exit(&mut child, Duration::from_secs(20)), 0);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn exit_codes_config_2_tee_3() {
    let dir = scratch("codes");
    let config = write_config(&dir, "surprise = 1");
    let mut child = spawn(&config);
    assert_eq!(wait_exit(&mut child, Duration::from_secs(20)), 2);

    let mut child = spawn(&dir.join("missing.toml"));
    assert_eq!(wait_exit(&mut child, Duration::from_secs(20)), 2);

    let config = write_config(&dir, "");
    std::fs::remove_file(dir.join("sim-platform.json")).unwrap();
    let mut child = spawn(&config);
    assert_eq!(wait_exit(&mut child, Duration::from_secs(20)), 3);
    let _ = std::fs::remove_dir_all(&dir);
}

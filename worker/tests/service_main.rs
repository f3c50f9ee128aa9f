//! The `cocoon-worker` binary: exit codes, the readiness line and the status port, on the simulated platform
//! against the test proxy.

mod service_support;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use attestation::config::TeeConfig;
use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use ratls::config::PolicyConfig;
use ratls::{Clock, SystemClock};
use service_support::*;
use worker::config::{ModelFile, WorkerConfigFile};

const BIN: &str = env!("CARGO_BIN_EXE_cocoon-worker");

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("cocoon-worker-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The test worker's config (the worker's own config file type), dialing `proxy`.
fn config(proxy: &str, tee: TeeConfig) -> WorkerConfigFile {
    let stub = |name: &str, tokens| ModelFile::Stub {
        name: name.into(),
        max_completion_tokens: None,
        max_context: None,
        tokens,
        tokens_per_second: None,
    };
    WorkerConfigFile::new(
        "bin-worker",
        vec![proxy.into()],
        2,
        tee,
        PolicyConfig {
            roots: vec!["sim-root.der".into()],
            images: vec![proxy_regs().image_hash().to_string()],
            ..PolicyConfig::default()
        },
        vec![stub(MODEL, Some(3)), stub("second", None)],
    )
}

/// Writes the simulated platform, registers and root, and `config`, into `dir`; returns the
/// config path.
fn write_config(dir: &Path, config: &WorkerConfigFile) -> PathBuf {
    write_sim_files(dir, "worker-registers.json", &worker_regs());
    let path = dir.join("worker.toml");
    std::fs::write(&path, toml::to_string(config).unwrap()).unwrap();
    path
}

fn sim_tee() -> TeeConfig {
    TeeConfig::Sim {
        platform_file: "sim-platform.json".into(),
        registers_file: "worker-registers.json".into(),
        runtime_log_file: None,
    }
}

/// Sends SIGKILL to the process on drop unless disarmed (its pid set to `None`).
struct KillOnDrop(Option<u32>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(pid) = self.0 {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
    }
}

fn exit_code(args: &[&str]) -> (i32, String) {
    let out = Command::new(BIN).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_usage_and_config_exit_2() {
    assert_eq!(exit_code(&[]).0, 2);
    assert_eq!(exit_code(&["--config"]).0, 2);
    let (code, err) = exit_code(&["--config", "/nonexistent/worker.toml"]);
    assert_eq!(code, 2);
    assert!(err.contains("/nonexistent/worker.toml"), "{err}");
    let dir = temp_dir("badcfg");
    let path = write_config(&dir, &config("localhost:9101", sim_tee()));
    let (code, err) = exit_code(&["--config", path.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(err.contains("proxies[0]"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn missing_tee_exits_3() {
    let dir = temp_dir("notee");
    let tee = TeeConfig::Tdx {
        report_root: Some(dir.join("no-tsm")),
        measurements_root: Some(dir.join("no-rtmr")),
        pccs: None,
    };
    let mut cfg = config("127.0.0.1:9", tee);
    let path = write_config(&dir, &cfg);
    // On real TDX the worker refuses the simulated root and the stub engine (a config error,
    // exit 2, before the TEE is opened); with Intel's root and a model it reaches the TEE.
    let (code, err) = exit_code(&["--config", path.to_str().unwrap()]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("refused on real TDX"), "{err}");
    cfg.policy.roots = PolicyConfig::default().roots;
    cfg.models = vec![ModelFile::Mistralrs {
        name: MODEL.into(),
        gguf: "none.gguf".into(),
        max_completion_tokens: None,
        max_context: None,
    }];
    let path = write_config(&dir, &cfg);
    let (code, err) = exit_code(&["--config", path.to_str().unwrap()]);
    assert_eq!(code, 3, "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `[gpu] kind = "nvml"` on a machine without NVIDIA's driver (this one): exit 4, naming the
/// library; a simulated GPU section that real TDX would refuse is a config error (exit 2).
#[test]
fn gpu_evidence_unavailable_exits_4() {
    let dir = temp_dir("nogpu");
    let mut cfg = config("127.0.0.1:9", sim_tee());
    cfg.gpu = Some(worker::config::GpuFile::Nvml {
        refs: None,
        min_driver: None,
        ocsp_url: None,
    });
    let path = write_config(&dir, &cfg);
    let (code, err) = exit_code(&["--config", path.to_str().unwrap()]);
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("libnvidia-ml"), "{err}");

    let mut bad = worker::config::GpuFile::sim([1; 32], 1);
    if let worker::config::GpuFile::Sim { count, .. } = &mut bad {
        *count = 9;
    }
    cfg.gpu = Some(bad);
    let path = write_config(&dir, &cfg);
    let (code, err) = exit_code(&["--config", path.to_str().unwrap()]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("gpu.count"), "{err}");

    // Simulated GPUs whose OCSP responder is down: no certificate without OCSP, exit 4 naming
    // the responder.
    let down = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let mut no_ocsp = worker::config::GpuFile::sim([1; 32], 1);
    if let worker::config::GpuFile::Sim { ocsp_url, .. } = &mut no_ocsp {
        *ocsp_url = Some(down.clone());
    }
    cfg.gpu = Some(no_ocsp);
    let path = write_config(&dir, &cfg);
    let (code, err) = exit_code(&["--config", path.to_str().unwrap()]);
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("gpu ocsp") && err.contains(&down), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prints_ready_after_registration_and_exits_0_on_sigterm() {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let mut proxy = TestProxy::start(clock.now(), clock).await;
    let dir = temp_dir("ready");
    let mut cfg = config(&proxy.addr.to_string(), sim_tee());
    let status_addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    cfg.status_listen = Some(status_addr.to_string());
    let path = write_config(&dir, &cfg);
    let mut child = Command::new(BIN)
        .args(["--config", path.to_str().unwrap()])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    // A failed assertion below must not leave the worker running (it would dial forever).
    let guard = KillOnDrop(Some(child.id()));
    let stdout = child.stdout.take().unwrap();
    let (line_tx, line_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if line_tx.send(line).is_err() {
                return;
            }
        }
    });

    let mut conn = tokio::time::timeout(Duration::from_secs(30), proxy.conns.recv())
        .await
        .expect("worker dialed in time")
        .unwrap()
        .expect("attested connection");
    assert!(
        line_rx.try_recv().is_err(),
        "no readiness line before registration"
    );
    // The status port is up: live, not ready before the hello.
    let (status, body) = status_get(status_addr, "/healthz").await;
    assert_eq!((status, body), (200, serde_json::json!({"status": "ok"})));
    let (status, body) = status_get(status_addr, "/readyz").await;
    assert_eq!(
        (status, body),
        (
            503,
            serde_json::json!({"status": "not_ready", "reasons": ["no proxy registration"]})
        )
    );
    let req = Request::post("http://worker/cocoon/v1/hello")
        .body(Full::new(Bytes::from(r#"{"versions":[1],"proxy":"p"}"#)))
        .unwrap();
    assert_eq!(send(&mut conn, req).await.status(), 200);
    let line = tokio::task::spawn_blocking(move || line_rx.recv_timeout(Duration::from_secs(10)))
        .await
        .unwrap()
        .expect("readiness line")
        .unwrap();
    assert_eq!(
        line,
        format!(
            "cocoon-worker: ready (proxy {}, models [{MODEL}, second])",
            proxy.addr
        )
    );
    assert_eq!(
        status_get(status_addr, "/readyz").await,
        (200, serde_json::json!({"status": "ready", "reasons": []}))
    );

    // SIGTERM to the child this test started, by its pid.
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let code = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    let mut guard = guard;
    guard.0 = None; // reaped: its pid may be reused
    assert_eq!(code.code(), Some(0));
    std::fs::remove_dir_all(&dir).unwrap();
}

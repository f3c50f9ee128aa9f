//! The `cocoon-proxy` binary as a process: a scratch directory with the simulated TEE files
//! and a config, spawning, the readiness line, exit codes, and the process's resident memory.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{proxy_regs, worker_regs, write_sim_files};
use attestation::config::TeeConfig;
use ratls::config::PolicyConfig;

pub fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("cocoon-proxy-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The test proxy's config (the proxy's own config file type): free loopback ports, every
/// account funded (development), any worker configuration accepted.
pub fn config() -> proxy::config::ConfigFile {
    let port = || SocketAddr::from(([127, 0, 0, 1], free_port()));
    proxy::config::ConfigFile {
        accounts: proxy::config::AccountsFile {
            default_balance_nano: Some(1_000_000_000_000),
            balances: Default::default(),
        },
        ..proxy::config::ConfigFile::new(
            "test-proxy",
            [port(), port(), port()],
            4096,
            TeeConfig::Sim {
                platform_file: "sim-platform.json".into(),
                registers_file: "proxy-registers.json".into(),
                runtime_log_file: None,
            },
            PolicyConfig {
                roots: vec!["sim-root.der".into()],
                images: vec![worker_regs().image_hash().to_string()],
                allow_any_config: true,
                ..PolicyConfig::default()
            },
        )
    }
}

/// Writes a sim platform, registers, root and `text` (a config) into `dir`; returns the config
/// path.
pub fn write_config_text(dir: &Path, text: &str) -> PathBuf {
    write_sim_files(dir, "proxy-registers.json", &proxy_regs());
    let path = dir.join("proxy.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// [`write_config_text`] with `config` serialized.
pub fn write_config(dir: &Path, config: &proxy::config::ConfigFile) -> PathBuf {
    write_config_text(dir, &toml::to_string(config).unwrap())
}

pub fn spawn(config: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_cocoon-proxy"))
        .arg("--config")
        .arg(config)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

pub fn wait_exit(child: &mut Child, timeout: Duration) -> i32 {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code().unwrap_or(-1);
        }
        if Instant::now() >= deadline {
            // Not left behind holding ports and files.
            let _ = child.kill();
            let _ = child.wait();
            panic!("cocoon-proxy did not exit within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Parses `cocoon-proxy: ready (workers A, clients B, admin C)`.
pub fn parse_ready(line: &str) -> [SocketAddr; 3] {
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

/// Waits for the readiness line of `child`: (workers, clients, admin).
pub async fn read_ready(child: &mut Child) -> [SocketAddr; 3] {
    let stdout = child.stdout.take().unwrap();
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        line
    })
    .await
    .unwrap();
    if line.is_empty() {
        // It exited before its readiness line: say why.
        let _ = child.wait();
        let mut stderr = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut e, &mut stderr);
        }
        panic!("cocoon-proxy exited before its readiness line; stderr:\n{stderr}");
    }
    parse_ready(&line)
}

/// Sends SIGTERM to `child`.
pub fn terminate(child: &Child) {
    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
}

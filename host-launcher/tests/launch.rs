//! `cocoon-host launch --local` with fake services (shell scripts that print the readiness
//! lines): the start sequence, urls.json, signal handling, failure reports, exit codes.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const HOST: &str = env!("CARGO_BIN_EXE_cocoon-host");

fn temp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("cocoon-host-it-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn script(dir: &Path, name: &str, body: &str) {
    let p = dir.join(name);
    std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// Fake services; `worker` is the worker's script body.
fn fake_bins(dir: &Path, worker: &str) -> PathBuf {
    let bins = dir.join("bin");
    std::fs::create_dir_all(&bins).unwrap();
    script(
        &bins,
        "cocoon-proxy",
        "echo starting >&2; echo 'cocoon-proxy: ready (workers a, clients b, admin c)'; exec sleep 60",
    );
    script(&bins, "cocoon-worker", worker);
    script(
        &bins,
        "cocoon-client",
        "if [ \"$1\" = account ]; then echo abcd; exit 0; fi\n\
         [ \"$1\" = serve ] || exit 9\n\
         echo 'cocoon-client: ready http://127.0.0.1:1234/v1'; exec sleep 60",
    );
    bins
}

const GOOD_WORKER: &str =
    "echo 'cocoon-worker: ready (proxy x, models [cocoon-stub])'; exec sleep 60";

fn launch(bins: &Path, dir: &Path, extra: &[&str]) -> Command {
    let mut c = Command::new(HOST);
    c.args([
        "launch", "--local", "--engine", "stub", "--port", "0", "--dir",
    ])
    .arg(dir)
    .arg("--bin-dir")
    .arg(bins)
    .args(extra)
    .stdin(Stdio::null());
    c
}

fn wait_for(path: &Path, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !path.exists() {
        if let Some(s) = child.try_wait().unwrap() {
            panic!("cocoon-host exited early: {s}");
        }
        assert!(Instant::now() < deadline, "{} not written", path.display());
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn alive(pid: u64) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

#[test]
fn starts_in_order_writes_urls_and_stops_on_sigterm() {
    let d = temp("ok");
    let bins = fake_bins(&d, GOOD_WORKER);
    let net = d.join("net");
    let mut host = launch(&bins, &net, &[])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for(&net.join("urls.json"), &mut host);
    let urls: serde_json::Value =
        serde_json::from_slice(&std::fs::read(net.join("urls.json")).unwrap()).unwrap();
    assert_eq!(urls["client"], "http://127.0.0.1:1234/v1");
    assert_eq!(urls["account"], "abcd");
    assert_eq!(urls["model"], "cocoon-stub");
    assert!(urls["jsonstats"].as_str().unwrap().ends_with("/jsonstats"));
    let pids: Vec<u64> = ["proxy", "worker", "client"]
        .iter()
        .map(|r| urls["pids"][r].as_u64().unwrap())
        .collect();
    assert!(pids.iter().all(|p| alive(*p)));
    for f in ["proxy.toml", "worker.toml", "client.toml", "sim-root.der"] {
        assert!(net.join(f).is_file(), "{f}");
    }
    assert!(std::fs::read_to_string(net.join("logs/proxy.log"))
        .unwrap()
        .contains("starting"));

    let st = Command::new("kill")
        .args(["-TERM", &host.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let out: Output = host.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    let order: Vec<usize> = [
        "starting proxy",
        "starting worker",
        "starting client",
        "cocoon-host: ready",
    ]
    .iter()
    .map(|s| stdout.find(s).unwrap_or_else(|| panic!("{s}: {stdout}")))
    .collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "{stdout}");
    assert!(stdout.contains("curl -s http://127.0.0.1:1234/v1/chat/completions"));
    assert!(stdout.contains("stopped"));
    assert!(pids.iter().all(|p| !alive(*p)), "children left running");
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn a_failing_worker_is_reported_with_its_stderr_and_exit_1() {
    let d = temp("fail");
    let bins = fake_bins(&d, "echo 'model load failed: no such file' >&2; exit 4");
    let out = launch(&bins, &d.join("net"), &[]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("worker exited"), "{err}");
    assert!(err.contains("model load failed: no such file"), "{err}");
    assert!(err.contains("logs/worker.log"), "{err}");
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn a_silent_worker_times_out() {
    let d = temp("timeout");
    let bins = fake_bins(&d, "echo loading >&2; exec sleep 60");
    let out = launch(&bins, &d.join("net"), &["--ready-timeout", "1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("worker not ready after 1 s"), "{err}");
    assert!(err.contains("loading"), "{err}");
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn usage_errors_exit_2_and_print_config_writes_nothing() {
    let d = temp("usage");
    let out = Command::new(HOST).args(["launch"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let empty = d.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let out = launch(&empty, &d.join("net"), &[]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cargo build --release -p cocoon-proxy"));

    let bins = fake_bins(&d, GOOD_WORKER);
    let out = launch(&bins, &d.join("net"), &["--print-config"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    for f in [
        "proxy.toml",
        "worker.toml",
        "client.toml",
        "proxy-registers.json",
    ] {
        assert!(text.contains(&format!("# ==> {f} <==")), "{text}");
    }
    assert!(!d.join("net").exists());
    // The images follow the binaries: rebuilding the proxy changes the pin in worker.toml.
    script(&bins, "cocoon-proxy", "echo rebuilt");
    let again = launch(&bins, &d.join("net"), &["--print-config"])
        .output()
        .unwrap();
    let line = |t: &str, p: &str| t.lines().find(|l| l.starts_with(p)).unwrap().to_string();
    let again = String::from_utf8_lossy(&again.stdout).to_string();
    assert_ne!(line(&text, "# proxy image"), line(&again, "# proxy image"));
    assert_eq!(
        line(&text, "# worker image"),
        line(&again, "# worker image")
    );
    std::fs::remove_dir_all(&d).unwrap();
}

/// `--write-config` writes the whole layout (platform, root, registers, configs) and starts
/// nothing; each config loads with its service's own loader, and they name each other's ports.
#[test]
fn write_config_writes_the_files_and_starts_nothing() {
    let d = temp("write-config");
    // Services that would fail if started: nothing may run them.
    let bins = d.join("bin");
    std::fs::create_dir_all(&bins).unwrap();
    for name in ["cocoon-proxy", "cocoon-worker", "cocoon-client"] {
        script(
            &bins,
            name,
            &format!("echo {name} >> {}; exit 7", d.join("ran").display()),
        );
    }
    let net = d.join("net");
    let out = launch(&bins, &net, &["--write-config"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(!d.join("ran").exists(), "a service was started");
    for f in [
        "sim-platform.json",
        "sim-root.der",
        "proxy-registers.json",
        "worker-registers.json",
        "proxy.toml",
        "worker.toml",
        "client.toml",
    ] {
        assert!(net.join(f).is_file(), "{f}");
    }
    assert!(!net.join("urls.json").exists());
    use ratls::service_config::open;
    let proxy = open::<proxy::config::ConfigFile>(&net.join("proxy.toml")).unwrap();
    let worker = open::<worker::config::WorkerConfigFile>(&net.join("worker.toml")).unwrap();
    let client = open::<client::config::ClientConfigFile>(&net.join("client.toml")).unwrap();
    assert_eq!(
        worker.config.proxies,
        vec![proxy.config.proxy.worker_listen]
    );
    assert_eq!(
        client.config.client.proxy,
        proxy.config.proxy.client_listen.to_string()
    );
    let out = launch(&bins, &net, &["--write-config", "--print-config"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "the two exclude each other");
    std::fs::remove_dir_all(&d).unwrap();
}

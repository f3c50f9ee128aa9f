//! `cocoon-host launch CONFIG.toml` end to end with a fake QEMU (a shell script that prints
//! what the guest console would and checks the files it was given): readiness, exit codes,
//! signal forwarding, timeouts, the simulated platform files, `--print`, image checks.

mod common;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{executable, setup, temp, write, HOST};
use measurements::TdRegisters;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A sim config whose QEMU is `fake-qemu` with `body`, forwarding one free port.
fn sim_setup(d: &Path, body: &str) -> (PathBuf, u16) {
    let port = free_port();
    executable(&d.join("fake-qemu"), body);
    let config = setup(
        d,
        "sim",
        &format!(
            "[qemu]\nbinary = \"./fake-qemu\"\n[[network.forwards]]\nname = \"api\"\nhost = {port}\nguest = 8080\n"
        ),
    );
    (config, port)
}

fn launch(config: &Path, extra: &[&str]) -> Command {
    let mut c = Command::new(HOST);
    c.arg("launch").arg(config).args(extra).stdin(Stdio::null());
    c
}

fn run(config: &Path, extra: &[&str]) -> Output {
    launch(config, extra).output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

const READY: &str = r#"echo 'COCOON-INIT {"stage":"ready","service":"worker"}'"#;

#[test]
fn ready_then_clean_power_off() {
    let d = temp("ok");
    let state = d.join("state");
    let body = format!(
        "echo \"$@\" > {args}\n\
         for f in {state}/sim-platform.json {state}/sim-root.der {state}/instance-0/sim-registers.json {state}/instance-0/config.tar; do\n\
           [ -f \"$f\" ] || {{ echo \"missing $f\" >&2; exit 9; }}\n\
         done\n\
         echo 'SeaBIOS (fake)'\n\
         echo 'COCOON-INIT {{\"stage\":\"config\",\"sha256\":\"x\"}}'\n\
         {READY}\n\
         i=0; while [ ! -f {state}/instance-0/instance.json ] && [ $i -lt 100 ]; do sleep 0.05; i=$((i+1)); done\n\
         cp {state}/instance-0/instance.json {copy}\n\
         echo 'COCOON-INIT {{\"stage\":\"exit\",\"code\":0,\"reason\":\"poweroff\"}}'\n\
         echo 'reboot: Power down' >&2\n",
        args = d.join("args").display(),
        state = state.display(),
        copy = d.join("instance-copy.json").display(),
    );
    let (config, port) = sim_setup(&d, &body);
    let out = run(&config, &[]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("cocoon-host: ready: w1 instance 0 (tee sim)"),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("api          127.0.0.1:{port} -> guest port 8080")),
        "{stdout}"
    );
    assert!(stdout.contains("powered off cleanly"), "{stdout}");
    assert!(stderr.contains("[guest] SeaBIOS (fake)"), "{stderr}");
    assert!(stderr.contains("[qemu] reboot: Power down"), "{stderr}");

    // The config disk digest printed is the one of the disk written.
    let disk = std::fs::read(state.join("instance-0/config.tar")).unwrap();
    let sha = host::vm::image::sha256_reader(disk.as_slice()).unwrap().0;
    assert!(
        stdout.contains(&format!("config disk  sha256 {}", hex::encode(sha))),
        "{stdout}"
    );
    // The registers handed to the simulated platform are the manifest's.
    let regs: TdRegisters = serde_json::from_slice(
        &std::fs::read(state.join("instance-0/sim-registers.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(regs, common::registers());
    // fw_cfg names and files, serials.
    let args = std::fs::read_to_string(d.join("args")).unwrap();
    for needle in [
        format!(
            "name=opt/cocoon/sim-platform,file={}/sim-platform.json",
            state.display()
        ),
        format!(
            "name=opt/cocoon/sim-registers,file={}/instance-0/sim-registers.json",
            state.display()
        ),
        "serial=cocoon-config".to_string(),
        "serial=cocoon-model".to_string(),
        "serial=cocoon-verity".to_string(),
        format!("hostfwd=tcp:127.0.0.1:{port}-:8080"),
    ] {
        assert!(args.contains(&needle), "{needle}\n{args}");
    }
    // instance.json while ready; removed after.
    let rec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.join("instance-copy.json")).unwrap()).unwrap();
    assert_eq!(rec["forwards"][0]["host"], format!("127.0.0.1:{port}"));
    assert_eq!(rec["ready"]["service"], "worker");
    assert_eq!(
        rec["image_hash"],
        common::registers().image_hash().to_string()
    );
    assert!(!state.join("instance-0/instance.json").exists());
    let console = std::fs::read_to_string(state.join("instance-0/console.log")).unwrap();
    assert!(
        console.contains("SeaBIOS (fake)") && console.contains("[qemu] reboot"),
        "{console}"
    );
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn the_simulated_platform_is_kept_across_launches() {
    let d = temp("keep");
    let (config, _) = sim_setup(&d, r#"echo 'COCOON-INIT {"stage":"exit","code":0}'"#);
    assert_eq!(run(&config, &[]).status.code(), Some(0));
    let first = std::fs::read(d.join("state/sim-platform.json")).unwrap();
    let out = run(&config, &[]);
    assert_eq!(out.status.code(), Some(0));
    assert!(
        text(&out.stdout).contains("(kept)"),
        "{}",
        text(&out.stdout)
    );
    assert_eq!(
        std::fs::read(d.join("state/sim-platform.json")).unwrap(),
        first
    );
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn guest_failure_is_exit_1_with_the_reason() {
    let d = temp("fail");
    let (config, _) = sim_setup(
        &d,
        r#"echo 'COCOON-INIT {"stage":"verity"}'
echo 'COCOON-INIT {"stage":"exit","code":3,"reason":"verity: root hash mismatch"}'"#,
    );
    let out = run(&config, &[]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("the guest reported failure: exit code 3, verity: root hash mismatch"),
        "{stderr}"
    );
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn qemu_death_without_exit_line_is_exit_1_with_its_stderr() {
    let d = temp("died");
    let (config, _) = sim_setup(
        &d,
        "echo 'COCOON-INIT {\"stage\":\"modules\"}'\necho 'COCOON-INIT {broken'\necho 'Kernel panic - not syncing' \n\
         echo 'qemu-system-x86_64: some device error' >&2\nexit 1",
    );
    let out = run(&config, &[]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("without a COCOON-INIT exit line (last stage: modules)"),
        "{stderr}"
    );
    assert!(
        stderr.contains("    qemu-system-x86_64: some device error"),
        "{stderr}"
    );
    assert!(
        stderr.contains("ignoring a malformed status line"),
        "{stderr}"
    );
    // A panic with -no-reboot ends QEMU with status 0: still a failure.
    let d2 = temp("panic");
    let (config, _) = sim_setup(&d2, "echo 'Kernel panic - not syncing'");
    assert_eq!(run(&config, &[]).status.code(), Some(1));
    std::fs::remove_dir_all(&d).unwrap();
    std::fs::remove_dir_all(&d2).unwrap();
}

fn wait_for_stdout_line(child: &mut Child, needle: &str) -> String {
    use std::io::BufRead;
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = String::new();
    while Instant::now() < deadline {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(100)) {
            seen.push_str(&line);
            seen.push('\n');
            if line.contains(needle) {
                return seen;
            }
        }
        if let Some(s) = child.try_wait().unwrap() {
            panic!("exited early ({s}): {seen}");
        }
    }
    panic!("no {needle:?} line: {seen}");
}

#[test]
fn sigterm_is_forwarded_and_the_stop_is_clean() {
    let d = temp("term");
    let (config, _) = sim_setup(
        &d,
        &format!(
            "trap 'echo qemu got TERM >&2; exit 0' TERM\n{READY}\nwhile true; do sleep 0.1; done"
        ),
    );
    let mut child = launch(&config, &[])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_stdout_line(&mut child, "cocoon-host: ready");
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("[qemu] qemu got TERM"), "{stderr}");
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn no_ready_line_in_time_is_exit_1() {
    let d = temp("timeout");
    let (config, _) = sim_setup(
        &d,
        "trap 'exit 0' TERM\necho 'COCOON-INIT {\"stage\":\"network\"}'\nwhile true; do sleep 0.1; done",
    );
    let started = Instant::now();
    let out = run(&config, &["--ready-timeout", "1"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("not ready after 1 s (last stage: network"),
        "{stderr}"
    );
    assert!(started.elapsed() < Duration::from_secs(20));
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn print_shows_the_command_and_writes_nothing() {
    let d = temp("print");
    let (config, port) = sim_setup(&d, "exit 0");
    let out = run(&config, &["--print", "--instance", "2"]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(!d.join("state").exists());
    let disk = host::vm::configdisk::from_files(
        &[
            ("init.toml".to_string(), d.join("guest/init.toml")),
            ("service.toml".to_string(), d.join("guest/service.toml")),
        ]
        .into_iter()
        .collect(),
    )
    .unwrap();
    assert!(
        stdout.contains(&format!("# config disk  sha256 {}", disk.sha256_hex())),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("{} \\\n", d.join("fake-qemu").display())),
        "{stdout}"
    );
    assert!(stdout.contains("    -accel tcg \\\n"), "{stdout}");
    assert!(
        stdout.contains(&format!("hostfwd=tcp:127.0.0.1:{}-:8080", port + 20)),
        "{stdout}"
    );
    assert!(stdout.contains("/state/instance-2/config.tar"), "{stdout}");
    // --tee tdx on the same config: KVM, TDVF, vsock (instance 2: CID 102).
    let out = run(&config, &["--print", "--tee", "tdx", "--instance", "2"]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(stdout.contains("    -accel kvm \\\n"), "{stdout}");
    assert!(
        stdout.contains("-device vhost-vsock-pci,guest-cid=102"),
        "{stdout}"
    );
    assert!(stdout.contains("# vsock cid    102"), "{stdout}");
    assert!(!d.join("state").exists());
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn a_listed_root_disk_is_checked_and_attached() {
    let d = temp("root-disk");
    let (config, _) = sim_setup(&d, "exit 0");
    let root = b"erofs + hash tree".to_vec();
    write(&d.join("image/root.img"), &root);
    let manifest_path = d.join("image/manifest.json");
    let mut m: image::manifest::ImageManifest =
        serde_json::from_str(&std::fs::read_to_string(&manifest_path).unwrap()).unwrap();
    m.artifacts
        .insert("root.img".into(), common::artifact(&root));
    write(&manifest_path, serde_json::to_string_pretty(&m).unwrap());
    let out = run(&config, &["--print"]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        stdout.contains(&format!(
            "-drive if=none,id=root,file={},format=raw,readonly=on",
            d.join("image/root.img").display()
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains("-device virtio-blk-pci,drive=root,serial=cocoon-root"),
        "{stdout}"
    );
    // Another disk than the listed one, or none, is refused before QEMU starts.
    write(&d.join("image/root.img"), b"erofs + hash trex");
    let out = run(&config, &["--print"]);
    assert_eq!(out.status.code(), Some(4));
    assert!(
        text(&out.stderr).contains("image/root.img: sha256 "),
        "{}",
        text(&out.stderr)
    );
    std::fs::remove_file(d.join("image/root.img")).unwrap();
    let out = run(&config, &["--print"]);
    assert_eq!(out.status.code(), Some(4));
    assert!(text(&out.stderr).contains("image/root.img"));
    // An image without one attaches none.
    common::image(&d.join("image"), "worker");
    let out = run(&config, &["--print"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(!text(&out.stdout).contains("cocoon-root"));
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn image_mismatches_exit_4_naming_the_file() {
    let d = temp("image");
    let (config, _) = sim_setup(&d, "exit 0");
    write(&d.join("image/vmlinuz"), b"fake bzImagX");
    let out = run(&config, &["--print"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert!(stderr.contains("image/vmlinuz: sha256 "), "{stderr}");
    write(&d.join("image/vmlinuz"), b"fake bzImage!");
    let stderr = text(&run(&config, &["--print"]).stderr);
    assert!(
        stderr.contains("image/vmlinuz: 13 bytes, the manifest says 12"),
        "{stderr}"
    );

    common::image(&d.join("image"), "proxy");
    let out = run(&config, &["--print"]);
    assert_eq!(out.status.code(), Some(4));
    assert!(
        text(&out.stderr).contains("role: the config says worker"),
        "{}",
        text(&out.stderr)
    );
    std::fs::remove_file(d.join("image/manifest.json")).unwrap();
    let out = run(&config, &["--print"]);
    assert_eq!(out.status.code(), Some(4));
    assert!(text(&out.stderr).contains("manifest.json"));
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn config_and_host_errors_exit_2() {
    let d = temp("usage");
    let (config, port) = sim_setup(&d, "exit 0");

    std::fs::remove_file(d.join("guest/service.toml")).unwrap();
    let out = run(&config, &["--print"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("guest.files.\"service.toml\""),
        "{}",
        text(&out.stderr)
    );
    write(&d.join("guest/service.toml"), "x");

    std::fs::remove_file(d.join("model.verity")).unwrap();
    let out = run(&config, &["--print"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("disks.model_verity: "),
        "{}",
        text(&out.stderr)
    );
    write(&d.join("model.verity"), "x");

    // The host port is taken.
    let _held = TcpListener::bind(("127.0.0.1", port)).unwrap();
    let out = run(&config, &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("network.forwards[0] (api): host port"),
        "{}",
        text(&out.stderr)
    );
    drop(_held);

    // No such QEMU.
    let text_cfg = std::fs::read_to_string(&config).unwrap();
    write(
        &config,
        text_cfg.replace("binary = \"./fake-qemu\"", "binary = \"./no-such-qemu\""),
    );
    let out = run(&config, &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("qemu.binary: cannot start"),
        "{}",
        text(&out.stderr)
    );

    // Neither a config nor --local.
    let out = Command::new(HOST).arg("launch").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn gpus_must_be_on_vfio_before_qemu_starts() {
    let d = temp("gpu");
    executable(
        &d.join("fake-qemu"),
        &format!("echo started > {}; exit 0", d.join("started").display()),
    );
    let config = setup(
        &d,
        "tdx",
        "gpus = [\"0000:17:00.0\"]\n[qemu]\nbinary = \"./fake-qemu\"\n",
    );
    let sys = d.join("sys-root");
    let dev = sys.join("sys/bus/pci/devices/0000:17:00.0");
    write(&dev.join("vendor"), "0x10de\n");
    write(&dev.join("device"), "0x2331\n");
    write(&dev.join("class"), "0x030200\n");
    std::fs::create_dir_all(sys.join("sys/bus/pci/drivers/nvidia")).unwrap();
    std::os::unix::fs::symlink("../../../bus/pci/drivers/nvidia", dev.join("driver")).unwrap();
    let out = run(&config, &["--sysfs-root", sys.to_str().unwrap()]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("gpus: 0000:17:00.0 is bound to nvidia, not vfio-pci"),
        "{stderr}"
    );
    assert!(stderr.contains("cocoon-host gpu bind"), "{stderr}");
    assert!(!d.join("started").exists());
    std::fs::remove_dir_all(&d).unwrap();
}

/// A fake QEMU in Python that serves QMP like QEMU does and plays cocoon-init's answer to
/// Ctrl-Alt-Del: the exit line with code 0, then power off.
const PY_QEMU: &str = r#"import json, os, socket, sys
args = sys.argv[1:]
qmp = args[args.index("-qmp") + 1]
path = qmp[len("unix:"):].split(",")[0]
if os.path.exists(path):
    os.unlink(path)
srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
srv.bind(path)
srv.listen(1)
print('COCOON-INIT {"stage":"ready","role":"worker"}', flush=True)
conn, _ = srv.accept()
f = conn.makefile("rw")
f.write(json.dumps({"QMP": {"version": {}, "capabilities": []}}) + "\n"); f.flush()
keys = None
for line in f:
    cmd = json.loads(line)
    if cmd["execute"] == "send-key":
        keys = [k["data"] for k in cmd["arguments"]["keys"]]
        f.write(json.dumps({"timestamp": {"seconds": 1}, "event": "SOMETHING"}) + "\n")
    f.write(json.dumps({"return": {}}) + "\n"); f.flush()
    if keys:
        break
print("COCOON-INIT " + json.dumps({"stage": "exit", "code": 0, "reason": "stopped", "keys": "+".join(keys)}), flush=True)
print("reboot: Power down", file=sys.stderr)
"#;

#[test]
fn a_stop_request_presses_ctrl_alt_delete_through_qmp() {
    if Command::new("python3").arg("--version").output().is_err() {
        eprintln!("python3 not found: skipping the QMP test");
        return;
    }
    let d = temp("qmp");
    write(&d.join("fake-qemu.py"), PY_QEMU);
    let (config, _) = sim_setup(
        &d,
        &format!("exec python3 {} \"$@\"", d.join("fake-qemu.py").display()),
    );
    let mut child = launch(&config, &[])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_stdout_line(&mut child, "cocoon-host: ready");
    Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("cocoon-host: sent Ctrl-Alt-Del"),
        "{stderr}"
    );
    assert!(stderr.contains("\"keys\": \"ctrl+alt+delete\""), "{stderr}");
    assert!(!stderr.contains("SIGTERM to QEMU"), "{stderr}");
    std::fs::remove_dir_all(&d).unwrap();
}

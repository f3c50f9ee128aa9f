//! `launch CONFIG.toml`: the QEMU command line as data (TDX with and without GPUs, instances,
//! the simulation with fw_cfg and disks) and config errors that name their field.

use std::path::{Path, PathBuf};

use host::vm::config::{ConfigError, Context, Tee, VmConfig};
use host::vm::qemu::{self, Boot};

const BASE: &str = r#"
name = "worker-a"
role = "worker"
image = "images/worker"
tee = "tdx"
cpus = 4
memory = "8G"
state_dir = "/var/lib/cocoon/worker-a"
"#;

const TDX: &str = r#"
[tdx]
firmware = "/usr/share/ovmf/OVMF.inteltdx.fd"
"#;

const REST: &str = r#"
[guest.files]
"init.toml" = "etc/init.toml"
"service.toml" = "etc/service.toml"

[disks]
model = "/models/smollm2.img"
model_verity = "/models/smollm2.verity"

[[network.forwards]]
name = "api"
host = 18080
guest = 8080

[[network.forwards]]
name = "metrics"
host = 18081
guest = 9100
"#;

fn ctx(tee: Option<Tee>) -> Context {
    Context {
        config_dir: PathBuf::from("/srv/cocoon"),
        tee_override: tee,
        state_root: PathBuf::from("/root/.cache/cocoon/vm"),
    }
}

fn config(text: &str, tee: Option<Tee>) -> VmConfig {
    VmConfig::from_toml(text, &ctx(tee)).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

fn boot() -> Boot {
    Boot {
        kernel: "/srv/cocoon/images/worker/vmlinuz".into(),
        initrd: "/srv/cocoon/images/worker/initramfs.cpio.gz".into(),
        cmdline: "console=ttyS0 panic=-1 cocoon.role=worker".into(),
        root_disk: None,
    }
}

fn argv(c: &VmConfig, instance: u32) -> Vec<String> {
    qemu::command(c, &c.instance(instance).unwrap(), &boot()).args
}

fn common_head() -> Vec<&'static str> {
    vec![
        "-name",
        "cocoon-worker-a-0",
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-no-reboot",
    ]
}

fn boot_and_console() -> Vec<&'static str> {
    vec![
        "-kernel",
        "/srv/cocoon/images/worker/vmlinuz",
        "-initrd",
        "/srv/cocoon/images/worker/initramfs.cpio.gz",
        "-append",
        "console=ttyS0 panic=-1 cocoon.role=worker",
        "-chardev",
        "stdio,id=console,signal=off",
        "-serial",
        "chardev:console",
    ]
}

fn qmp(instance: u32) -> Vec<String> {
    vec![
        "-qmp".into(),
        format!("unix:/var/lib/cocoon/worker-a/instance-{instance}/qmp.sock,server=on,wait=off"),
    ]
}

fn disks(instance: u32) -> Vec<String> {
    vec![
        "-drive".into(),
        format!("if=none,id=config,file=/var/lib/cocoon/worker-a/instance-{instance}/config.tar,format=raw,readonly=on"),
        "-device".into(),
        "virtio-blk-pci,drive=config,serial=cocoon-config".into(),
        "-drive".into(),
        "if=none,id=model,file=/models/smollm2.img,format=raw,readonly=on".into(),
        "-device".into(),
        "virtio-blk-pci,drive=model,serial=cocoon-model".into(),
        "-drive".into(),
        "if=none,id=verity,file=/models/smollm2.verity,format=raw,readonly=on".into(),
        "-device".into(),
        "virtio-blk-pci,drive=verity,serial=cocoon-verity".into(),
    ]
}

fn strings(v: Vec<&str>) -> Vec<String> {
    v.into_iter().map(String::from).collect()
}

#[test]
fn tdx_without_gpus() {
    let c = config(&format!("{BASE}{TDX}{REST}"), None);
    let mut expected = strings(common_head());
    expected.extend(strings(vec![
        "-accel",
        "kvm",
        "-cpu",
        "host",
        "-machine",
        "q35,kernel-irqchip=split,confidential-guest-support=tdx0,hpet=off,memory-backend=ram0",
        "-object",
        r#"{"qom-type":"tdx-guest","id":"tdx0","sept-ve-disable":true,"quote-generation-socket":{"type":"vsock","cid":"2","port":"4050"}}"#,
        "-object",
        "memory-backend-ram,id=ram0,size=8192M",
        "-bios",
        "/usr/share/ovmf/OVMF.inteltdx.fd",
        "-smp",
        "4",
        "-m",
        "8192M",
    ]));
    expected.extend(strings(boot_and_console()));
    expected.extend(qmp(0));
    expected.extend(disks(0));
    expected.extend(strings(vec![
        "-netdev",
        "user,id=n0,hostfwd=tcp:127.0.0.1:18080-:8080,hostfwd=tcp:127.0.0.1:18081-:9100",
        "-device",
        "virtio-net-pci,netdev=n0,romfile=",
        "-device",
        "vhost-vsock-pci,guest-cid=100",
    ]));
    assert_eq!(argv(&c, 0), expected);
    let cmd = qemu::command(&c, &c.instance(0).unwrap(), &boot());
    assert_eq!(cmd.program, PathBuf::from("qemu-system-x86_64"));
    assert!(cmd.env.is_empty());
}

#[test]
fn tdx_with_gpus_ids_unix_qgs_and_unpacked_qemu() {
    let text = format!(
        "{BASE}gpus = [\"0000:17:00.0\", \"0000:65:00.0\"]\n\
         [qemu]\nbinary = \"/opt/qemu/bin/qemu-system-x86_64\"\nbios_dir = \"/opt/qemu/share/qemu\"\n\
         ld_library_path = \"/opt/qemu/lib\"\n\
         [tdx]\nfirmware = \"/usr/share/ovmf/OVMF.inteltdx.fd\"\n\
         quote_generation_socket = \"unix:/var/run/tdx-qgs/qgs.socket\"\n\
         mrconfigid = \"{}\"\nmrowner = \"{}\"\n{REST}",
        hex::encode((0u8..48).collect::<Vec<_>>()),
        "00".repeat(48)
    );
    let c = config(&text, None);
    let cmd = qemu::command(&c, &c.instance(0).unwrap(), &boot());
    assert_eq!(
        cmd.program,
        PathBuf::from("/opt/qemu/bin/qemu-system-x86_64")
    );
    assert_eq!(
        cmd.env,
        vec![("LD_LIBRARY_PATH".to_string(), "/opt/qemu/lib".to_string())]
    );
    let a = &cmd.args;
    assert_eq!(&a[..2], &["-L", "/opt/qemu/share/qemu"]);
    let obj = a.iter().position(|x| x == "-object").unwrap();
    assert_eq!(
        a[obj + 1],
        r#"{"qom-type":"tdx-guest","id":"tdx0","sept-ve-disable":true,"quote-generation-socket":{"type":"unix","path":"/var/run/tdx-qgs/qgs.socket"},"mrconfigid":"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8gISIjJCUmJygpKissLS4v","mrowner":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}"#
    );
    let vsock = a
        .iter()
        .position(|x| x == "vhost-vsock-pci,guest-cid=100")
        .unwrap();
    assert_eq!(
        &a[vsock + 1..],
        &strings(vec![
            "-object",
            "iommufd,id=iommufd0",
            "-device",
            "pcie-root-port,id=gpu-port0,bus=pcie.0,chassis=1",
            "-device",
            "vfio-pci,host=0000:17:00.0,bus=gpu-port0,iommufd=iommufd0",
            "-device",
            "pcie-root-port,id=gpu-port1,bus=pcie.0,chassis=2",
            "-device",
            "vfio-pci,host=0000:65:00.0,bus=gpu-port1,iommufd=iommufd0",
            "-fw_cfg",
            "name=opt/ovmf/X-PciMmio64Mb,string=262144",
        ])[..]
    );
    // The rendered command is copy-pasteable: env, program, one option per line, JSON quoted.
    let text = qemu::render(&cmd);
    assert!(text.starts_with("LD_LIBRARY_PATH=/opt/qemu/lib /opt/qemu/bin/qemu-system-x86_64 \\\n    -L /opt/qemu/share/qemu \\\n"), "{text}");
    assert!(
        text.contains("\n    -object '{\"qom-type\":\"tdx-guest\""),
        "{text}"
    );
    assert!(
        text.contains("\n    -append 'console=ttyS0 panic=-1 cocoon.role=worker' \\\n"),
        "{text}"
    );
    assert!(
        text.ends_with("-fw_cfg name=opt/ovmf/X-PciMmio64Mb,string=262144\n"),
        "{text}"
    );
}

#[test]
fn instances_offset_ports_cids_and_state() {
    let c = config(
        &format!("{BASE}[network]\nport_stride = 100\nvsock_cid_base = 40\n{TDX}{REST}"),
        None,
    );
    let i0 = c.instance(0).unwrap();
    let i3 = c.instance(3).unwrap();
    assert_eq!((i0.guest_cid, i3.guest_cid), (40, 43));
    assert_eq!(
        i3.forwards
            .iter()
            .map(|f| (f.host, f.guest))
            .collect::<Vec<_>>(),
        vec![(18380, 8080), (18381, 9100)]
    );
    assert_eq!(i3.dir, Path::new("/var/lib/cocoon/worker-a/instance-3"));
    let a0 = argv(&c, 0);
    let a3 = argv(&c, 3);
    let diff: Vec<(&String, &String)> = a0.iter().zip(&a3).filter(|(x, y)| x != y).collect();
    assert_eq!(
        diff,
        vec![
            (&"cocoon-worker-a-0".to_string(), &"cocoon-worker-a-3".to_string()),
            (
                &"unix:/var/lib/cocoon/worker-a/instance-0/qmp.sock,server=on,wait=off".to_string(),
                &"unix:/var/lib/cocoon/worker-a/instance-3/qmp.sock,server=on,wait=off".to_string()
            ),
            (
                &"if=none,id=config,file=/var/lib/cocoon/worker-a/instance-0/config.tar,format=raw,readonly=on".to_string(),
                &"if=none,id=config,file=/var/lib/cocoon/worker-a/instance-3/config.tar,format=raw,readonly=on".to_string()
            ),
            (
                &"user,id=n0,hostfwd=tcp:127.0.0.1:18080-:8080,hostfwd=tcp:127.0.0.1:18081-:9100".to_string(),
                &"user,id=n0,hostfwd=tcp:127.0.0.1:18380-:8080,hostfwd=tcp:127.0.0.1:18381-:9100".to_string()
            ),
            (
                &"vhost-vsock-pci,guest-cid=40".to_string(),
                &"vhost-vsock-pci,guest-cid=43".to_string()
            ),
        ]
    );
    // Port 65535 is the limit.
    let e = c.instance(500).unwrap_err();
    assert_eq!(e.field(), Some("--instance"));
}

#[test]
fn sim_mode_with_fw_cfg_and_disks() {
    // --tee sim overrides the file's tee; [tdx] is then unused (its ids still apply).
    let c = config(
        &format!("{BASE}[network]\nhost_address = \"0.0.0.0\"\n{TDX}{REST}"),
        Some(Tee::Sim),
    );
    assert_eq!(c.tee, Tee::Sim);
    assert!(c.tdx.is_none());
    let mut expected = strings(common_head());
    expected.extend(strings(vec![
        "-accel", "tcg", "-cpu", "max", "-machine", "q35", "-smp", "4", "-m", "8192M",
    ]));
    expected.extend(strings(boot_and_console()));
    expected.extend(qmp(0));
    expected.extend(strings(vec![
        "-fw_cfg",
        "name=opt/cocoon/sim-platform,file=/var/lib/cocoon/worker-a/sim-platform.json",
        "-fw_cfg",
        "name=opt/cocoon/sim-registers,file=/var/lib/cocoon/worker-a/instance-0/sim-registers.json",
    ]));
    expected.extend(disks(0));
    expected.extend(strings(vec![
        "-netdev",
        "user,id=n0,hostfwd=tcp:0.0.0.0:18080-:8080,hostfwd=tcp:0.0.0.0:18081-:9100",
        "-device",
        "virtio-net-pci,netdev=n0,romfile=",
    ]));
    assert_eq!(argv(&c, 0), expected);
}

#[test]
fn sim_without_model_and_paths_with_commas() {
    let text = "name = \"p\"\nrole = \"proxy\"\nimage = \"img\"\ntee = \"sim\"\ncpus = 1\nmemory = \"512M\"\n\
                state_dir = \"/tmp/a,b\"\n[guest.files]\n\"init.toml\" = \"init.toml\"\n";
    let c = config(text, None);
    let a = argv(&c, 0);
    assert!(
        a.contains(
            &"if=none,id=config,file=/tmp/a,,b/instance-0/config.tar,format=raw,readonly=on"
                .to_string()
        ),
        "{a:?}"
    );
    assert!(
        a.contains(&"name=opt/cocoon/sim-platform,file=/tmp/a,,b/sim-platform.json".to_string())
    );
    assert!(!a
        .iter()
        .any(|x| x.contains("cocoon-model") || x.contains("vsock") || x.contains("hostfwd")));
    assert_eq!(c.state_dir, Path::new("/tmp/a,b"));
    // Without state_dir the state lives under the cache.
    let c = config(&text.replace("state_dir = \"/tmp/a,b\"\n", ""), None);
    assert_eq!(c.state_dir, Path::new("/root/.cache/cocoon/vm/p"));
    assert_eq!(c.image, Path::new("/srv/cocoon/img"));
    assert_eq!(
        c.guest_files["init.toml"],
        Path::new("/srv/cocoon/init.toml")
    );
}

fn error(text: &str, tee: Option<Tee>) -> ConfigError {
    match VmConfig::from_toml(text, &ctx(tee)) {
        Ok(_) => panic!("accepted:\n{text}"),
        Err(e) => e,
    }
}

#[test]
fn config_errors_name_the_field() {
    let good = format!("{BASE}{TDX}{REST}");
    let cases: Vec<(String, Option<Tee>, &str)> = vec![
        (good.replace("name = \"worker-a\"\n", ""), None, "name"),
        (good.replace("\"worker-a\"", "\"Worker A\""), None, "name"),
        (
            good.replace("role = \"worker\"", "role = \"client\""),
            None,
            "role",
        ),
        (
            good.replace("image = \"images/worker\"\n", ""),
            None,
            "image",
        ),
        (good.replace("tee = \"tdx\"", "tee = \"sev\""), None, "tee"),
        (good.replace("tee = \"tdx\"\n", ""), None, "tee"),
        (good.replace("cpus = 4", "cpus = 0"), None, "cpus"),
        (
            good.replace("memory = \"8G\"", "memory = \"8 gigs\""),
            None,
            "memory",
        ),
        (
            good.replace("memory = \"8G\"", "memory = \"64M\""),
            None,
            "memory",
        ),
        (good.replace(TDX, ""), None, "tdx.firmware"),
        (
            good.replace("[tdx]\n", "[tdx]\nquote_generation_socket = \"tcp:1\"\n"),
            None,
            "tdx.quote_generation_socket",
        ),
        (
            good.replace("[tdx]\n", "[tdx]\nmrconfigid = \"abcd\"\n"),
            Some(Tee::Sim),
            "tdx.mrconfigid",
        ),
        (
            good.replace("[tdx]\n", "[tdx]\nmrownerconfig = \"zz\"\n"),
            None,
            "tdx.mrownerconfig",
        ),
        (
            good.replace("\"service.toml\" = ", "\"../service.toml\" = "),
            None,
            "guest.files.\"../service.toml\"",
        ),
        (
            good.replace(
                "\"init.toml\" = \"etc/init.toml\"\n\"service.toml\" = \"etc/service.toml\"\n",
                "",
            ),
            None,
            "guest.files",
        ),
        (
            good.replace("model_verity = \"/models/smollm2.verity\"\n", ""),
            None,
            "disks.model_verity",
        ),
        (
            good.replace("model = \"/models/smollm2.img\"\n", ""),
            None,
            "disks.model",
        ),
        (
            good.replace("host = 18081", "host = 18080"),
            None,
            "network.forwards[1].host",
        ),
        (
            good.replace("guest = 9100", "guest = 8080"),
            None,
            "network.forwards[1].guest",
        ),
        (
            good.replace("name = \"metrics\"", "name = \"api\""),
            None,
            "network.forwards[1].name",
        ),
        (
            good.replace("host = 18081", "host = 19000"),
            None,
            "network.port_stride",
        ),
        (
            format!("{BASE}[network]\nvsock_cid_base = 2\n{TDX}{REST}"),
            None,
            "network.vsock_cid_base",
        ),
        (
            format!("{BASE}[network]\nhost_address = \"localhost\"\n{TDX}{REST}"),
            None,
            "network.host_address",
        ),
        (
            format!("{BASE}gpus = [\"01:00.0\"]\n{TDX}{REST}"),
            None,
            "gpus[0]",
        ),
        (
            format!("{BASE}gpus = [\"0000:01:00.0\", \"0000:01:00.0\"]\n{TDX}{REST}"),
            None,
            "gpus[1]",
        ),
        (
            format!("{BASE}gpus = [\"0000:01:00.0\"]\n{TDX}{REST}"),
            Some(Tee::Sim),
            "gpus",
        ),
    ];
    for (text, tee, field) in cases {
        let e = error(&text, tee);
        assert_eq!(e.field(), Some(field), "{e}");
        assert!(e.to_string().starts_with(field), "{e}");
    }
}

#[test]
fn unknown_fields_and_bad_toml_are_rejected_with_their_location() {
    let good = format!("{BASE}{TDX}{REST}");
    for (text, needle) in [
        (good.replace("cpus = 4", "cpus = 4\nvcpus = 4"), "vcpus"),
        (good.replace("[tdx]\n", "[tdx]\ndebug = true\n"), "debug"),
        (
            good.replace("[disks]\n", "[disks]\nscratch = \"/x\"\n"),
            "scratch",
        ),
        (
            good.replace("guest = 9100", "guest = 9100\nproto = \"udp\""),
            "proto",
        ),
        (good.replace("cpus = 4", "cpus = \"four\""), "cpus"),
        (good.replace("host = 18080", "host = 70000"), "host"),
        ("name = ".to_string(), "line 1"),
    ] {
        let e = error(&text, None);
        assert!(matches!(e, ConfigError::Toml { .. }), "{e}");
        assert!(e.to_string().contains(needle), "{needle}: {e}");
    }
}

#[test]
fn a_root_disk_is_attached_read_only_after_the_config_disk() {
    let c = config(
        &format!("{BASE}[network]\nhost_address = \"0.0.0.0\"\n{TDX}{REST}"),
        Some(Tee::Sim),
    );
    let with_root = Boot {
        root_disk: Some("/srv/cocoon/images/worker,gpu/root.img".into()),
        ..boot()
    };
    let a = qemu::command(&c, &c.instance(0).unwrap(), &with_root).args;
    let config_at = a
        .iter()
        .position(|x| x == "virtio-blk-pci,drive=config,serial=cocoon-config")
        .unwrap();
    assert_eq!(
        a[config_at + 1..config_at + 5],
        strings(vec![
            "-drive",
            "if=none,id=root,file=/srv/cocoon/images/worker,,gpu/root.img,format=raw,readonly=on",
            "-device",
            "virtio-blk-pci,drive=root,serial=cocoon-root",
        ])[..]
    );
    // Without one, nothing else changes.
    let without = argv(&c, 0);
    let mut stripped = a.clone();
    stripped.drain(config_at + 1..config_at + 5);
    assert_eq!(stripped, without);
}

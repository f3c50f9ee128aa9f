//! Fixtures shared by the VM launch tests: temporary directories, a fake guest image with a
//! matching `manifest.json`, config files.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use image::manifest::{Artifact, ImageManifest, KernelPin, IMAGE_MANIFEST_FORMAT};
use measurements::TdRegisters;
use sha2::{Digest, Sha256};

pub const HOST: &str = env!("CARGO_BIN_EXE_cocoon-host");
pub const CMDLINE: &str = "console=ttyS0 panic=-1 cocoon.role=worker";

/// A fresh directory under the temp dir.
pub fn temp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("cocoon-host-vm-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

pub fn write(path: &Path, bytes: impl AsRef<[u8]>) {
    if let Some(p) = path.parent() {
        std::fs::create_dir_all(p).unwrap();
    }
    std::fs::write(path, bytes).unwrap();
}

pub fn executable(path: &Path, body: &str) {
    write(path, format!("#!/bin/sh\n{body}\n"));
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

pub fn artifact(bytes: &[u8]) -> Artifact {
    Artifact {
        sha256: hex::encode(Sha256::digest(bytes)),
        size: bytes.len() as u64,
    }
}

/// Registers with recognizable values.
pub fn registers() -> TdRegisters {
    let mut r = TdRegisters::ZERO;
    r.mrtd = [0x11; 48];
    r.rtmr[0] = [0x20; 48];
    r.rtmr[1] = [0x21; 48];
    r.rtmr[2] = [0x22; 48];
    r.td_attributes = (1u64 << 28).to_le_bytes();
    r.xfam = [0xe7, 0x02, 0x06, 0, 0, 0, 0, 0];
    r
}

/// Writes a fake image (kernel, initramfs, cmdline, manifest.json) for `role` into `dir`.
pub fn image(dir: &Path, role: &str) -> ImageManifest {
    let kernel = b"fake bzImage".to_vec();
    let initrd = b"fake initramfs".to_vec();
    let cmdline = format!("{CMDLINE}\n");
    write(&dir.join("vmlinuz"), &kernel);
    write(&dir.join("initramfs.cpio.gz"), &initrd);
    write(&dir.join("cmdline"), &cmdline);
    let registers = registers();
    let m = ImageManifest {
        format: IMAGE_MANIFEST_FORMAT.to_string(),
        role: role.to_string(),
        artifacts: BTreeMap::from([
            ("vmlinuz".to_string(), artifact(&kernel)),
            ("initramfs.cpio.gz".to_string(), artifact(&initrd)),
            ("cmdline".to_string(), artifact(cmdline.as_bytes())),
        ]),
        kernel: KernelPin {
            package: "linux-image-6.12.95+deb12-cloud-amd64".into(),
            version: "6.12.95-1~bpo12+1".into(),
            deb_sha256: "00".repeat(32),
            packages: Vec::new(),
        },
        cmdline: CMDLINE.to_string(),
        platform: "tdx".into(),
        memory: 1 << 30,
        registers,
        image_hash: registers.image_hash(),
        register_sources: BTreeMap::new(),
        source_commit: None,
    };
    write(
        &dir.join("manifest.json"),
        serde_json::to_string_pretty(&m).unwrap(),
    );
    m
}

/// A directory with an image, guest files, model disks, TDVF and a config `vm.toml`
/// (`tee` and extra TOML appended); returns the config path.
pub fn setup(dir: &Path, tee: &str, extra: &str) -> PathBuf {
    image(&dir.join("image"), "worker");
    write(&dir.join("guest/init.toml"), "role = \"worker\"\n");
    write(&dir.join("guest/service.toml"), "name = \"w\"\n");
    write(&dir.join("model.img"), vec![0u8; 4096]);
    write(&dir.join("model.verity"), vec![1u8; 4096]);
    write(&dir.join("fw/OVMF.inteltdx.fd"), b"tdvf");
    let config = dir.join("vm.toml");
    write(
        &config,
        format!(
            "name = \"w1\"\nrole = \"worker\"\nimage = \"image\"\ntee = \"{tee}\"\ncpus = 2\nmemory = \"1G\"\n\
             state_dir = \"state\"\n{extra}\n\
             [tdx]\nfirmware = \"fw/OVMF.inteltdx.fd\"\n\n\
             [guest.files]\n\"init.toml\" = \"guest/init.toml\"\n\"service.toml\" = \"guest/service.toml\"\n\n\
             [disks]\nmodel = \"model.img\"\nmodel_verity = \"model.verity\"\n"
        ),
    );
    config
}

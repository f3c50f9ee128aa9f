//! The pinned guest kernel: fetch the Debian package, check its SHA-256, unpack it.
//!
//! The pin (`image-builder/kernel.toml`) is compiled into cocoon-image, so a given cocoon-image
//! binary always builds from the same kernel. Fetching uses `apt-get download` (bookworm-
//! backports must be an apt source) unless the caller hands in the .deb; unpacking uses
//! `dpkg-deb -x`. Nothing is installed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};
use serde::Deserialize;
use sha2::{Digest, Sha256};

/// The reviewed pin file.
pub const KERNEL_TOML: &str = include_str!("../kernel.toml");

/// Parsed `kernel.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KernelPin {
    pub package: String,
    pub version: String,
    pub deb_sha256: String,
    pub release: String,
    /// Role (`common`, `worker`, `proxy`) → module paths relative to /lib/modules/<release>.
    pub modules: BTreeMap<String, Vec<String>>,
}

impl KernelPin {
    pub fn pinned() -> anyhow::Result<Self> {
        toml::from_str(KERNEL_TOML).context("image-builder/kernel.toml")
    }

    /// The .deb file name apt-get download writes (`:` in versions becomes `%3a`).
    pub fn deb_file_name(&self) -> String {
        format!(
            "{}_{}_amd64.deb",
            self.package,
            self.version.replace(':', "%3a")
        )
    }

    /// Modules for `role`, in load order: the common list, then the role's.
    pub fn modules_for(&self, role: &str) -> Vec<String> {
        let mut out = self.modules.get("common").cloned().unwrap_or_default();
        out.extend(self.modules.get(role).cloned().unwrap_or_default());
        out
    }
}

/// An unpacked kernel package.
#[derive(Debug, Clone)]
pub struct UnpackedKernel {
    pub vmlinuz: PathBuf,
    /// `…/lib/modules/<release>`.
    pub modules_dir: PathBuf,
}

fn sha256_file(path: &Path) -> anyhow::Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("read {}", path.display()))?;
    Ok(hex::encode(Sha256::digest(&bytes)))
}

/// Returns the checked .deb: `deb` if given, else the cached or freshly downloaded one.
pub fn fetch(pin: &KernelPin, cache: &Path, deb: Option<&Path>) -> anyhow::Result<PathBuf> {
    let path = match deb {
        Some(p) => p.to_path_buf(),
        None => {
            std::fs::create_dir_all(cache).with_context(|| format!("mkdir {}", cache.display()))?;
            let path = cache.join(pin.deb_file_name());
            if !path.exists() {
                eprintln!(
                    "cocoon-image: downloading {}={} (apt-get download) …",
                    pin.package, pin.version
                );
                let status = Command::new("apt-get")
                    .arg("download")
                    .arg(format!("{}={}", pin.package, pin.version))
                    .current_dir(cache)
                    .status()
                    .context("run apt-get download")?;
                if !status.success() {
                    bail!(
                        "apt-get download {}={} failed ({status}); is bookworm-backports in apt's sources?",
                        pin.package,
                        pin.version
                    );
                }
            }
            path
        }
    };
    let got = sha256_file(&path)?;
    if got != pin.deb_sha256 {
        bail!(
            "{}: sha256 {got} does not match the pinned {}",
            path.display(),
            pin.deb_sha256
        );
    }
    Ok(path)
}

/// Unpacks `deb` (already checked) under `cache/<deb sha256>/` once.
pub fn unpack(pin: &KernelPin, deb: &Path, cache: &Path) -> anyhow::Result<UnpackedKernel> {
    let dir = cache.join(&pin.deb_sha256);
    let done = dir.join(".unpacked");
    if !done.exists() {
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).with_context(|| format!("mkdir {}", dir.display()))?;
        eprintln!("cocoon-image: unpacking {} …", deb.display());
        let status = Command::new("dpkg-deb")
            .arg("-x")
            .arg(deb)
            .arg(&dir)
            .status()
            .context("run dpkg-deb -x")?;
        if !status.success() {
            bail!("dpkg-deb -x {} failed ({status})", deb.display());
        }
        std::fs::write(&done, b"").context("mark unpacked")?;
    }
    let out = UnpackedKernel {
        vmlinuz: dir.join("boot").join(format!("vmlinuz-{}", pin.release)),
        modules_dir: dir.join("lib/modules").join(&pin.release),
    };
    if !out.vmlinuz.is_file() || !out.modules_dir.is_dir() {
        bail!(
            "{}: no vmlinuz-{} or modules directory in the package",
            dir.display(),
            pin.release
        );
    }
    Ok(out)
}

/// The module name of a path (`…/dm-verity.ko.xz` → `dm_verity`; the kernel treats `-` as `_`).
pub fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = file.split(".ko").next().unwrap_or(file);
    stem.replace('-', "_")
}

/// The `depends=` list of a module's `.modinfo` (decompressed bytes).
pub fn module_depends(module: &[u8]) -> Vec<String> {
    module
        .split(|&b| b == 0)
        .filter_map(|field| field.strip_prefix(b"depends="))
        .flat_map(|deps| {
            String::from_utf8_lossy(deps)
                .split(',')
                .filter(|d| !d.is_empty())
                .map(|d| d.replace('-', "_"))
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Decompresses a `.ko.xz` with `xz -dc` (only to read its dependencies).
pub fn decompress_module(path: &Path) -> anyhow::Result<Vec<u8>> {
    let out = Command::new("xz")
        .arg("-dc")
        .arg(path)
        .output()
        .context("run xz -dc (package xz-utils)")?;
    if !out.status.success() {
        bail!("xz -dc {} failed", path.display());
    }
    Ok(out.stdout)
}

/// Checks that every module's dependencies are loaded before it (or built in).
pub fn check_order(
    order: &[String],
    depends: impl Fn(&str) -> anyhow::Result<Vec<String>>,
) -> anyhow::Result<()> {
    let mut seen = std::collections::BTreeSet::new();
    for path in order {
        for dep in depends(path)? {
            if !seen.contains(&dep) {
                bail!(
                    "module {path} depends on {dep}, which is not listed before it in kernel.toml"
                );
            }
        }
        seen.insert(module_name(path));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_depends() {
        assert_eq!(
            module_name("kernel/drivers/md/dm-verity.ko.xz"),
            "dm_verity"
        );
        let info = b"\0license=GPL\0depends=dm-mod,dm-bufio,reed_solomon\0vermagic=x\0";
        assert_eq!(module_depends(info), ["dm_mod", "dm_bufio", "reed_solomon"]);
        assert!(module_depends(b"depends=\0").is_empty());
    }

    #[test]
    fn order_check() {
        let deps = |p: &str| -> anyhow::Result<Vec<String>> {
            Ok(match module_name(p).as_str() {
                "b" => vec!["a".into()],
                _ => vec![],
            })
        };
        check_order(&["x/a.ko".into(), "x/b.ko".into()], deps).unwrap();
        let err = check_order(&["x/b.ko".into(), "x/a.ko".into()], deps).unwrap_err();
        assert!(err.to_string().contains("depends on a"), "{err}");
    }

    /// The kernel pin is a reviewed file (house style rule 5): changing it fails this test until
    /// the new digest is written here by whoever reviewed the new package.
    #[test]
    fn pin_file_is_the_reviewed_one() {
        let got = hex::encode(Sha256::digest(KERNEL_TOML.as_bytes()));
        assert_eq!(
            got, "16e6555ad8e680b6c486256c5b7bdb57fc92990d70ed04b0bbe20a61f4d662d1",
            "image-builder/kernel.toml changed: review it, then update this digest"
        );
        let pin = KernelPin::pinned().unwrap();
        assert_eq!(
            pin.deb_sha256,
            "69c92f43b23821de79576fa4d7c86e2924ae2c1b247a47cc5ed9339e220fbcb7"
        );
    }

    #[test]
    fn pin_is_parsed() {
        let pin = KernelPin::pinned().unwrap();
        assert!(pin.modules_for("worker").len() > pin.modules_for("proxy").len());
        assert!(pin.deb_file_name().ends_with("_amd64.deb"));
    }
}

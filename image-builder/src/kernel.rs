//! The pinned guest kernel: which Debian packages, what their config must say, which modules
//! go into the initramfs and in which order.
//!
//! The pin (`image-builder/kernel.toml`) is compiled into cocoon-image, so a given cocoon-image
//! binary always builds from the same kernel. A kernel is several packages (Debian splits 7.x
//! kernels into `linux-binary-*`, `linux-modules-*` and `linux-base-*`), each pinned by name,
//! version, archive pool directory and SHA-256. [`fetch`] gets and checks the .deb files
//! without apt sources (or takes them from the caller) and unpacks them into one tree; nothing
//! is installed. The SHA-256 pins are the trust anchor: no apt signature is involved.
//!
//! Parsing the pin and checking module metadata and the kernel config are pure functions on
//! strings and bytes; the I/O (downloads, `dpkg-deb`, decompression) lives in [`fetch`] and
//! [`decompress_module`].

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};
use serde::Deserialize;

pub mod fetch;

/// The reviewed pin file.
pub const KERNEL_TOML: &str = include_str!("../kernel.toml");

/// Where the packages put a release's files, relative to the unpacked tree (Debian 7.x
/// layout: vmlinuz, config and the modules all under `usr/lib/modules/<release>/`).
pub fn release_dir(release: &str) -> PathBuf {
    Path::new("usr/lib/modules").join(release)
}

/// What is wrong with a pin file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PinError {
    #[error("kernel.toml: {0}")]
    Toml(String),
    #[error("kernel.toml: no [[package]]")]
    NoPackages,
    #[error("kernel.toml: package {name:?} is listed twice")]
    DuplicatePackage { name: String },
    #[error("kernel.toml: package {name:?}: {field} {value:?} is not {expected}")]
    BadField {
        name: String,
        field: &'static str,
        value: String,
        expected: &'static str,
    },
    #[error("kernel.toml: release {0:?} is not a plain kernel release name")]
    BadRelease(String),
    #[error("kernel.toml: module path {0:?} is not a relative path to a .ko file")]
    BadModulePath(String),
    #[error("kernel.toml: module {0:?} is listed twice for one role")]
    DuplicateModule(String),
}

/// One pinned .deb, as written in `kernel.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PinnedPackage {
    /// Binary package name, e.g. `linux-binary-7.3.4+deb13-cloud-amd64`.
    pub name: String,
    /// Debian version, e.g. `7.3.4-1~bpo13+1`.
    pub version: String,
    /// Archive directory of the file, e.g. `pool/main/l/linux` (the `Filename:` field of the
    /// Packages index without the file name).
    pub pool: String,
    /// SHA-256 of the .deb, lowercase hex: the trust anchor.
    pub sha256: String,
    /// SHA-1 of the .deb, lowercase hex: only the name of the file on snapshot.debian.org
    /// (`/file/<sha1>`); the download is still checked against `sha256`.
    pub sha1: String,
}

impl PinnedPackage {
    /// The file name in the archive pool: `<name>_<version without epoch>_amd64.deb`.
    pub fn file_name(&self) -> String {
        let version = self
            .version
            .split_once(':')
            .map_or(self.version.as_str(), |(_, v)| v);
        format!("{}_{version}_amd64.deb", self.name)
    }

    /// Where the archive serves the file under `archive` (e.g. `https://deb.debian.org/debian`).
    pub fn pool_url(&self, archive: &str) -> String {
        format!(
            "{}/{}/{}",
            archive.trim_end_matches('/'),
            self.pool,
            self.file_name()
        )
    }

    /// Where snapshot.debian.org serves the file by content (`https://snapshot.debian.org`).
    pub fn snapshot_url(&self, snapshot: &str) -> String {
        format!("{}/file/{}", snapshot.trim_end_matches('/'), self.sha1)
    }

    pub fn validate(&self) -> Result<(), PinError> {
        let bad = |field: &'static str, value: &str, expected: &'static str| PinError::BadField {
            name: self.name.clone(),
            field,
            value: value.to_string(),
            expected,
        };
        let plain = |s: &str| {
            !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "+-.~:".contains(c))
        };
        if !plain(&self.name) || self.name.contains(':') {
            return Err(bad("name", &self.name, "a Debian package name"));
        }
        if !plain(&self.version) {
            return Err(bad("version", &self.version, "a Debian version"));
        }
        let pool_ok = self.pool.starts_with("pool/")
            && self.pool.split('/').all(|part| {
                !part.is_empty()
                    && part != ".."
                    && part != "."
                    && plain(part)
                    && !part.contains(':')
            });
        if !pool_ok {
            return Err(bad("pool", &self.pool, "an archive pool directory"));
        }
        if !is_lower_hex(&self.sha256, 64) {
            return Err(bad("sha256", &self.sha256, "64 lowercase hex digits"));
        }
        if !is_lower_hex(&self.sha1, 40) {
            return Err(bad("sha1", &self.sha1, "40 lowercase hex digits"));
        }
        Ok(())
    }
}

fn is_lower_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// `[config]` of the pin.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigPin {
    /// Lines the kernel config must contain, e.g. `CONFIG_TSM_MEASUREMENTS=y`.
    pub required: Vec<String>,
}

/// Parsed and validated `kernel.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KernelPin {
    /// Kernel release (`uname -r`), e.g. `7.3.4+deb13-cloud-amd64`.
    pub release: String,
    /// The packages, unpacked into one tree. The first holds vmlinuz.
    #[serde(rename = "package", default)]
    pub packages: Vec<PinnedPackage>,
    pub config: ConfigPin,
    /// Role (`common`, `worker`, `proxy`) → module paths relative to the release directory.
    pub modules: BTreeMap<String, Vec<String>>,
}

impl KernelPin {
    /// The pin compiled into this binary.
    pub fn pinned() -> Result<Self, PinError> {
        Self::parse(KERNEL_TOML)
    }

    /// Parses and validates a pin file's text.
    pub fn parse(text: &str) -> Result<Self, PinError> {
        let pin: Self = toml::from_str(text).map_err(|e| PinError::Toml(e.to_string()))?;
        pin.validate()?;
        Ok(pin)
    }

    fn validate(&self) -> Result<(), PinError> {
        let release_ok = !self.release.is_empty()
            && self
                .release
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "+-._".contains(c))
            && !self.release.starts_with('.');
        if !release_ok {
            return Err(PinError::BadRelease(self.release.clone()));
        }
        if self.packages.is_empty() {
            return Err(PinError::NoPackages);
        }
        let mut names = BTreeSet::new();
        for p in &self.packages {
            p.validate()?;
            if !names.insert(p.name.as_str()) {
                return Err(PinError::DuplicatePackage {
                    name: p.name.clone(),
                });
            }
        }
        for list in self.modules.values() {
            let mut seen = BTreeSet::new();
            for path in list {
                let ok = !path.starts_with('/')
                    && path
                        .split('/')
                        .all(|p| !p.is_empty() && p != "." && p != "..")
                    && path.rsplit('/').next().is_some_and(|f| f.contains(".ko"));
                if !ok {
                    return Err(PinError::BadModulePath(path.clone()));
                }
                if !seen.insert(path.as_str()) {
                    return Err(PinError::DuplicateModule(path.clone()));
                }
            }
        }
        Ok(())
    }

    /// The package holding vmlinuz (the first one), which `manifest.json` names.
    pub fn boot_package(&self) -> &PinnedPackage {
        &self.packages[0]
    }

    /// Modules for `role`, in load order: the common list, then the role's.
    pub fn modules_for(&self, role: &str) -> Vec<String> {
        let mut out = self.modules.get("common").cloned().unwrap_or_default();
        out.extend(self.modules.get(role).cloned().unwrap_or_default());
        out
    }

    /// Modules for `role` in an image with a root disk: [`modules_for`], then those of the
    /// `root_disk` list it does not have yet (what mounting the root disk takes).
    ///
    /// [`modules_for`]: KernelPin::modules_for
    pub fn modules_for_root_disk(&self, role: &str) -> Vec<String> {
        let mut out = self.modules_for(role);
        for m in self.modules.get("root_disk").into_iter().flatten() {
            if !out.contains(m) {
                out.push(m.clone());
            }
        }
        out
    }
}

/// A required config line the kernel config does not have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigMismatch {
    /// `CONFIG_…=value` as required.
    pub required: String,
    /// The option's line in the config (`CONFIG_X=m`, `# CONFIG_X is not set`), if any.
    pub found: Option<String>,
}

impl std::fmt::Display for ConfigMismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.found {
            Some(found) => write!(f, "expected {}, got {found:?}", self.required),
            None => write!(f, "expected {}, the option is absent", self.required),
        }
    }
}

/// The `required` lines that `config` (a kernel `.config`) does not contain.
pub fn check_config(config: &str, required: &[String]) -> Vec<ConfigMismatch> {
    let lines: BTreeSet<&str> = config.lines().map(str::trim_end).collect();
    required
        .iter()
        .filter(|want| !lines.contains(want.as_str()))
        .map(|want| {
            let option = want.split('=').next().unwrap_or(want);
            let found = config
                .lines()
                .map(str::trim_end)
                .find(|l| {
                    l.strip_prefix(option)
                        .is_some_and(|rest| rest.starts_with('='))
                        || *l == format!("# {option} is not set")
                })
                .map(str::to_string);
            ConfigMismatch {
                required: want.clone(),
                found,
            }
        })
        .collect()
}

/// The module name of a path (`…/dm-verity.ko.xz` → `dm_verity`; the kernel treats `-` as `_`).
pub fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = file.split(".ko").next().unwrap_or(file);
    stem.replace('-', "_")
}

/// The values of `key` in a module's `.modinfo` (decompressed module bytes).
fn modinfo<'a>(module: &'a [u8], key: &str) -> impl Iterator<Item = String> + 'a {
    let prefix = format!("{key}=").into_bytes();
    module
        .split(|&b| b == 0)
        .filter_map(move |field| field.strip_prefix(prefix.as_slice()))
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

/// The `depends=` list of a module's `.modinfo` (decompressed bytes).
pub fn module_depends(module: &[u8]) -> Vec<String> {
    modinfo(module, "depends")
        .flat_map(|deps| {
            deps.split(',')
                .filter(|d| !d.is_empty())
                .map(|d| d.replace('-', "_"))
                .collect::<Vec<_>>()
        })
        .collect()
}

/// The kernel release a module was built for: the first word of its `vermagic=`.
pub fn module_release(module: &[u8]) -> Option<String> {
    modinfo(module, "vermagic")
        .next()
        .and_then(|v| v.split_whitespace().next().map(str::to_string))
}

/// Decompresses a module file according to its suffix (`.ko.xz` with `xz -dc`, `.ko.zst`
/// with `zstd -dc`, `.ko.gz` with `gzip -dc`, `.ko` as is), only to read its `.modinfo`; the
/// image carries the file unchanged and the kernel decompresses it when cocoon-init loads it.
pub fn decompress_module(path: &Path) -> anyhow::Result<Vec<u8>> {
    let name = path.to_string_lossy();
    let (tool, package) = if name.ends_with(".ko.xz") {
        ("xz", "xz-utils")
    } else if name.ends_with(".ko.zst") {
        ("zstd", "zstd")
    } else if name.ends_with(".ko.gz") {
        ("gzip", "gzip")
    } else {
        return std::fs::read(path).with_context(|| format!("read {}", path.display()));
    };
    let out = Command::new(tool)
        .arg("-dc")
        .arg(path)
        .output()
        .with_context(|| format!("run {tool} -dc {} (package {package})", path.display()))?;
    if !out.status.success() {
        bail!("{tool} -dc {} failed ({})", path.display(), out.status);
    }
    Ok(out.stdout)
}

/// Checks that every module's dependencies are loaded before it (or built in).
pub fn check_order(
    order: &[String],
    depends: impl Fn(&str) -> anyhow::Result<Vec<String>>,
) -> anyhow::Result<()> {
    let mut seen = BTreeSet::new();
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
    use sha2::{Digest, Sha256};

    #[test]
    fn names_and_modinfo() {
        assert_eq!(
            module_name("kernel/drivers/md/dm-verity.ko.xz"),
            "dm_verity"
        );
        assert_eq!(
            module_name("kernel/drivers/virt/coco/guest/tsm_report.ko.xz"),
            "tsm_report"
        );
        let info = b"\0license=GPL\0depends=dm-mod,dm-bufio,reed_solomon\0vermagic=7.3.4+deb13-cloud-amd64 SMP preempt mod_unload \0";
        assert_eq!(module_depends(info), ["dm_mod", "dm_bufio", "reed_solomon"]);
        assert_eq!(
            module_release(info).as_deref(),
            Some("7.3.4+deb13-cloud-amd64")
        );
        assert!(module_depends(b"depends=\0").is_empty());
        assert_eq!(module_release(b"\0license=GPL\0"), None);
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

    #[test]
    fn config_check_names_what_differs() {
        let config = "CONFIG_A=y\nCONFIG_B=m\n# CONFIG_C is not set\nCONFIG_AB=y\n";
        let req = |s: &[&str]| s.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(check_config(config, &req(&["CONFIG_A=y", "CONFIG_B=m"])).is_empty());
        let got = check_config(config, &req(&["CONFIG_B=y", "CONFIG_C=y", "CONFIG_D=y"]));
        assert_eq!(got.len(), 3);
        assert_eq!(got[0].found.as_deref(), Some("CONFIG_B=m"));
        assert_eq!(got[1].found.as_deref(), Some("# CONFIG_C is not set"));
        assert_eq!(got[2].found, None);
        assert_eq!(
            got[0].to_string(),
            "expected CONFIG_B=y, got \"CONFIG_B=m\""
        );
        // A prefix of another option's name is not that option.
        let got = check_config("CONFIG_AB=y\n", &req(&["CONFIG_A=y"]));
        assert_eq!(got[0].found, None);
    }

    /// The kernel pin is a reviewed file (house style rule 5): changing it fails this test until
    /// the new digest is written here by whoever reviewed the new packages.
    #[test]
    fn pin_file_is_the_reviewed_one() {
        let got = hex::encode(Sha256::digest(KERNEL_TOML.as_bytes()));
        assert_eq!(
            got, "84bfed7488eb001f1de997bc857a79ce16d814db1e3d0406bc6f0656545cd015",
            "image-builder/kernel.toml changed: review it, then update this digest"
        );
        let pin = KernelPin::pinned().unwrap();
        let shas: Vec<_> = pin.packages.iter().map(|p| p.sha256.as_str()).collect();
        assert_eq!(
            shas,
            [
                "c4fbc8e404958693b28825474c20742d70594d65ca58aea7be6a279c81eb6fa0",
                "359f04c363b7d3c5f9ce999ccb7351e00cc8eec0a30d6bc1cda37734987fc43d",
                "e08baa43706ba6e8daff58029b039f46beecfb3b3750c6fa0d6d5ca508a46a43",
            ]
        );
    }

    #[test]
    fn pin_is_parsed() {
        let pin = KernelPin::pinned().unwrap();
        assert!(pin.modules_for("worker").len() > pin.modules_for("proxy").len());
        // A root disk adds dm-verity and EROFS, once: the worker has dm-verity already.
        let worker = pin.modules_for_root_disk("worker");
        assert_eq!(worker[..worker.len() - 1], pin.modules_for("worker")[..]);
        assert_eq!(worker.last().unwrap(), "kernel/fs/erofs/erofs.ko.xz");
        let proxy = pin.modules_for_root_disk("proxy");
        assert!(proxy.contains(&"kernel/drivers/md/dm-verity.ko.xz".to_string()));
        assert!(proxy.ends_with(&["kernel/fs/erofs/erofs.ko.xz".to_string()]));
        assert!(pin.boot_package().name.starts_with("linux-binary-"));
        assert!(pin
            .config
            .required
            .contains(&"CONFIG_TSM_MEASUREMENTS=y".to_string()));
        let p = pin.boot_package();
        assert_eq!(
            p.pool_url("https://deb.debian.org/debian/"),
            "https://deb.debian.org/debian/pool/main/l/linux-signed-amd64/\
             linux-binary-7.3.4+deb13-cloud-amd64_7.3.4-1~bpo13+1_amd64.deb"
        );
        assert_eq!(
            p.snapshot_url("https://snapshot.debian.org"),
            format!("https://snapshot.debian.org/file/{}", p.sha1)
        );
    }

    fn pin_with(package: &str) -> String {
        format!(
            "release = \"7.3.4+deb13-cloud-amd64\"\n{package}\n[config]\nrequired = []\n\
             [modules]\ncommon = [\"kernel/fs/configfs/configfs.ko.xz\"]\n"
        )
    }

    const GOOD: &str = "[[package]]\nname = \"linux-base-7\"\nversion = \"1:7.3-1~bpo13+1\"\n\
        pool = \"pool/main/l/linux\"\nsha256 = \"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\"\n\
        sha1 = \"bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb\"\n";

    #[test]
    fn pin_validation() {
        let pin = KernelPin::parse(&pin_with(GOOD)).unwrap();
        // The epoch is not part of pool file names.
        assert_eq!(
            pin.packages[0].file_name(),
            "linux-base-7_7.3-1~bpo13+1_amd64.deb"
        );
        let cases: [(String, &str); 8] = [
            (pin_with(""), "no [[package]]"),
            (pin_with(&format!("{GOOD}{GOOD}")), "listed twice"),
            (
                pin_with(&GOOD.replace("pool/main/l/linux", "pool/../etc")),
                "pool",
            ),
            (
                pin_with(&GOOD.replace("pool/main/l/linux", "dists/x")),
                "pool",
            ),
            (
                pin_with(&GOOD.replace("sha256 = \"a", "sha256 = \"A")),
                "sha256",
            ),
            (pin_with(&GOOD.replace("sha1 = \"b", "sha1 = \"")), "sha1"),
            (
                pin_with(GOOD).replace("configfs.ko.xz\"", "../configfs.ko.xz\""),
                "module path",
            ),
            (pin_with(&format!("{GOOD}surprise = 1\n")), "unknown field"),
        ];
        for (text, want) in cases {
            let err = KernelPin::parse(&text).unwrap_err().to_string();
            assert!(err.contains(want), "{want:?} not in {err:?}");
        }
        let err = KernelPin::parse(&pin_with(GOOD).replace("7.3.4+deb13", "7/../x"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("release"), "{err}");
    }
}

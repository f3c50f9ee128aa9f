//! Getting the pinned kernel packages onto disk and unpacking them into one tree.
//!
//! No apt state is read or written: each .deb is taken from the caller (files or directories
//! handed in), from the cache, or downloaded by URL, first from the Debian archive pool, then
//! from snapshot.debian.org (backports pools drop superseded versions; the snapshot keeps every
//! file by its SHA-1). Whatever the source, a file is used only if its SHA-256 is the pinned
//! one. Downloads go through the [`Downloader`] trait ([`Curl`] in production) so the source
//! order and the checks are tested without a network.

use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};
use sha2::{Digest, Sha256};

use super::{release_dir, KernelPin, PinnedPackage};

/// The Debian archive the pool URLs point into.
pub const DEBIAN_ARCHIVE: &str = "https://deb.debian.org/debian";
/// snapshot.debian.org, which serves every file it has seen at `/file/<sha1>`.
pub const DEBIAN_SNAPSHOT: &str = "https://snapshot.debian.org";

/// Fetches one URL into a file.
pub trait Downloader {
    /// Writes the body of `url` to `dest` (created or replaced). Any failure, including an
    /// HTTP error status, is an error.
    fn download(&self, url: &str, dest: &Path) -> anyhow::Result<()>;
}

/// [`Downloader`] running `curl` (package curl).
#[derive(Clone, Copy, Debug, Default)]
pub struct Curl;

impl Downloader for Curl {
    fn download(&self, url: &str, dest: &Path) -> anyhow::Result<()> {
        let out = Command::new("curl")
            .args(["--fail", "--silent", "--show-error", "--location"])
            .args(["--retry", "2", "--connect-timeout", "30"])
            // A transfer stalled below 1 KiB/s for a minute is abandoned (then the next source).
            .args(["--speed-limit", "1024", "--speed-time", "60"])
            .arg("--output")
            .arg(dest)
            .arg(url)
            .output();
        let out = match out {
            Ok(out) => out,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                bail!("curl not found: install it (apt-get install curl)")
            }
            Err(e) => return Err(e).context("run curl"),
        };
        if !out.status.success() {
            bail!(
                "curl: {} ({})",
                String::from_utf8_lossy(&out.stderr).trim(),
                out.status
            );
        }
        Ok(())
    }
}

/// Where downloads come from, in order of preference.
#[derive(Clone, Debug)]
pub struct Sources {
    /// Debian archive root (pool URLs).
    pub archive: String,
    /// snapshot.debian.org root (`/file/<sha1>` URLs).
    pub snapshot: String,
}

impl Default for Sources {
    fn default() -> Self {
        Self {
            archive: DEBIAN_ARCHIVE.into(),
            snapshot: DEBIAN_SNAPSHOT.into(),
        }
    }
}

impl Sources {
    /// The URLs tried for `package`, in order.
    pub fn urls(&self, package: &PinnedPackage) -> [String; 2] {
        [
            package.pool_url(&self.archive),
            package.snapshot_url(&self.snapshot),
        ]
    }
}

/// How a package file was obtained.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    /// Handed in by the caller.
    HandedIn,
    /// Already in the cache.
    Cache,
    /// Downloaded from this URL into the cache.
    Downloaded(String),
}

/// A checked package file.
#[derive(Clone, Debug)]
pub struct Fetched {
    /// The pinned package's name.
    pub name: String,
    pub path: PathBuf,
    pub origin: Origin,
}

/// SHA-256 of a file, lowercase hex.
pub fn sha256_file(path: &Path) -> anyhow::Result<String> {
    let mut file = std::fs::File::open(path).with_context(|| format!("open {}", path.display()))?;
    let mut hasher = Sha256::new();
    io::copy(&mut file, &mut hasher).with_context(|| format!("read {}", path.display()))?;
    Ok(hex::encode(hasher.finalize()))
}

/// Matches the handed-in paths to pinned packages: a directory offers the pinned file names
/// it holds; a file must be one of the pinned packages (matched by SHA-256, whatever its name).
fn handed_in(
    packages: &[PinnedPackage],
    paths: &[PathBuf],
) -> anyhow::Result<Vec<Option<PathBuf>>> {
    let mut found: Vec<Option<PathBuf>> = vec![None; packages.len()];
    for path in paths {
        if path.is_dir() {
            for (slot, p) in found.iter_mut().zip(packages) {
                let candidate = path.join(p.file_name());
                if slot.is_none() && candidate.is_file() {
                    let got = sha256_file(&candidate)?;
                    if got != p.sha256 {
                        bail!(
                            "{}: sha256 {got} does not match the pinned {} of {}",
                            candidate.display(),
                            p.sha256,
                            p.name
                        );
                    }
                    *slot = Some(candidate);
                }
            }
        } else {
            let got = sha256_file(path)?;
            let Some(i) = packages.iter().position(|p| p.sha256 == got) else {
                bail!(
                    "{}: sha256 {got} is not one of the pinned packages ({})",
                    path.display(),
                    packages
                        .iter()
                        .map(|p| p.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            };
            found[i].get_or_insert_with(|| path.clone());
        }
    }
    Ok(found)
}

/// Downloads `package` into `cache` from the first source that serves the pinned bytes.
fn download(
    package: &PinnedPackage,
    cache: &Path,
    sources: &Sources,
    downloader: &dyn Downloader,
) -> anyhow::Result<Fetched> {
    let dest = cache.join(package.file_name());
    let part = cache.join(format!("{}.part", package.file_name()));
    let mut failures = Vec::new();
    for url in sources.urls(package) {
        eprintln!("cocoon-image: downloading {url}");
        let _ = std::fs::remove_file(&part);
        if let Err(e) = downloader.download(&url, &part) {
            failures.push(format!("{url}: {e:#}"));
            continue;
        }
        let got = sha256_file(&part)?;
        if got != package.sha256 {
            let _ = std::fs::remove_file(&part);
            failures.push(format!(
                "{url}: sha256 {got} does not match the pinned {}",
                package.sha256
            ));
            continue;
        }
        std::fs::rename(&part, &dest)
            .with_context(|| format!("rename {} to {}", part.display(), dest.display()))?;
        return Ok(Fetched {
            name: package.name.clone(),
            path: dest,
            origin: Origin::Downloaded(url),
        });
    }
    bail!(
        "no source served {} {} with the pinned sha256 (hand the .deb in with --kernel-deb or --root-deb):\n  {}",
        package.name,
        package.version,
        failures.join("\n  ")
    )
}

/// Returns the checked .deb of every pinned package, in pin order: handed in (`handed`: .deb
/// files or directories holding them under their archive file names), else cached in `cache`,
/// else downloaded into `cache` from `sources`.
pub fn fetch(
    packages: &[PinnedPackage],
    cache: &Path,
    handed: &[PathBuf],
    sources: &Sources,
    downloader: &dyn Downloader,
) -> anyhow::Result<Vec<Fetched>> {
    let handed = handed_in(packages, handed)?;
    let mut out = Vec::with_capacity(packages.len());
    for (package, handed) in packages.iter().zip(handed) {
        if let Some(path) = handed {
            out.push(Fetched {
                name: package.name.clone(),
                path,
                origin: Origin::HandedIn,
            });
            continue;
        }
        std::fs::create_dir_all(cache).with_context(|| format!("mkdir {}", cache.display()))?;
        let cached = cache.join(package.file_name());
        if cached.is_file() {
            let got = sha256_file(&cached)?;
            if got == package.sha256 {
                out.push(Fetched {
                    name: package.name.clone(),
                    path: cached,
                    origin: Origin::Cache,
                });
                continue;
            }
            eprintln!(
                "cocoon-image: {}: sha256 {got} is not the pinned {}; fetching it again",
                cached.display(),
                package.sha256
            );
            std::fs::remove_file(&cached)
                .with_context(|| format!("remove {}", cached.display()))?;
        }
        out.push(download(package, cache, sources, downloader)?);
    }
    Ok(out)
}

/// The unpacked kernel.
#[derive(Debug, Clone)]
pub struct UnpackedKernel {
    /// The tree all packages were unpacked into.
    pub root: PathBuf,
    pub vmlinuz: PathBuf,
    /// `…/usr/lib/modules/<release>`.
    pub modules_dir: PathBuf,
    /// The kernel's build configuration (`…/usr/lib/modules/<release>/config`).
    pub config: PathBuf,
}

/// The directory name of an unpacked package set: a digest of the packages' names and hashes.
pub fn tree_name(packages: &[PinnedPackage]) -> String {
    let mut hasher = Sha256::new();
    for p in packages {
        hasher.update(format!("{} {}\n", p.name, p.sha256));
    }
    format!("tree-{}", hex::encode(hasher.finalize()))
}

/// Unpacks the kernel's checked packages (from [`fetch`]) into one tree ([`unpack_tree`]) and
/// finds vmlinuz, the modules and the config in it.
pub fn unpack(pin: &KernelPin, debs: &[Fetched], cache: &Path) -> anyhow::Result<UnpackedKernel> {
    let dir = unpack_tree(&pin.packages, debs, cache)?;
    let release = dir.join(release_dir(&pin.release));
    let out = UnpackedKernel {
        vmlinuz: release.join("vmlinuz"),
        config: release.join("config"),
        modules_dir: release,
        root: dir,
    };
    for (what, path) in [("vmlinuz", &out.vmlinuz), ("config", &out.config)] {
        if !path.is_file() {
            bail!(
                "{}: no {what} for release {} in the pinned packages",
                path.display(),
                pin.release
            );
        }
    }
    Ok(out)
}

/// Unpacks checked packages (from [`fetch`]) with `dpkg-deb -x` into one tree under `cache`,
/// once: a finished tree is renamed into place, so a half-unpacked one is never used.
pub fn unpack_tree(
    packages: &[PinnedPackage],
    debs: &[Fetched],
    cache: &Path,
) -> anyhow::Result<PathBuf> {
    let name = tree_name(packages);
    let dir = cache.join(&name);
    if !dir.is_dir() {
        let tmp = cache.join(format!("{name}.tmp-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).with_context(|| format!("mkdir {}", tmp.display()))?;
        for deb in debs {
            eprintln!("cocoon-image: unpacking {}", deb.path.display());
            let status = Command::new("dpkg-deb")
                .arg("-x")
                .arg(&deb.path)
                .arg(&tmp)
                .status()
                .context("run dpkg-deb -x (package dpkg)")?;
            if !status.success() {
                let _ = std::fs::remove_dir_all(&tmp);
                bail!("dpkg-deb -x {} failed ({status})", deb.path.display());
            }
        }
        if let Err(e) = std::fs::rename(&tmp, &dir) {
            let _ = std::fs::remove_dir_all(&tmp);
            // Another build may have finished the same tree first; anything else is an error.
            if !dir.is_dir() {
                return Err(e).with_context(|| format!("rename to {}", dir.display()));
            }
        }
    }
    Ok(dir)
}

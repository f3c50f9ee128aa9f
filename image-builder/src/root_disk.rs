//! The root disk of an image built with `cocoon-image build --root-disk`: an EROFS filesystem
//! ([`erofs`]) followed by its dm-verity hash device ([`verity`]), and the command-line word
//! ([`RootDisk`]) that names its root hash. See docs/guest-appliance.md, "Root disk".

use std::path::Path;

use anyhow::{bail, Context};
use protocol::guest::RootDisk;
use sha2::{Digest, Sha256};

use crate::cpio::{Archive, Entry};
use crate::erofs;
use crate::verity::{Salt, TreeBuilder, VerityUuid};

/// The root disk of `root`'s entries: the filesystem, then its dm-verity hash device (superblock block, tree),
/// with the salt and the hash device's UUID derived from the filesystem's SHA-256 so that
/// the same filesystem always gives the same disk.
pub fn build(root: &Archive) -> anyhow::Result<(Vec<u8>, RootDisk)> {
    let fs = erofs::image(root)?;
    let fs_sha: [u8; 32] = Sha256::digest(&fs).into();
    let salt = Salt::derived(&fs_sha);
    let mut builder = TreeBuilder::new(fs.len() as u64, salt.clone())?;
    builder.update(&fs)?;
    let tree = builder.finish()?;
    let data_blocks = tree.geometry().data_blocks();
    let mut disk = fs;
    tree.write_hash_device(VerityUuid::derived(&fs_sha), &mut disk)?;
    let params = RootDisk {
        data_blocks,
        root_hash: *tree.root(),
        salt: salt.as_bytes().to_vec(),
    };
    Ok((disk, params))
}

/// Adds the tree under `dir` to `archive` at `prefix` (files, directories and symlinks, in
/// name order; anything else is refused by name).
pub fn add_tree(archive: &mut Archive, dir: &Path, prefix: &str) -> anyhow::Result<()> {
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("read {}", dir.display()))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()
        .with_context(|| format!("read {}", dir.display()))?;
    names.sort();
    for name in names {
        let path = dir.join(&name);
        let Some(name) = name.to_str() else {
            bail!(
                "{}: file names on the root disk must be UTF-8",
                path.display()
            );
        };
        let rel = if prefix.is_empty() {
            name.to_string()
        } else {
            format!("{prefix}/{name}")
        };
        let meta =
            std::fs::symlink_metadata(&path).with_context(|| format!("stat {}", path.display()))?;
        if meta.is_dir() {
            add_dir(archive, &rel)?;
            add_tree(archive, &path, &rel)?;
        } else {
            add_entry(archive, &path, &rel)?;
        }
    }
    Ok(())
}

/// A directory at `rel`: merged with one already there, refused over anything else.
fn add_dir(archive: &mut Archive, rel: &str) -> anyhow::Result<()> {
    match archive.entries().get(rel) {
        None => Ok(archive.insert(rel, Entry::Dir)?),
        Some(Entry::Dir) => Ok(()),
        Some(_) => bail!("{rel} is on the root disk twice (a directory and a file)"),
    }
}

/// Adds the file or symlink at `path` to `archive` as `rel` (its permission bits kept);
/// anything else is refused by name.
fn add_entry(archive: &mut Archive, path: &Path, rel: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let meta =
        std::fs::symlink_metadata(path).with_context(|| format!("stat {}", path.display()))?;
    if archive.entries().contains_key(rel) {
        bail!("{rel} is on the root disk twice");
    }
    let ft = meta.file_type();
    if ft.is_file() {
        let data = std::fs::read(path).with_context(|| format!("read {}", path.display()))?;
        archive.insert(
            rel,
            Entry::File {
                mode: meta.permissions().mode() & 0o777,
                data,
            },
        )?;
    } else if ft.is_symlink() {
        let target =
            std::fs::read_link(path).with_context(|| format!("readlink {}", path.display()))?;
        let Some(target) = target.to_str() else {
            bail!("{}: symlink target is not UTF-8", path.display());
        };
        archive.insert(rel, Entry::Symlink(target.to_string()))?;
    } else {
        bail!(
            "{}: only files, directories and symlinks go on the root disk",
            path.display()
        );
    }
    Ok(())
}

/// A pin file for Debian packages whose files go on a root disk (`cocoon-image build
/// --root-packages FILE`, e.g. `image-builder/gpu-root.toml`): the packages, pinned like the
/// kernel's (`kernel.toml`), the paths taken from their unpacked tree, and symlinks that the
/// packages' maintainer scripts would have made (they are never run).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RootPackages {
    #[serde(rename = "package", default)]
    pub packages: Vec<crate::kernel::PinnedPackage>,
    #[serde(default)]
    pub take: Vec<Take>,
    #[serde(rename = "link", default)]
    pub links: Vec<Link>,
}

/// A path of the unpacked packages put on the root disk; a directory takes everything under
/// it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Take {
    /// Relative path in the unpacked packages, e.g. `usr/lib/firmware/nvidia/550.163.01`.
    pub from: String,
    /// Where it goes on the root disk (default: the same path).
    pub to: Option<String>,
}

impl Take {
    pub fn destination(&self) -> &str {
        self.to.as_deref().unwrap_or(&self.from)
    }
}

/// A symlink made on the root disk.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Link {
    pub path: String,
    pub target: String,
}

fn relative_path(p: &str) -> bool {
    !p.is_empty()
        && !p.starts_with('/')
        && p.split('/').all(|c| !c.is_empty() && c != "." && c != "..")
}

impl RootPackages {
    /// Parses and checks a pin file's text; errors name `file`.
    pub fn parse(text: &str, file: &str) -> anyhow::Result<Self> {
        let pin: Self = toml::from_str(text).map_err(|e| anyhow::anyhow!("{file}: {e}"))?;
        if pin.packages.is_empty() {
            bail!("{file}: no [[package]]");
        }
        let mut names = std::collections::BTreeSet::new();
        for p in &pin.packages {
            p.validate().map_err(|e| {
                anyhow::anyhow!(
                    "{file}: {}",
                    e.to_string().trim_start_matches("kernel.toml: ")
                )
            })?;
            if !names.insert(p.name.as_str()) {
                bail!("{file}: package {:?} is listed twice", p.name);
            }
        }
        if pin.take.is_empty() {
            bail!("{file}: no [[take]]");
        }
        for t in &pin.take {
            for p in [Some(&t.from), t.to.as_ref()].into_iter().flatten() {
                if !relative_path(p) {
                    bail!("{file}: take {p:?} is not a relative path without `.`/`..`");
                }
            }
        }
        for l in &pin.links {
            if !relative_path(&l.path) || l.target.is_empty() || l.target.len() >= 4096 {
                bail!(
                    "{file}: link {:?} -> {:?}: a relative path and a target of 1 to 4095 bytes",
                    l.path,
                    l.target
                );
            }
        }
        Ok(pin)
    }

    /// Adds the taken paths of the unpacked packages in `tree`, and the links, to `archive`.
    /// A path the packages do not have, or anything put on the disk twice, is an error
    /// naming it.
    pub fn add_to(&self, archive: &mut Archive, tree: &Path) -> anyhow::Result<()> {
        for t in &self.take {
            let path = tree.join(&t.from);
            let meta = std::fs::symlink_metadata(&path)
                .with_context(|| format!("take {:?}: not in the pinned packages", t.from))?;
            let to = t.destination();
            if meta.is_dir() {
                add_dir(archive, to)?;
                add_tree(archive, &path, to)?;
            } else {
                add_entry(archive, &path, to)?;
            }
        }
        for l in &self.links {
            if archive.entries().contains_key(&l.path) {
                bail!("{} is on the root disk twice", l.path);
            }
            archive.insert(&l.path, Entry::Symlink(l.target.clone()))?;
        }
        Ok(())
    }
}

/// Checks that `disk` (a `root.img`) is exactly the disk `params` (from the measured command
/// line) names: the filesystem's blocks, then a hash device whose superblock (salt, size),
/// tree and root hash all match — what cocoon-init's boot check and the kernel enforce, done
/// without booting (`cocoon-image verify-root`). Errors name what differs.
pub fn verify(disk: &[u8], params: &RootDisk) -> anyhow::Result<()> {
    let fs_len = params
        .data_blocks
        .checked_mul(crate::verity::BLOCK_SIZE as u64)
        .and_then(|n| usize::try_from(n).ok())
        .filter(|&n| n <= disk.len())
        .ok_or_else(|| {
            anyhow::anyhow!(
                "root.img is {} bytes, shorter than the {} blocks of filesystem the command line names",
                disk.len(),
                params.data_blocks
            )
        })?;
    let sb = crate::verity::verify_image(&disk[..fs_len], &disk[fs_len..], &params.root_hash)
        .with_context(|| {
            format!(
                "root.img does not match the command line's root hash {}",
                hex::encode(params.root_hash)
            )
        })?;
    if sb.data_blocks != params.data_blocks {
        bail!(
            "root.img's hash device covers {} blocks, the command line names {}",
            sb.data_blocks,
            params.data_blocks
        );
    }
    if sb.salt.as_bytes() != &params.salt[..] {
        bail!(
            "root.img's hash device has salt {}, the command line names {}",
            sb.salt.to_hex(),
            hex::encode(&params.salt)
        );
    }
    Ok(())
}

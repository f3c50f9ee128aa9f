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
    use std::os::unix::fs::PermissionsExt;
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
        let ft = meta.file_type();
        if ft.is_dir() {
            archive.insert(&rel, Entry::Dir)?;
            add_tree(archive, &path, &rel)?;
        } else if ft.is_file() {
            let data = std::fs::read(&path).with_context(|| format!("read {}", path.display()))?;
            archive.insert(
                &rel,
                Entry::File {
                    mode: meta.permissions().mode() & 0o777,
                    data,
                },
            )?;
        } else if ft.is_symlink() {
            let target = std::fs::read_link(&path)
                .with_context(|| format!("readlink {}", path.display()))?;
            let Some(target) = target.to_str() else {
                bail!("{}: symlink target is not UTF-8", path.display());
            };
            archive.insert(&rel, Entry::Symlink(target.to_string()))?;
        } else {
            bail!(
                "{}: only files, directories and symlinks go on the root disk",
                path.display()
            );
        }
    }
    Ok(())
}

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

/// The directories the dynamic loader searches when there is no `/etc/ld.so.cache` (a root
/// disk has none: nothing runs `ldconfig`), in its order — Debian's glibc, as
/// `ld-linux-x86-64.so.2 --help` lists them.
pub const LOADER_DIRS: [&str; 4] = [
    "lib/x86_64-linux-gnu",
    "usr/lib/x86_64-linux-gnu",
    "lib",
    "usr/lib",
];

/// Symbolic links followed while resolving one path before giving up (the kernel's limit).
const MAX_LINKS: usize = 40;

/// The entry `path` (relative to the disk's root) names on the disk, following symbolic links
/// in every component as the kernel would (absolute targets from the disk's root), and the
/// path it resolved to. `None` if it does not exist, runs through a non-directory, or loops.
pub fn resolve<'a>(root: &'a Archive, path: &str) -> Option<(String, &'a Entry)> {
    let entries = root.entries();
    let mut rest: std::collections::VecDeque<String> =
        path.split('/').map(str::to_string).collect();
    // The resolved directories so far; empty is the disk's root.
    let mut at: Vec<String> = Vec::new();
    let mut links = 0;
    while let Some(part) = rest.pop_front() {
        match part.as_str() {
            "" | "." => continue,
            ".." => {
                at.pop();
                continue;
            }
            _ => {}
        }
        at.push(part);
        let key = at.join("/");
        match entries.get(&key)? {
            Entry::Symlink(target) => {
                links += 1;
                if links > MAX_LINKS {
                    return None;
                }
                at.pop();
                if target.starts_with('/') {
                    at.clear();
                }
                for p in target.split('/').rev() {
                    rest.push_front(p.to_string());
                }
            }
            Entry::Dir => {}
            entry => {
                if rest.iter().any(|p| !p.is_empty() && p != ".") {
                    return None;
                }
                return Some((key, entry));
            }
        }
    }
    // Ended on a directory (the root itself is not an entry).
    let key = at.join("/");
    entries.get(&key).map(|entry| (key, entry))
}

/// Where the loader finds `soname` on the disk (the first of [`LOADER_DIRS`] holding a regular
/// file by that name), as the resolved path and its bytes.
fn find_library<'a>(root: &'a Archive, soname: &str) -> Option<(String, &'a [u8])> {
    LOADER_DIRS
        .iter()
        .find_map(|dir| match resolve(root, &format!("{dir}/{soname}"))? {
            (path, Entry::File { data, .. }) => Some((path, &data[..])),
            _ => None,
        })
}

/// Checks that every dynamically linked program and library on the root disk will load there:
/// its interpreter (`PT_INTERP`) is a file on the disk, and each `DT_NEEDED` library is an ELF
/// file in one of the [`LOADER_DIRS`] — so a missing library stops the build, naming it,
/// instead of the guest's service at boot. Programs are files with an execute bit, libraries
/// files named `*.so` or `*.so.*` (also those loaded only with `dlopen`, such as NVML: their
/// own dependencies are checked). `DT_RPATH`/`DT_RUNPATH` are refused: the disk's libraries
/// are found only where the loader looks by default. Returns how many dynamically linked
/// objects were checked.
pub fn check_libraries(root: &Archive) -> anyhow::Result<usize> {
    let mut checked = 0;
    for (path, entry) in root.entries() {
        let Entry::File { mode, data } = entry else {
            continue;
        };
        let name = path.rsplit('/').next().unwrap_or(path);
        let library = name.ends_with(".so") || name.contains(".so.");
        if !(library || mode & 0o111 != 0) || !crate::elf::is_elf64(data) {
            continue;
        }
        let Some(info) =
            crate::elf::dynamic(data).with_context(|| format!("root disk: /{path}"))?
        else {
            continue;
        };
        if info.interpreter.is_none() && info.needed.is_empty() {
            // A static-pie program: its dynamic section is for relocating itself.
            continue;
        }
        if let Some(search) = info.search_paths.first() {
            bail!(
                "root disk: /{path} has its own library search path {search:?} (DT_RPATH/DT_RUNPATH); \
                 libraries on the root disk are found only in /{}",
                LOADER_DIRS.join(", /")
            );
        }
        if let Some(interp) = &info.interpreter {
            match resolve(root, interp) {
                Some((_, Entry::File { data, .. })) if crate::elf::is_elf64(data) => {}
                _ => bail!(
                    "root disk: /{path} needs the dynamic loader {interp}, which is not an ELF \
                     file on the disk (add libc6 to --root-packages)"
                ),
            }
        }
        for soname in &info.needed {
            match find_library(root, soname) {
                Some((_, data)) if crate::elf::is_elf64(data) => {}
                Some((found, _)) => {
                    bail!("root disk: /{path} needs {soname}; /{found} is not an ELF file")
                }
                None => bail!(
                    "root disk: /{path} needs {soname}, which is in none of /{} on the disk \
                     (add it with --root-packages or --root-extra)",
                    LOADER_DIRS.join(", /")
                ),
            }
        }
        checked += 1;
    }
    Ok(checked)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::elf::tests::dyn_elf;

    const LIBDIR: &str = "usr/lib/x86_64-linux-gnu";

    fn file(root: &mut Archive, path: &str, mode: u32, data: Vec<u8>) {
        root.insert(path, Entry::File { mode, data }).unwrap();
    }

    fn link(root: &mut Archive, path: &str, target: &str) {
        root.insert(path, Entry::Symlink(target.into())).unwrap();
    }

    /// A disk laid out like the GPU variant's: a program, glibc's loader behind /lib64 →
    /// usr/lib64 → ../lib/x86_64-linux-gnu, libc, libm behind a versioned name, a dlopen-only
    /// library and a firmware ELF nothing runs.
    fn disk() -> Archive {
        let mut root = Archive::new();
        file(
            &mut root,
            "bin/cocoon-worker",
            0o755,
            dyn_elf(
                Some("/lib64/ld-linux-x86-64.so.2"),
                &["libm.so.6", "libc.so.6"],
                None,
            ),
        );
        file(
            &mut root,
            &format!("{LIBDIR}/ld-linux-x86-64.so.2"),
            0o755,
            dyn_elf(None, &[], None),
        );
        file(
            &mut root,
            &format!("{LIBDIR}/libc.so.6"),
            0o755,
            dyn_elf(None, &["ld-linux-x86-64.so.2"], None),
        );
        file(
            &mut root,
            &format!("{LIBDIR}/libm-2.41.so"),
            0o644,
            dyn_elf(None, &["libc.so.6"], None),
        );
        link(&mut root, &format!("{LIBDIR}/libm.so.6"), "libm-2.41.so");
        link(
            &mut root,
            "usr/lib64/ld-linux-x86-64.so.2",
            "../lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
        );
        link(&mut root, "lib64", "usr/lib64");
        file(
            &mut root,
            &format!("{LIBDIR}/libnvidia-ml.so.550"),
            0o644,
            dyn_elf(None, &["libm.so.6"], None),
        );
        link(
            &mut root,
            &format!("{LIBDIR}/libnvidia-ml.so.1"),
            "libnvidia-ml.so.550",
        );
        // Not a program nor a library by name: not read, however malformed.
        file(
            &mut root,
            "lib/firmware/gsp.bin",
            0o644,
            b"\x7fELF\x02\x01garbage".to_vec(),
        );
        root
    }

    #[test]
    fn a_complete_disk_passes() {
        // The program, the loader, libc, libm and NVML (a static-pie-like loader counts not).
        assert_eq!(check_libraries(&disk()).unwrap(), 4);
        // Static programs and a disk without dynamic objects: nothing to check.
        let mut root = Archive::new();
        file(
            &mut root,
            "bin/cocoon-worker",
            0o755,
            dyn_elf(None, &[], None),
        );
        file(&mut root, "bin/script", 0o755, b"#!/bin/sh\n".to_vec());
        assert_eq!(check_libraries(&root).unwrap(), 0);
    }

    fn refused(root: &Archive) -> String {
        format!("{:#}", check_libraries(root).unwrap_err())
    }

    #[test]
    fn a_missing_library_is_named() {
        let mut root = disk();
        root.insert(
            &format!("{LIBDIR}/libm.so.6"),
            Entry::Symlink("libm-2.40.so".into()),
        )
        .unwrap();
        let e = refused(&root);
        assert!(e.contains("/bin/cocoon-worker needs libm.so.6"), "{e}");
        assert!(e.contains("--root-packages"), "{e}");
        // In a directory the loader does not search.
        let mut root = disk();
        let libc = root.entries()[&format!("{LIBDIR}/libc.so.6")].clone();
        let mut moved = Archive::new();
        for (p, e) in root.entries() {
            if !p.ends_with("libc.so.6") {
                moved.insert(p, e.clone()).unwrap();
            }
        }
        moved.insert("opt/lib/libc.so.6", libc).unwrap();
        root = moved;
        assert!(
            refused(&root).contains("needs libc.so.6, which is in none of /lib/x86_64-linux-gnu")
        );
    }

    #[test]
    fn a_dlopen_only_library_is_checked_too() {
        let mut root = disk();
        file(
            &mut root,
            &format!("{LIBDIR}/libnvidia-ml.so.550"),
            0o644,
            dyn_elf(None, &["librt.so.1"], None),
        );
        let e = refused(&root);
        assert!(e.contains("libnvidia-ml.so.550 needs librt.so.1"), "{e}");
    }

    #[test]
    fn a_missing_or_looping_loader_is_named() {
        let mut root = disk();
        link(&mut root, "lib64", "usr/lib");
        assert!(refused(&root).contains("needs the dynamic loader /lib64/ld-linux-x86-64.so.2"));
        let mut root = disk();
        link(
            &mut root,
            "usr/lib64/ld-linux-x86-64.so.2",
            "/lib64/ld-linux-x86-64.so.2",
        );
        assert!(refused(&root).contains("dynamic loader"));
    }

    #[test]
    fn a_library_that_is_not_elf_or_searches_elsewhere_is_refused() {
        let mut root = disk();
        file(
            &mut root,
            &format!("{LIBDIR}/libm-2.41.so"),
            0o644,
            b"INPUT(libm.a)\n".to_vec(),
        );
        let e = refused(&root);
        assert!(
            e.contains(
                "needs libm.so.6; /usr/lib/x86_64-linux-gnu/libm-2.41.so is not an ELF file"
            ),
            "{e}"
        );
        let mut root = disk();
        file(
            &mut root,
            "bin/tool",
            0o755,
            dyn_elf(None, &["libc.so.6"], Some("/opt/lib")),
        );
        let e = refused(&root);
        assert!(
            e.contains("/bin/tool has its own library search path \"/opt/lib\""),
            "{e}"
        );
        // A malformed program is named, not skipped.
        let mut root = disk();
        let mut bad = dyn_elf(None, &["libc.so.6"], None);
        let n = bad.len();
        bad[n - 64 + 8..n - 64 + 16].copy_from_slice(&999u64.to_le_bytes());
        file(&mut root, "bin/bad", 0o755, bad);
        let e = refused(&root);
        assert!(
            e.contains("/bin/bad") && e.contains("malformed DT_NEEDED"),
            "{e}"
        );
    }

    #[test]
    fn resolve_follows_links_like_the_kernel() {
        let root = disk();
        let (p, _) = resolve(&root, "/lib64/ld-linux-x86-64.so.2").unwrap();
        assert_eq!(p, format!("{LIBDIR}/ld-linux-x86-64.so.2"));
        assert_eq!(
            resolve(&root, "usr/lib64/../lib64/./ld-linux-x86-64.so.2")
                .unwrap()
                .0,
            p
        );
        assert!(matches!(resolve(&root, "lib64"), Some((d, Entry::Dir)) if d == "usr/lib64"));
        assert!(
            matches!(resolve(&root, "lib64/../lib64"), Some((d, Entry::Dir)) if d == "usr/lib64")
        );
        // Through a file, missing, and a loop.
        assert!(resolve(&root, "bin/cocoon-worker/x").is_none());
        assert!(resolve(&root, "lib64/nothing").is_none());
        let mut root = root;
        link(&mut root, "a", "b");
        link(&mut root, "b", "/a");
        assert!(resolve(&root, "a").is_none());
        assert!(resolve(&root, "/").is_none());
    }
}

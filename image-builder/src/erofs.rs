//! Reproducible read-only EROFS images: the root disk of an image built with
//! `cocoon-image build --root-disk` (what does not fit an initramfs goes here, under
//! dm-verity; see docs/guest-appliance.md).
//!
//! The subset written is the simplest the kernel mounts: 4 KiB blocks, no compression, no
//! extended attributes, 32-byte "compact" inodes only, every file, directory and symlink
//! stored `FLAT_PLAIN` (its data in whole blocks of its own). Layout:
//!
//! ```text
//! block 0 ..         superblock at byte 1024, then the inodes from nid 36 (byte 1152) on,
//!                    32 bytes each, root first, then the entries in path order
//! next block ..      each inode's data in nid order: file bytes, directory blocks
//!                    (dirents + names, sorted by name, with "." and ".."), symlink targets
//! ```
//!
//! Reproducibility: entries come from a [`cpio::Archive`] (sorted by path), inode numbers and
//! data addresses follow that order, times are 0 (the superblock's build time and every
//! inode's offset from it), uid/gid 0, no UUID. Same entries ⇒ same bytes.

use std::collections::HashMap;

use crate::cpio::{Archive, Entry};

/// Filesystem block size.
pub const BLOCK_SIZE: usize = 4096;
const BLKSZBITS: u8 = 12;
/// `EROFS_SUPER_MAGIC_V1`.
pub const MAGIC: u32 = 0xE0F5_E1E2;
/// The superblock's byte offset in block 0.
pub const SUPER_OFFSET: usize = 1024;
const SUPER_SIZE: usize = 128;
/// Inode slots are 32 bytes; a compact inode takes one.
const SLOT: usize = 32;
/// The root's nid: the first slot after the superblock (the metadata area starts at block 0).
pub const ROOT_NID: u64 = ((SUPER_OFFSET + SUPER_SIZE) / SLOT) as u64;
/// Directory entry: nid (8), nameoff (2), file type (1), reserved (1).
const DIRENT_SIZE: usize = 12;
/// Longest name the kernel accepts.
pub const MAX_NAME: usize = 255;
/// The volume name in the superblock.
pub const VOLUME_NAME: &[u8] = b"cocoon-root";

/// `i_format`: bit 0 is the inode version (0 = compact), bits 1-3 the data layout.
const LAYOUT_FLAT_PLAIN: u16 = 0;

const S_IFDIR: u16 = 0o040_000;
const S_IFREG: u16 = 0o100_000;
const S_IFLNK: u16 = 0o120_000;

const FT_REG_FILE: u8 = 1;
const FT_DIR: u8 = 2;
const FT_SYMLINK: u8 = 7;

/// Errors building an image; each names the entry.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ErofsError {
    #[error("root disk: {path:?} is {size} bytes; files must be under 4 GiB")]
    TooLarge { path: String, size: u64 },
    #[error("root disk: symlink {path:?} has a {len}-byte target (at most 4095)")]
    LongSymlink { path: String, len: usize },
    #[error("root disk: name {name:?} is longer than {MAX_NAME} bytes")]
    LongName { name: String },
    #[error("root disk: {path:?} needs parent directory {parent:?}")]
    MissingParent { path: String, parent: String },
    #[error("root disk: {path:?} is a device node; the root disk holds files, directories and symlinks (devices come from devtmpfs)")]
    Unsupported { path: String },
    #[error("root disk: directory {path:?} has too many subdirectories")]
    TooManyLinks { path: String },
    #[error("root disk: more than 2^32 inodes or blocks")]
    TooBig,
}

enum Kind<'a> {
    Dir { children: Vec<usize> },
    File { mode: u16, data: &'a [u8] },
    Symlink { target: &'a [u8] },
}

struct Node<'a> {
    name: &'a [u8],
    parent: usize,
    kind: Kind<'a>,
}

impl Node<'_> {
    fn file_type(&self) -> u8 {
        match self.kind {
            Kind::Dir { .. } => FT_DIR,
            Kind::File { .. } => FT_REG_FILE,
            Kind::Symlink { .. } => FT_SYMLINK,
        }
    }
}

fn nid(index: usize) -> u64 {
    ROOT_NID + index as u64
}

fn blocks_for(len: u64) -> u64 {
    len.div_ceil(BLOCK_SIZE as u64)
}

/// The tree of `archive` as nodes: index 0 is the root, then the entries in path order.
fn nodes(archive: &Archive) -> Result<Vec<Node<'_>>, ErofsError> {
    let mut nodes = vec![Node {
        name: b"",
        parent: 0,
        kind: Kind::Dir {
            children: Vec::new(),
        },
    }];
    let mut by_path: HashMap<&str, usize> = HashMap::new();
    for (path, entry) in archive.entries() {
        let (parent_path, name) = match path.rsplit_once('/') {
            Some((p, n)) => (Some(p), n),
            None => (None, path.as_str()),
        };
        if name.len() > MAX_NAME {
            return Err(ErofsError::LongName {
                name: name.chars().take(64).collect(),
            });
        }
        let parent = match parent_path {
            None => 0,
            Some(p) => match by_path.get(p) {
                Some(&i) if matches!(nodes[i].kind, Kind::Dir { .. }) => i,
                _ => {
                    return Err(ErofsError::MissingParent {
                        path: path.clone(),
                        parent: p.into(),
                    })
                }
            },
        };
        let kind = match entry {
            Entry::Dir => Kind::Dir {
                children: Vec::new(),
            },
            Entry::File { mode, data } => {
                if u32::try_from(data.len()).is_err() {
                    return Err(ErofsError::TooLarge {
                        path: path.clone(),
                        size: data.len() as u64,
                    });
                }
                Kind::File {
                    mode: (*mode & 0o7777) as u16,
                    data,
                }
            }
            Entry::Symlink(target) => {
                if target.is_empty() || target.len() >= BLOCK_SIZE {
                    return Err(ErofsError::LongSymlink {
                        path: path.clone(),
                        len: target.len(),
                    });
                }
                Kind::Symlink {
                    target: target.as_bytes(),
                }
            }
            Entry::CharDev { .. } => return Err(ErofsError::Unsupported { path: path.clone() }),
        };
        let index = nodes.len();
        nodes.push(Node {
            name: name.as_bytes(),
            parent,
            kind,
        });
        by_path.insert(path, index);
        if let Kind::Dir { children } = &mut nodes[parent].kind {
            // Path order within one parent is name order.
            children.push(index);
        }
    }
    Ok(nodes)
}

/// A directory's data: its entries ("." and ".." included) sorted by name, packed into
/// blocks; each block holds its dirents, then their names (no terminators: a name ends where
/// the next begins, the last one at the first zero byte or the end). Returns the data (whole
/// blocks) and the directory's size (the last block counts up to its last name).
fn directory_data(nodes: &[Node<'_>], index: usize) -> (Vec<u8>, u64) {
    let Kind::Dir { children } = &nodes[index].kind else {
        unreachable!("directory_data on a non-directory")
    };
    let mut entries: Vec<(&[u8], u64, u8)> = vec![
        (b".", nid(index), FT_DIR),
        (b"..", nid(nodes[index].parent), FT_DIR),
    ];
    entries.extend(
        children
            .iter()
            .map(|&c| (nodes[c].name, nid(c), nodes[c].file_type())),
    );
    entries.sort_by(|a, b| a.0.cmp(b.0));

    let mut data = Vec::new();
    let mut size = 0u64;
    let mut start = 0;
    while start < entries.len() {
        let mut end = start;
        let mut used = 0;
        while end < entries.len() && used + DIRENT_SIZE + entries[end].0.len() <= BLOCK_SIZE {
            used += DIRENT_SIZE + entries[end].0.len();
            end += 1;
        }
        let block_at = data.len();
        data.resize(block_at + BLOCK_SIZE, 0);
        let block = &mut data[block_at..];
        let mut name_at = DIRENT_SIZE * (end - start);
        for (k, (name, nid, file_type)) in entries[start..end].iter().enumerate() {
            let d = &mut block[k * DIRENT_SIZE..(k + 1) * DIRENT_SIZE];
            d[0..8].copy_from_slice(&nid.to_le_bytes());
            d[8..10].copy_from_slice(&(name_at as u16).to_le_bytes());
            d[10] = *file_type;
            block[name_at..name_at + name.len()].copy_from_slice(name);
            name_at += name.len();
        }
        size = block_at as u64 + used as u64;
        start = end;
    }
    (data, size)
}

/// The EROFS image of `archive`'s entries (a root directory holding them).
pub fn image(archive: &Archive) -> Result<Vec<u8>, ErofsError> {
    let nodes = nodes(archive)?;
    let inode_count = u32::try_from(nodes.len()).map_err(|_| ErofsError::TooBig)?;
    let meta_end = (ROOT_NID as usize + nodes.len()) * SLOT;
    let mut next_block = blocks_for(meta_end as u64);

    // Data of every node, in nid order: (size, first block, bytes).
    let mut placed: Vec<(u64, u64, std::borrow::Cow<'_, [u8]>)> = Vec::with_capacity(nodes.len());
    for (i, node) in nodes.iter().enumerate() {
        let (size, bytes) = match &node.kind {
            Kind::Dir { .. } => {
                let (data, size) = directory_data(&nodes, i);
                (size, std::borrow::Cow::Owned(data))
            }
            Kind::File { data, .. } => (data.len() as u64, std::borrow::Cow::Borrowed(*data)),
            Kind::Symlink { target } => (target.len() as u64, std::borrow::Cow::Borrowed(*target)),
        };
        // An empty file owns no block; its address is never read.
        let addr = if size == 0 { 0 } else { next_block };
        next_block += blocks_for(size);
        placed.push((size, addr, bytes));
    }
    let total_blocks = u32::try_from(next_block).map_err(|_| ErofsError::TooBig)?;
    let mut out = vec![0u8; next_block as usize * BLOCK_SIZE];

    let sb = &mut out[SUPER_OFFSET..SUPER_OFFSET + SUPER_SIZE];
    sb[0..4].copy_from_slice(&MAGIC.to_le_bytes());
    // 4: checksum, 8: feature_compat (no SB_CHKSUM: dm-verity covers every byte).
    sb[12] = BLKSZBITS;
    // 13: sb_extslots.
    sb[14..16].copy_from_slice(&(ROOT_NID as u16).to_le_bytes());
    sb[16..24].copy_from_slice(&u64::from(inode_count).to_le_bytes());
    // 24: build_time, 32: build_time_nsec: 0.
    sb[36..40].copy_from_slice(&total_blocks.to_le_bytes());
    // 40: meta_blkaddr 0, 44: xattr_blkaddr 0, 48: uuid (none).
    sb[64..64 + VOLUME_NAME.len()].copy_from_slice(VOLUME_NAME);
    // 80: feature_incompat 0 (nothing beyond the base format).

    for (i, (node, (size, addr, bytes))) in nodes.iter().zip(&placed).enumerate() {
        let (mode, nlink) = match &node.kind {
            Kind::Dir { children } => {
                let subdirs = children
                    .iter()
                    .filter(|&&c| matches!(nodes[c].kind, Kind::Dir { .. }))
                    .count();
                let nlink = u16::try_from(2 + subdirs).map_err(|_| ErofsError::TooManyLinks {
                    path: path_of(&nodes, i),
                })?;
                (S_IFDIR | 0o755, nlink)
            }
            Kind::File { mode, .. } => (S_IFREG | mode, 1),
            Kind::Symlink { .. } => (S_IFLNK | 0o777, 1),
        };
        let at = nid(i) as usize * SLOT;
        let inode = &mut out[at..at + SLOT];
        inode[0..2].copy_from_slice(&LAYOUT_FLAT_PLAIN.to_le_bytes());
        // 2: i_xattr_icount 0.
        inode[4..6].copy_from_slice(&mode.to_le_bytes());
        inode[6..8].copy_from_slice(&nlink.to_le_bytes());
        inode[8..12].copy_from_slice(&(*size as u32).to_le_bytes());
        // 12: mtime offset from the build time, 0.
        inode[16..20].copy_from_slice(&(*addr as u32).to_le_bytes());
        inode[20..24].copy_from_slice(&(i as u32 + 1).to_le_bytes());
        // 24: uid, 26: gid, 28: reserved: 0.
        let start = *addr as usize * BLOCK_SIZE;
        out[start..start + bytes.len()].copy_from_slice(bytes);
    }
    Ok(out)
}

fn path_of(nodes: &[Node<'_>], mut i: usize) -> String {
    let mut parts = Vec::new();
    while i != 0 {
        parts.push(String::from_utf8_lossy(nodes[i].name).into_owned());
        i = nodes[i].parent;
    }
    parts.reverse();
    format!("/{}", parts.join("/"))
}

#[cfg(test)]
mod tests;

//! A reader for what [`image`] writes, written from the format (not from the writer), that
//! checks the invariants the kernel relies on while it walks the tree. The kernel itself
//! mounts these images in ci/e2e-vm.sh and fsck.erofs (erofs-utils) extracts them there.

use std::collections::BTreeMap;

use super::*;

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(b[at..at + 2].try_into().unwrap())
}
fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

struct Inode {
    mode: u16,
    nlink: u16,
    size: u64,
    addr: u64,
    ino: u32,
}

fn inode(img: &[u8], nid: u64) -> Inode {
    let at = nid as usize * 32;
    let b = &img[at..at + 32];
    assert_eq!(u16_at(b, 0), 0, "nid {nid}: compact FLAT_PLAIN");
    assert_eq!(u16_at(b, 2), 0, "nid {nid}: no xattrs");
    assert_eq!(u32_at(b, 12), 0, "nid {nid}: mtime 0");
    assert_eq!(u32_at(b, 24), 0, "nid {nid}: uid/gid 0");
    Inode {
        mode: u16_at(b, 4),
        nlink: u16_at(b, 6),
        size: u64::from(u32_at(b, 8)),
        addr: u64::from(u32_at(b, 16)),
        ino: u32_at(b, 20),
    }
}

fn data<'a>(img: &'a [u8], i: &Inode) -> &'a [u8] {
    let start = i.addr as usize * BLOCK_SIZE;
    assert!(
        start + i.size as usize <= img.len(),
        "data past the image end"
    );
    &img[start..start + i.size as usize]
}

/// (name, nid, file type) of a directory, checking the block layout.
fn dirents(img: &[u8], dir: &Inode) -> Vec<(Vec<u8>, u64, u8)> {
    let bytes = data(img, dir);
    let mut out = Vec::new();
    for (b, block) in bytes.chunks(BLOCK_SIZE).enumerate() {
        let first_nameoff = u16_at(block, 8) as usize;
        assert!(first_nameoff >= 12 && first_nameoff.is_multiple_of(12));
        let count = first_nameoff / 12;
        for k in 0..count {
            let nameoff = u16_at(block, k * 12 + 8) as usize;
            let end = if k + 1 < count {
                u16_at(block, (k + 1) * 12 + 8) as usize
            } else {
                // The last name: up to a zero byte or the end of the directory's data.
                let rest = &block[nameoff..];
                nameoff + rest.iter().position(|&c| c == 0).unwrap_or(rest.len())
            };
            assert!(nameoff < end, "block {b} entry {k}: empty name");
            out.push((
                block[nameoff..end].to_vec(),
                u64_at(block, k * 12),
                block[k * 12 + 10],
            ));
        }
    }
    out
}

/// Walks the image from the root into cpio entries (paths relative to the root).
fn read(img: &[u8]) -> BTreeMap<String, Entry> {
    let sb = &img[SUPER_OFFSET..SUPER_OFFSET + 128];
    assert_eq!(u32_at(sb, 0), MAGIC);
    assert_eq!(sb[12], 12, "4 KiB blocks");
    assert_eq!(u32_at(sb, 36) as usize * BLOCK_SIZE, img.len(), "blocks");
    assert_eq!(u32_at(sb, 40), 0, "meta_blkaddr");
    assert_eq!(u32_at(sb, 80), 0, "no incompatible features");
    let root = u64::from(u16_at(sb, 14));
    let mut out = BTreeMap::new();
    let mut seen_inos = std::collections::BTreeSet::new();
    let mut stack = vec![(root, root, String::new())];
    while let Some((nid, parent, path)) = stack.pop() {
        let dir = inode(img, nid);
        assert_eq!(dir.mode & 0o170_000, S_IFDIR, "{path}: a directory");
        assert!(seen_inos.insert(dir.ino), "{path}: ino {} twice", dir.ino);
        let entries = dirents(img, &dir);
        let names: Vec<&[u8]> = entries.iter().map(|e| &e.0[..]).collect();
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(
            names, sorted,
            "{path}: entries sorted by name across blocks"
        );
        let mut subdirs = 0;
        for (name, child, ft) in &entries {
            match &name[..] {
                b"." => assert_eq!((*child, *ft), (nid, FT_DIR), "{path}: ."),
                b".." => assert_eq!((*child, *ft), (parent, FT_DIR), "{path}: .."),
                _ => {
                    let name = String::from_utf8(name.clone()).unwrap();
                    let p = if path.is_empty() {
                        name
                    } else {
                        format!("{path}/{name}")
                    };
                    let i = inode(img, *child);
                    match i.mode & 0o170_000 {
                        S_IFDIR => {
                            assert_eq!(*ft, FT_DIR);
                            subdirs += 1;
                            out.insert(p.clone(), Entry::Dir);
                            stack.push((*child, nid, p));
                        }
                        S_IFREG => {
                            assert_eq!((*ft, i.nlink), (FT_REG_FILE, 1));
                            assert!(seen_inos.insert(i.ino));
                            out.insert(
                                p,
                                Entry::File {
                                    mode: u32::from(i.mode & 0o7777),
                                    data: data(img, &i).to_vec(),
                                },
                            );
                        }
                        S_IFLNK => {
                            assert_eq!((*ft, i.mode & 0o7777), (FT_SYMLINK, 0o777));
                            assert!(seen_inos.insert(i.ino));
                            let t = String::from_utf8(data(img, &i).to_vec()).unwrap();
                            out.insert(p, Entry::Symlink(t));
                        }
                        m => panic!("{p}: mode {m:o}"),
                    }
                }
            }
        }
        assert_eq!(dir.nlink, 2 + subdirs, "{path}: nlink");
    }
    assert_eq!(u64_at(sb, 16), seen_inos.len() as u64, "inos");
    out
}

fn file(mode: u32, data: &[u8]) -> Entry {
    Entry::File {
        mode,
        data: data.to_vec(),
    }
}

fn sample() -> Archive {
    let mut a = Archive::new();
    a.insert("bin/cocoon-worker", file(0o755, &[0x7f; 10_000]))
        .unwrap();
    a.insert("etc/cocoon/modules", file(0o644, b"x.ko\n"))
        .unwrap();
    a.insert("etc/empty", file(0o600, b"")).unwrap();
    a.insert(
        "usr/lib/libnvidia-ml.so.550.163.01",
        file(0o644, &[1; 4096]),
    )
    .unwrap();
    a.insert(
        "usr/lib/libnvidia-ml.so.1",
        Entry::Symlink("libnvidia-ml.so.550.163.01".into()),
    )
    .unwrap();
    for d in ["dev", "proc", "sys", "run", "tmp"] {
        a.insert(d, Entry::Dir).unwrap();
    }
    a
}

#[test]
fn round_trips_through_an_independent_reader() {
    let a = sample();
    let img = image(&a).unwrap();
    assert_eq!(img.len() % BLOCK_SIZE, 0);
    assert_eq!(&read(&img), a.entries());
}

#[test]
fn layout_is_fixed() {
    let img = image(&sample()).unwrap();
    // The root inode right after the superblock; its data in the first block after the inodes.
    let root = inode(&img, ROOT_NID);
    assert_eq!(ROOT_NID, 36);
    assert_eq!(root.mode, S_IFDIR | 0o755);
    assert_eq!(root.ino, 1);
    assert_eq!(root.addr, 1);
    assert_eq!(&img[SUPER_OFFSET + 64..SUPER_OFFSET + 75], b"cocoon-root");
    // Root entries: . .. bin dev etc proc run sys tmp usr → 12 bytes each, then the names.
    let names: Vec<Vec<u8>> = dirents(&img, &root).into_iter().map(|e| e.0).collect();
    assert_eq!(
        names,
        [".", "..", "bin", "dev", "etc", "proc", "run", "sys", "tmp", "usr"]
            .map(|s| s.as_bytes().to_vec())
    );
    // ".", "..", seven 3-byte names and "proc".
    assert_eq!(root.size, 10 * 12 + 1 + 2 + 7 * 3 + 4);
    // The empty file owns no block.
    let etc = read(&img);
    assert_eq!(etc["etc/empty"], file(0o600, b""));
}

#[test]
fn same_entries_same_bytes_any_insertion_order() {
    let mut b = Archive::new();
    for d in ["tmp", "run", "sys", "proc", "dev"] {
        b.insert(d, Entry::Dir).unwrap();
    }
    b.insert(
        "usr/lib/libnvidia-ml.so.1",
        Entry::Symlink("libnvidia-ml.so.550.163.01".into()),
    )
    .unwrap();
    b.insert(
        "usr/lib/libnvidia-ml.so.550.163.01",
        file(0o644, &[1; 4096]),
    )
    .unwrap();
    b.insert("etc/empty", file(0o600, b"")).unwrap();
    b.insert("etc/cocoon/modules", file(0o644, b"x.ko\n"))
        .unwrap();
    b.insert("bin/cocoon-worker", file(0o755, &[0x7f; 10_000]))
        .unwrap();
    assert_eq!(image(&sample()).unwrap(), image(&b).unwrap());
}

#[test]
fn large_directories_span_blocks_in_name_order() {
    let mut a = Archive::new();
    // 600 entries with 40-byte names: ~31 KB of dirents and names, 8 blocks; names whose
    // byte order differs from numeric order.
    for i in 0..600 {
        let name = format!("lib/{:0>40}", format!("{}x{i}", i % 7));
        a.insert(&name, file(0o644, &[i as u8; 3])).unwrap();
    }
    a.insert("lib/sub", Entry::Dir).unwrap();
    a.insert("lib/sub/deeper", file(0o644, b"d")).unwrap();
    let img = image(&a).unwrap();
    let got = read(&img);
    assert_eq!(&got, a.entries());
    let lib_nid = dirents(&img, &inode(&img, ROOT_NID))
        .into_iter()
        .find(|e| e.0 == b"lib")
        .unwrap()
        .1;
    let lib = inode(&img, lib_nid);
    assert!(lib.size > 7 * BLOCK_SIZE as u64, "{}", lib.size);
    assert_eq!(lib.nlink, 3);
}

#[test]
fn names_the_entry_it_cannot_store() {
    let mut a = Archive::new();
    a.insert("dev/console", Entry::CharDev { major: 5, minor: 1 })
        .unwrap();
    assert_eq!(
        image(&a),
        Err(ErofsError::Unsupported {
            path: "dev/console".into()
        })
    );

    let mut a = Archive::new();
    a.insert(&"n".repeat(256), file(0o644, b"")).unwrap();
    assert!(matches!(image(&a), Err(ErofsError::LongName { .. })));

    let mut a = Archive::new();
    a.insert("l", Entry::Symlink("t".repeat(4096))).unwrap();
    assert_eq!(
        image(&a),
        Err(ErofsError::LongSymlink {
            path: "l".into(),
            len: 4096
        })
    );

    // A file where a directory is needed.
    let mut a = Archive::new();
    a.insert("bin", file(0o755, b"")).unwrap();
    a.insert("bin/x", file(0o755, b"")).unwrap();
    assert_eq!(
        image(&a),
        Err(ErofsError::MissingParent {
            path: "bin/x".into(),
            parent: "bin".into()
        })
    );
}

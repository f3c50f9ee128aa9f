//! The config disk is a deterministic tar: same names and contents give the same bytes (and
//! the same SHA-256, which the guest extends into RTMR3) whatever the source files' metadata.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use host::vm::configdisk::{self, BLOCK};

fn files() -> BTreeMap<String, Vec<u8>> {
    BTreeMap::from([
        ("service.toml".to_string(), b"name = \"w\"\n".to_vec()),
        ("init.toml".to_string(), b"role = \"worker\"\n".to_vec()),
        ("empty".to_string(), Vec::new()),
        ("block.bin".to_string(), vec![7u8; BLOCK]),
    ])
}

/// SHA-256 of the disk built from [`files`]. A change here changes every deployed config
/// digest: review it like a format change.
const GOLDEN_SHA256: &str = "55e1fd978b02a62b53bb3f7c18a3d251adf0d9372801b13e0cd10c8d76339fb7";

#[test]
fn same_input_same_bytes_and_pinned_digest() {
    let a = configdisk::build(&files()).unwrap();
    let b = configdisk::build(&files()).unwrap();
    assert_eq!(a, b);
    assert_eq!(a.bytes.len() % BLOCK, 0);
    // 4 headers + data blocks (1 + 1 + 0 + 1) + 2 end blocks.
    assert_eq!(a.bytes.len(), (4 + 3 + 2) * BLOCK);
    assert_eq!(a.sha256_hex(), GOLDEN_SHA256);
    // Sorted entries, contents intact, fixed metadata.
    let entries = configdisk::entries(&a.bytes).unwrap();
    let names: Vec<&str> = entries.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["block.bin", "empty", "init.toml", "service.toml"]);
    assert_eq!(entries[2].1, b"role = \"worker\"\n");
    let mut archive = tar::Archive::new(a.bytes.as_slice());
    for e in archive.entries().unwrap() {
        let h = e.unwrap().header().clone();
        assert_eq!(h.mode().unwrap(), 0o644);
        assert_eq!((h.uid().unwrap(), h.gid().unwrap()), (0, 0));
        assert_eq!(h.mtime().unwrap(), 0);
        assert_eq!(h.username().unwrap(), Some(""));
        assert_eq!(h.groupname().unwrap(), Some(""));
        assert!(h.entry_type().is_file());
        assert_eq!(&h.as_bytes()[257..263], b"ustar\0");
    }
    // Any content change changes the digest.
    let mut changed = files();
    changed.insert("init.toml".into(), b"role = \"proxy\"\n".to_vec());
    assert_ne!(configdisk::build(&changed).unwrap().sha256, a.sha256);
}

#[test]
fn source_file_metadata_does_not_matter() {
    let d = common::temp("disk");
    let mut sources = BTreeMap::new();
    for (name, data) in files() {
        let p = d.join("src").join(&name);
        common::write(&p, &data);
        sources.insert(name, p);
    }
    let first = configdisk::from_files(&sources).unwrap();
    for (i, p) in sources.values().enumerate() {
        let f = std::fs::File::options().write(true).open(p).unwrap();
        f.set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000 + i as u64 * 7777))
            .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o600 + i as u32)).unwrap();
    }
    let second = configdisk::from_files(&sources).unwrap();
    assert_eq!(first, second);
    assert_eq!(first, configdisk::build(&files()).unwrap());
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn bad_entries_and_sources_are_named() {
    let mut bad = files();
    bad.insert("../escape".into(), vec![]);
    let e = configdisk::build(&bad).unwrap_err().to_string();
    assert!(e.contains("../escape"), "{e}");

    let missing = BTreeMap::from([(
        "init.toml".to_string(),
        PathBuf::from("/nonexistent/init.toml"),
    )]);
    let e = configdisk::from_files(&missing).unwrap_err().to_string();
    assert!(
        e.starts_with("guest.files.\"init.toml\" (/nonexistent/init.toml)"),
        "{e}"
    );

    let d = common::temp("disk-big");
    let big = d.join("big");
    common::write(&big, vec![0u8; (1 << 20) + 1]);
    let e = configdisk::from_files(&BTreeMap::from([("big".to_string(), big)]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("more than the 1048576"), "{e}");
    std::fs::remove_dir_all(&d).unwrap();
}

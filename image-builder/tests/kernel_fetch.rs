//! `image::kernel::fetch`: where pinned kernel packages come from (handed in, cache, archive
//! pool, snapshot.debian.org), that only the pinned bytes are ever used, and that several
//! packages unpack into one tree. Downloads go to a fake [`Downloader`]; no network.
//!
//! The unpack test builds small real .deb files with `dpkg-deb --build` (package dpkg).

mod common;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use image::kernel::fetch::{self, Downloader, Origin, Sources};
use image::kernel::KernelPin;
use sha2::{Digest, Sha256};

const RELEASE: &str = "7.0.0+test-cloud-amd64";

fn scratch(name: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("kernel-fetch-tests")
        .join(name);
    let _ = fs::remove_dir_all(&d);
    fs::create_dir_all(&d).unwrap();
    d
}

/// A pin for packages `(name, bytes)`, all in `pool/main/l/linux`. The `sha1` field only names
/// the file on the (fake) snapshot service, so any distinct 40 hex digits do.
fn pin_for(packages: &[(&str, &[u8])]) -> KernelPin {
    let mut text = format!("release = \"{RELEASE}\"\n");
    for (name, bytes) in packages {
        text += &format!(
            "[[package]]\nname = \"{name}\"\nversion = \"7.0.0-1~bpo13+1\"\npool = \"pool/main/l/linux\"\n\
             sha256 = \"{}\"\nsha1 = \"{}\"\n",
            hex::encode(Sha256::digest(bytes)),
            &hex::encode(Sha256::digest(bytes))[..40],
        );
    }
    text += "[config]\nrequired = [\"CONFIG_X=y\"]\n[modules]\ncommon = []\n";
    KernelPin::parse(&text).unwrap()
}

/// Serves fixed bodies by URL and records every request.
#[derive(Default)]
struct FakeNet {
    bodies: BTreeMap<String, Vec<u8>>,
    requests: RefCell<Vec<String>>,
}

impl Downloader for FakeNet {
    fn download(&self, url: &str, dest: &Path) -> anyhow::Result<()> {
        self.requests.borrow_mut().push(url.to_string());
        match self.bodies.get(url) {
            Some(body) => Ok(fs::write(dest, body)?),
            None => anyhow::bail!("404 not found"),
        }
    }
}

fn sources() -> Sources {
    Sources {
        archive: "https://archive.test/debian".into(),
        snapshot: "https://snapshot.test".into(),
    }
}

#[test]
fn downloads_from_the_pool_then_uses_the_cache() {
    let dir = scratch("pool-then-cache");
    let pin = pin_for(&[
        ("linux-binary-7", b"binary"),
        ("linux-modules-7", b"modules"),
    ]);
    let s = sources();
    let mut net = FakeNet::default();
    for (p, body) in pin.packages.iter().zip([&b"binary"[..], b"modules"]) {
        net.bodies.insert(p.pool_url(&s.archive), body.to_vec());
    }
    let got = fetch::fetch(&pin.packages, &dir, &[], &s, &net).unwrap();
    assert_eq!(got.len(), 2);
    assert_eq!(
        got[0].origin,
        Origin::Downloaded(
            "https://archive.test/debian/pool/main/l/linux/linux-binary-7_7.0.0-1~bpo13+1_amd64.deb"
                .into()
        )
    );
    assert_eq!(fs::read(&got[1].path).unwrap(), b"modules");
    assert_eq!(got[1].path, dir.join(pin.packages[1].file_name()));
    assert_eq!(net.requests.borrow().len(), 2);

    let again = fetch::fetch(&pin.packages, &dir, &[], &s, &net).unwrap();
    assert!(again.iter().all(|f| f.origin == Origin::Cache));
    assert_eq!(net.requests.borrow().len(), 2, "the cache answered");
}

#[test]
fn falls_back_to_the_snapshot_when_the_pool_fails_or_lies() {
    let dir = scratch("snapshot");
    let pin = pin_for(&[
        ("linux-binary-7", b"binary"),
        ("linux-modules-7", b"modules"),
    ]);
    let s = sources();
    let mut net = FakeNet::default();
    // Package 0: gone from the pool. Package 1: the pool serves other bytes.
    net.bodies.insert(
        pin.packages[1].pool_url(&s.archive),
        b"not the pinned bytes".to_vec(),
    );
    net.bodies.insert(
        pin.packages[0].snapshot_url(&s.snapshot),
        b"binary".to_vec(),
    );
    net.bodies.insert(
        pin.packages[1].snapshot_url(&s.snapshot),
        b"modules".to_vec(),
    );
    let got = fetch::fetch(&pin.packages, &dir, &[], &s, &net).unwrap();
    for (f, p) in got.iter().zip(&pin.packages) {
        assert_eq!(
            f.origin,
            Origin::Downloaded(format!("https://snapshot.test/file/{}", p.sha1))
        );
    }
    assert_eq!(fs::read(&got[1].path).unwrap(), b"modules");
    assert_eq!(net.requests.borrow().len(), 4);
    let leftovers: Vec<_> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".part"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn no_source_with_the_pinned_bytes_is_an_error_naming_every_url() {
    let dir = scratch("no-source");
    let pin = pin_for(&[("linux-binary-7", b"binary")]);
    let s = sources();
    let mut net = FakeNet::default();
    net.bodies
        .insert(pin.packages[0].pool_url(&s.archive), b"evil".to_vec());
    let err = format!(
        "{:#}",
        fetch::fetch(&pin.packages, &dir, &[], &s, &net).unwrap_err()
    );
    assert!(err.contains("linux-binary-7 7.0.0-1~bpo13+1"), "{err}");
    assert!(err.contains("does not match the pinned"), "{err}");
    assert!(err.contains("https://snapshot.test/file/"), "{err}");
    assert!(err.contains("404 not found"), "{err}");
    assert!(err.contains("--kernel-deb"), "{err}");
    assert!(!dir.join(pin.packages[0].file_name()).exists());
}

#[test]
fn a_corrupt_cache_entry_is_fetched_again() {
    let dir = scratch("corrupt-cache");
    let pin = pin_for(&[("linux-binary-7", b"binary")]);
    let s = sources();
    fs::write(dir.join(pin.packages[0].file_name()), b"truncated").unwrap();
    let mut net = FakeNet::default();
    net.bodies
        .insert(pin.packages[0].pool_url(&s.archive), b"binary".to_vec());
    let got = fetch::fetch(&pin.packages, &dir, &[], &s, &net).unwrap();
    assert!(matches!(got[0].origin, Origin::Downloaded(_)));
    assert_eq!(fs::read(&got[0].path).unwrap(), b"binary");
}

#[test]
fn handed_in_files_and_directories() {
    let dir = scratch("handed-in");
    let pin = pin_for(&[
        ("linux-binary-7", b"binary"),
        ("linux-modules-7", b"modules"),
    ]);
    let net = FakeNet::default();
    let s = sources();
    let cache = dir.join("cache");

    // A file under any name, matched by content; a directory offering the archive file name.
    let file = dir.join("whatever.deb");
    fs::write(&file, b"binary").unwrap();
    let offered = dir.join("offered");
    fs::create_dir_all(&offered).unwrap();
    fs::write(offered.join(pin.packages[1].file_name()), b"modules").unwrap();
    let got = fetch::fetch(
        &pin.packages,
        &cache,
        &[file.clone(), offered.clone()],
        &s,
        &net,
    )
    .unwrap();
    assert!(got.iter().all(|f| f.origin == Origin::HandedIn));
    assert_eq!(got[0].path, file);
    assert_eq!(got[1].path, offered.join(pin.packages[1].file_name()));
    assert!(net.requests.borrow().is_empty());

    // A file that is none of the pinned packages.
    let stranger = dir.join("other.deb");
    fs::write(&stranger, b"something else").unwrap();
    let err = fetch::fetch(&pin.packages, &cache, &[stranger], &s, &net)
        .unwrap_err()
        .to_string();
    assert!(err.contains("other.deb"), "{err}");
    assert!(err.contains("is not one of the pinned packages"), "{err}");
    assert!(err.contains("linux-binary-7, linux-modules-7"), "{err}");

    // A directory whose file has the pinned name but not the pinned bytes.
    fs::write(offered.join(pin.packages[1].file_name()), b"tampered").unwrap();
    let err = fetch::fetch(&pin.packages, &cache, &[offered], &s, &net)
        .unwrap_err()
        .to_string();
    assert!(err.contains("does not match the pinned"), "{err}");
    assert!(err.contains("of linux-modules-7"), "{err}");
    assert!(net.requests.borrow().is_empty());
}

#[test]
fn packages_unpack_into_one_tree() {
    let dir = scratch("unpack");
    let rel = format!("usr/lib/modules/{RELEASE}");
    let binary = common::build_deb(
        &dir,
        "linux-binary-7",
        &[(&format!("{rel}/vmlinuz"), b"kernel")],
    );
    let modules = common::build_deb(
        &dir,
        "linux-modules-7",
        &[(&format!("{rel}/kernel/fs/x.ko.xz"), b"module")],
    );
    let base = common::build_deb(
        &dir,
        "linux-base-7",
        &[(&format!("{rel}/config"), b"CONFIG_X=y\n")],
    );
    let pin = pin_for(&[
        ("linux-binary-7", &binary),
        ("linux-modules-7", &modules),
        ("linux-base-7", &base),
    ]);
    let cache = dir.join("cache");
    let handed: Vec<PathBuf> = ["linux-binary-7", "linux-modules-7", "linux-base-7"]
        .iter()
        .map(|n| dir.join(format!("{n}.deb")))
        .collect();
    let debs = fetch::fetch(
        &pin.packages,
        &cache,
        &handed,
        &sources(),
        &FakeNet::default(),
    )
    .unwrap();
    let tree = fetch::unpack(&pin, &debs, &cache).unwrap();
    assert_eq!(tree.root, cache.join(fetch::tree_name(&pin.packages)));
    assert_eq!(fs::read(&tree.vmlinuz).unwrap(), b"kernel");
    assert_eq!(fs::read(&tree.config).unwrap(), b"CONFIG_X=y\n");
    assert_eq!(
        fs::read(tree.modules_dir.join("kernel/fs/x.ko.xz")).unwrap(),
        b"module"
    );
    // No temporary trees left behind; a second call reuses the tree.
    let names: Vec<_> = fs::read_dir(&cache)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, [fetch::tree_name(&pin.packages)]);
    fs::write(tree.root.join("marker"), b"").unwrap();
    let again = fetch::unpack(&pin, &debs, &cache).unwrap();
    assert!(again.root.join("marker").exists());

    // Without the package holding the config, unpacking names what is missing.
    let partial = pin_for(&[("linux-binary-7", &binary)]);
    let err = fetch::unpack(&partial, &debs[..1], &cache)
        .unwrap_err()
        .to_string();
    assert!(err.contains("no config for release"), "{err}");
}

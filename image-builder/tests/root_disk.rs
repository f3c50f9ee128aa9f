//! Root disks (`cocoon-image build --root-disk`) against independent tools: `fsck.erofs`
//! (erofs-utils) checks the filesystem and extracts the same tree we put in, `veritysetup
//! verify` (cryptsetup-bin) accepts the hash tree at the offset the command line implies, and
//! both refuse a flipped byte. The kernel mounting it is ci/e2e-vm.sh's part.
//!
//! Without the tools the cross-checks fail with a message naming the package, unless
//! `COCOON_SKIP_EROFS_UTILS=1` / `COCOON_SKIP_VERITYSETUP=1` is set (then they say they skipped).

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use image::cpio::{Archive, Entry};
use image::kernel::fetch::{self, Downloader, Sources};
use image::root_disk::{self, RootPackages};
use image::verity::{verify_image, BLOCK_SIZE};
use protocol::guest::RootDisk;

fn tool(name: &str, package: &str, skip_var: &str) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.extend(["/usr/sbin", "/sbin", "/usr/bin"].map(PathBuf::from));
    if let Some(p) = dirs.iter().map(|d| d.join(name)).find(|p| p.is_file()) {
        return Some(p);
    }
    if std::env::var(skip_var).as_deref() == Ok("1") {
        eprintln!("skipped: {name} not found and {skip_var}=1");
        return None;
    }
    panic!("{name} not found: install {package} (apt-get install -y {package}), or set {skip_var}=1 to skip");
}

fn scratch(name: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("root-disk-tests")
        .join(name);
    let _ = fs::remove_dir_all(&d);
    fs::create_dir_all(&d).unwrap();
    d
}

fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd.output().expect("run tool");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// A tree on disk like a GPU variant's extra files: nested directories, a big file spanning
/// many blocks, an empty file, an executable, symlinks, a directory spanning several blocks.
fn extra_tree(dir: &Path) {
    let lib = dir.join("usr/lib/x86_64-linux-gnu");
    fs::create_dir_all(&lib).unwrap();
    let big: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    fs::write(lib.join("libnvidia-ml.so.550.163.01"), &big).unwrap();
    std::os::unix::fs::symlink("libnvidia-ml.so.550.163.01", lib.join("libnvidia-ml.so.1"))
        .unwrap();
    fs::write(lib.join("empty"), b"").unwrap();
    let bin = dir.join("usr/bin");
    fs::create_dir_all(&bin).unwrap();
    fs::write(bin.join("nvidia-persistenced"), b"\x7fELF not really").unwrap();
    fs::set_permissions(
        bin.join("nvidia-persistenced"),
        fs::Permissions::from_mode(0o750),
    )
    .unwrap();
    std::os::unix::fs::symlink("../lib/x86_64-linux-gnu", dir.join("usr/bin/lib")).unwrap();
    let fw = dir.join("lib/firmware/nvidia/550.163.01");
    fs::create_dir_all(&fw).unwrap();
    for i in 0..400 {
        fs::write(
            fw.join(format!("gsp_part_{i:04}_with_a_long_enough_name.bin")),
            [i as u8; 17],
        )
        .unwrap();
    }
}

fn build(dir: &Path) -> (Archive, Vec<u8>, RootDisk) {
    let mut root = Archive::new();
    root_disk::add_tree(&mut root, dir, "").unwrap();
    for d in ["dev", "proc", "sys", "run", "tmp"] {
        root.insert(d, Entry::Dir).unwrap();
    }
    let (disk, params) = root_disk::build(&root).unwrap();
    (root, disk, params)
}

/// Compares an extracted tree with the archive, entry by entry.
fn same_tree(root: &Archive, extracted: &Path) {
    let mut seen = 0;
    for (path, entry) in root.entries() {
        let p = extracted.join(path);
        let meta = fs::symlink_metadata(&p).unwrap_or_else(|e| panic!("{path}: {e}"));
        match entry {
            Entry::Dir => assert!(meta.is_dir(), "{path}"),
            Entry::File { mode, data } => {
                assert!(meta.is_file(), "{path}");
                assert_eq!(&fs::read(&p).unwrap(), data, "{path}");
                assert_eq!(meta.permissions().mode() & 0o777, *mode, "{path}");
            }
            Entry::Symlink(t) => {
                assert_eq!(fs::read_link(&p).unwrap().to_str().unwrap(), t, "{path}")
            }
            Entry::CharDev { .. } => unreachable!(),
        }
        seen += 1;
    }
    let on_disk = walk(extracted);
    assert_eq!(
        on_disk, seen,
        "fsck.erofs extracted entries we did not write"
    );
}

fn walk(d: &Path) -> usize {
    fs::read_dir(d)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            1 + if e.file_type().unwrap().is_dir() {
                walk(&e.path())
            } else {
                0
            }
        })
        .sum()
}

#[test]
fn fsck_erofs_extracts_what_we_wrote() {
    let d = scratch("fsck");
    extra_tree(&d.join("in"));
    let (root, disk, params) = build(&d.join("in"));
    assert!(root.len() > 400);
    let Some(fsck) = tool("fsck.erofs", "erofs-utils", "COCOON_SKIP_EROFS_UTILS") else {
        return;
    };
    let img = d.join("root.img");
    fs::write(&img, &disk).unwrap();
    let (ok, text) = run(Command::new(&fsck)
        .arg(format!("--extract={}", d.join("out").display()))
        .arg(&img));
    assert!(ok, "fsck.erofs: {text}");
    same_tree(&root, &d.join("out"));
    // The filesystem alone (without the hash tree after it) is the same filesystem.
    let fs_only = d.join("fs.img");
    fs::write(&fs_only, &disk[..params.data_blocks as usize * BLOCK_SIZE]).unwrap();
    let (ok, text) = run(Command::new(&fsck).arg(&fs_only));
    assert!(ok, "fsck.erofs (filesystem only): {text}");
    // A damaged superblock magic is refused.
    let mut bad = disk.clone();
    bad[1024] ^= 0xff;
    fs::write(&img, &bad).unwrap();
    let (ok, text) = run(Command::new(&fsck).arg(&img));
    assert!(!ok, "fsck.erofs accepted a bad magic: {text}");
}

#[test]
fn the_hash_tree_verifies_where_the_command_line_says() {
    let d = scratch("verity");
    extra_tree(&d.join("in"));
    let (_, disk, params) = build(&d.join("in"));
    let fs_len = params.data_blocks as usize * BLOCK_SIZE;
    assert_eq!(disk.len() % BLOCK_SIZE, 0);
    // Our own verifier over data and hash device.
    let sb = verify_image(&disk[..fs_len], &disk[fs_len..], &params.root_hash).unwrap();
    assert_eq!(sb.salt.as_bytes(), &params.salt[..]);
    assert_eq!(params.hash_start_block(), params.data_blocks + 1);
    // The command-line word round-trips.
    let word = params.cmdline_word();
    assert_eq!(RootDisk::from_cmdline(&word).unwrap(), Some(params.clone()));
    // Same inputs, same disk.
    let (_, again, _) = build(&d.join("in"));
    assert_eq!(again, disk);

    let mut flipped = disk.clone();
    flipped[fs_len / 2] ^= 1;
    assert!(verify_image(&flipped[..fs_len], &flipped[fs_len..], &params.root_hash).is_err());

    // What `cocoon-image verify-root` runs: the disk the command line names, and nothing else.
    root_disk::verify(&disk, &params).unwrap();
    let err = |d: &[u8], p: &RootDisk| format!("{:#}", root_disk::verify(d, p).unwrap_err());
    let e = err(&flipped, &params);
    assert!(
        e.contains("does not match the command line's root hash"),
        "{e}"
    );
    let e = err(&disk[..fs_len - BLOCK_SIZE], &params);
    assert!(e.contains("shorter than"), "{e}");
    let mut longer = disk.clone();
    longer.extend_from_slice(&[0; BLOCK_SIZE]);
    let e = err(&longer, &params);
    assert!(e.contains("does not match"), "{e}");
    let other_salt = RootDisk {
        salt: vec![9; 32],
        ..params.clone()
    };
    let e = err(&disk, &other_salt);
    assert!(e.contains("salt"), "{e}");
    let other_root = RootDisk {
        root_hash: [7; 32],
        ..params.clone()
    };
    let e = err(&disk, &other_root);
    assert!(e.contains(&hex::encode([7u8; 32])), "{e}");

    let Some(vs) = tool("veritysetup", "cryptsetup-bin", "COCOON_SKIP_VERITYSETUP") else {
        return;
    };
    let img = d.join("root.img");
    let check = |bytes: &[u8]| {
        fs::write(&img, bytes).unwrap();
        run(Command::new(&vs)
            .arg("verify")
            .arg(&img)
            .arg(&img)
            .arg(hex::encode(params.root_hash))
            .arg(format!("--hash-offset={fs_len}")))
    };
    let (ok, text) = check(&disk);
    assert!(ok, "veritysetup verify: {text}");
    let (ok, text) = check(&flipped);
    assert!(!ok, "veritysetup accepted a flipped byte: {text}");
}

#[test]
fn what_cannot_go_on_a_root_disk_is_named() {
    let d = scratch("refused");
    let dir = d.join("in");
    fs::create_dir_all(&dir).unwrap();
    nix_mkfifo(&dir.join("pipe"));
    let mut root = Archive::new();
    let err = root_disk::add_tree(&mut root, &dir, "")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("pipe") && err.contains("only files, directories and symlinks"),
        "{err}"
    );
    let err = root_disk::add_tree(&mut root, &d.join("missing"), "")
        .unwrap_err()
        .to_string();
    assert!(err.contains("missing"), "{err}");
}

fn nix_mkfifo(path: &Path) {
    let ok = Command::new("mkfifo").arg(path).status().unwrap().success();
    assert!(ok, "mkfifo");
}

/// A downloader that must not be used: every package is handed in.
struct NoNetwork;

impl Downloader for NoNetwork {
    fn download(&self, url: &str, _dest: &Path) -> anyhow::Result<()> {
        panic!("no download expected, got {url}")
    }
}

fn pin_text(packages: &[(&str, &[u8])], take: &[(&str, Option<&str>)]) -> String {
    let mut t = String::new();
    for (from, to) in take {
        t.push_str(&format!("[[take]]\nfrom = \"{from}\"\n"));
        if let Some(to) = to {
            t.push_str(&format!("to = \"{to}\"\n"));
        }
    }
    for (name, deb) in packages {
        t.push_str(&format!(
            "[[package]]\nname = \"{name}\"\nversion = \"7.0.0-1~bpo13+1\"\npool = \"pool/non-free/n/{name}\"\n\
             sha256 = \"{}\"\nsha1 = \"{}\"\n",
            hex::encode(<sha2::Sha256 as sha2::Digest>::digest(deb)),
            "0".repeat(40)
        ));
    }
    t
}

#[test]
fn pinned_packages_put_the_taken_paths_on_the_root_disk() {
    let d = scratch("packages");
    let ml = common::build_deb_with_links(
        &d,
        "libnvidia-ml1",
        &[
            (
                "usr/lib/x86_64-linux-gnu/nvidia/current/libnvidia-ml.so.550.163.01",
                b"ml" as &[u8],
            ),
            ("usr/share/doc/libnvidia-ml1/copyright", b"not taken"),
        ],
        &[(
            "usr/lib/x86_64-linux-gnu/nvidia/current/libnvidia-ml.so.1",
            "libnvidia-ml.so.550.163.01",
        )],
    );
    let fw = common::build_deb(
        &d,
        "firmware-nvidia-gsp",
        &[
            (
                "usr/lib/firmware/nvidia/550.163.01/gsp_ga10x.bin",
                &[7u8; 9000] as &[u8],
            ),
            (
                "usr/lib/firmware/nvidia/550.163.01/gsp_tu10x.bin",
                &[8u8; 5000],
            ),
        ],
    );
    let text = pin_text(
        &[("libnvidia-ml1", &ml), ("firmware-nvidia-gsp", &fw)],
        &[
            (
                "usr/lib/x86_64-linux-gnu/nvidia/current/libnvidia-ml.so.550.163.01",
                Some("usr/lib/x86_64-linux-gnu/libnvidia-ml.so.550.163.01"),
            ),
            ("usr/lib/x86_64-linux-gnu/nvidia/current/libnvidia-ml.so.1", None),
            ("usr/lib/firmware/nvidia", Some("lib/firmware/nvidia")),
        ],
    ) + "[[link]]\npath = \"usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1\"\ntarget = \"libnvidia-ml.so.550.163.01\"\n";
    let pin = RootPackages::parse(&text, "gpu-root.toml").unwrap();
    fs::write(d.join("libnvidia-ml1.deb"), &ml).unwrap();
    fs::write(d.join("firmware-nvidia-gsp.deb"), &fw).unwrap();
    let cache = d.join("cache");
    let debs = fetch::fetch(
        &pin.packages,
        &cache,
        &[
            d.join("libnvidia-ml1.deb"),
            d.join("firmware-nvidia-gsp.deb"),
        ],
        &Sources::default(),
        &NoNetwork,
    )
    .unwrap();
    let tree = fetch::unpack_tree(&pin.packages, &debs, &cache).unwrap();
    let mut root = Archive::new();
    pin.add_to(&mut root, &tree).unwrap();
    let e = root.entries();
    assert_eq!(
        e["usr/lib/x86_64-linux-gnu/nvidia/current/libnvidia-ml.so.1"],
        Entry::Symlink("libnvidia-ml.so.550.163.01".into())
    );
    assert!(
        matches!(&e["lib/firmware/nvidia/550.163.01/gsp_ga10x.bin"], Entry::File { data, .. } if data.len() == 9000)
    );
    assert_eq!(
        e["usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1"],
        Entry::Symlink("libnvidia-ml.so.550.163.01".into())
    );
    assert!(
        matches!(&e["usr/lib/x86_64-linux-gnu/libnvidia-ml.so.550.163.01"], Entry::File { data, .. } if data == b"ml")
    );
    assert!(
        !e.keys()
            .any(|k| k.contains("doc") || k.starts_with("usr/lib/firmware")),
        "only the taken paths, where they go"
    );

    // On the disk, as fsck.erofs reads it.
    let (disk, _) = root_disk::build(&root).unwrap();
    if let Some(fsck) = tool("fsck.erofs", "erofs-utils", "COCOON_SKIP_EROFS_UTILS") {
        let img = d.join("root.img");
        fs::write(&img, &disk).unwrap();
        let out = d.join("out");
        let (ok, text) = run(Command::new(&fsck)
            .arg(format!("--extract={}", out.display()))
            .arg(&img));
        assert!(ok, "fsck.erofs: {text}");
        same_tree(&root, &out);
    }

    // A taken path the packages lack, and a path taken twice, are named.
    let mut bad = pin.clone();
    bad.take.push(image::root_disk::Take {
        from: "usr/lib/libcuda.so.1".into(),
        to: None,
    });
    let err = format!("{:#}", bad.add_to(&mut Archive::new(), &tree).unwrap_err());
    assert!(
        err.contains("usr/lib/libcuda.so.1") && err.contains("not in the pinned packages"),
        "{err}"
    );
    let err = format!("{:#}", pin.add_to(&mut root, &tree).unwrap_err());
    assert!(err.contains("on the root disk twice"), "{err}");
}

#[test]
fn root_package_pins_are_checked() {
    let good = pin_text(&[("libnvidia-ml1", b"x")], &[("usr/lib", None)]);
    assert!(RootPackages::parse(&good, "p.toml").is_ok());
    for (text, want) in [
        ("[[take]]\nfrom = \"usr\"\n".to_string(), "no [[package]]"),
        (
            good.replace("[[take]]\nfrom = \"usr/lib\"\n", ""),
            "no [[take]]",
        ),
        (
            good.replace("\"usr/lib\"", "\"../etc\""),
            "not a relative path",
        ),
        (
            good.replace("\"usr/lib\"", "\"/usr\""),
            "not a relative path",
        ),
        (good.replace("pool/non-free", "pool/../x"), "pool"),
        (
            format!(
                "{good}{}",
                good.replace("[[take]]\nfrom = \"usr/lib\"\n", "")
            ),
            "listed twice",
        ),
        (format!("extra = 1\n{good}"), "unknown field"),
        (
            format!("{good}[[link]]\npath = \"/abs\"\ntarget = \"x\"\n"),
            "link",
        ),
        (
            good.replace("from = \"usr/lib\"", "from = \"usr/lib\"\nto = \"a//b\""),
            "not a relative path",
        ),
    ] {
        let err = format!("{:#}", RootPackages::parse(&text, "p.toml").unwrap_err());
        assert!(
            err.contains(want) && err.starts_with("p.toml"),
            "{want:?} not in {err:?}"
        );
    }
}

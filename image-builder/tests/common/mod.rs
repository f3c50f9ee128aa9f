//! Shared by the image-builder tests: .deb files built on the spot.

#![allow(dead_code)]

use std::fs;
use std::path::Path;
use std::process::Command;

/// Builds a .deb named `name` holding `files` (path → contents) with `dpkg-deb --build`.
pub fn build_deb(dir: &Path, name: &str, files: &[(&str, &[u8])]) -> Vec<u8> {
    build_deb_with_links(dir, name, files, &[])
}

/// [`build_deb`] with symlinks too (path → target).
pub fn build_deb_with_links(
    dir: &Path,
    name: &str,
    files: &[(&str, &[u8])],
    links: &[(&str, &str)],
) -> Vec<u8> {
    let root = dir.join(format!("src-{name}"));
    fs::create_dir_all(root.join("DEBIAN")).unwrap();
    fs::write(
        root.join("DEBIAN/control"),
        format!(
            "Package: {name}\nVersion: 7.0.0-1~bpo13+1\nArchitecture: amd64\n\
             Maintainer: test <test@example.invalid>\nDescription: test\n"
        ),
    )
    .unwrap();
    for (path, contents) in files {
        let p = root.join(path);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, contents).unwrap();
    }
    for (path, target) in links {
        let p = root.join(path);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::os::unix::fs::symlink(target, p).unwrap();
    }
    let out = dir.join(format!("{name}.deb"));
    let status = Command::new("dpkg-deb")
        .args(["--root-owner-group", "--build"])
        .arg(&root)
        .arg(&out)
        .output()
        .expect("dpkg-deb (package dpkg)");
    assert!(status.status.success(), "{status:?}");
    fs::read(out).unwrap()
}

//! `cocoon-image build --role worker|proxy --out DIR`: kernel + initramfs + cmdline + manifest.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context};
use sha2::{Digest, Sha256};

use image::cpio::{Archive, Entry};
use image::elf;
use image::kernel::{self, fetch, KernelPin};
use image::manifest::{
    Artifact, ImageManifest, KernelPackage as ManifestPackage, KernelPin as ManifestKernel,
    IMAGE_MANIFEST_FORMAT,
};
use image::registers::{self, Platform, VmShape};
use image::root_disk;

/// Arguments of `cocoon-image build`.
#[derive(clap::Args, Debug)]
pub struct BuildArgs {
    /// The guest role: which service the image runs.
    #[arg(long, value_parser = ["worker", "proxy"])]
    pub role: String,
    /// Output directory (created; existing artifacts are replaced).
    #[arg(long)]
    pub out: PathBuf,
    /// Directory holding the static `cocoon-init` and `cocoon-<role>` binaries
    /// (default: the directory of cocoon-image itself).
    #[arg(long)]
    pub bin_dir: Option<PathBuf>,
    /// The service binary, instead of `cocoon-<role>` in the bin dir. With `--root-disk` it may
    /// be dynamically linked (e.g. the GPU worker, which loads NVML): the build then checks
    /// that the root disk holds its loader and every library it and the disk's other
    /// libraries need (see docs/guest-appliance.md, "Dynamically linked services").
    #[arg(long, value_name = "FILE")]
    pub service: Option<PathBuf>,
    /// A pinned kernel .deb to use instead of fetching it (matched by its sha256), or a
    /// directory holding pinned .deb files under their archive names. Repeatable; packages not
    /// handed in come from the cache or are downloaded.
    #[arg(long = "kernel-deb", value_name = "DEB_OR_DIR")]
    pub kernel_deb: Vec<PathBuf>,
    /// Cache for the pinned packages (kernel, `--root-packages`) and their unpacked trees
    /// (default: ~/.cache/cocoon/kernel).
    #[arg(long)]
    pub cache: Option<PathBuf>,
    /// Which platform the manifest's registers are for.
    #[arg(long, value_enum, default_value = "sim")]
    pub platform: Platform,
    /// Guest memory the registers assume (QEMU patches the kernel header with it), e.g. 2G.
    #[arg(long, default_value = "2G", value_parser = registers::parse_size)]
    pub memory: u64,
    /// tdx: the TDVF firmware file (MRTD is computed from it).
    #[arg(long)]
    pub firmware: Option<PathBuf>,
    /// tdx: RTMR0 pinned from the event-log replay of a real boot (it covers QEMU's ACPI
    /// tables and the TD HOB, which cocoon cannot compute from artifacts).
    #[arg(long)]
    pub rtmr0: Option<String>,
    /// Source commit recorded in the manifest (default: `git rev-parse HEAD` if available).
    #[arg(long)]
    pub source_commit: Option<String>,
    /// Publisher named in `measurement.json` (the release manifest content for this role).
    #[arg(long, default_value = "cocoon-image")]
    pub publisher: String,
    /// Put the service binary (and `--root-extra`) on a read-only root disk (`root.img`: EROFS
    /// plus its dm-verity hash tree, the root hash on the measured command line) instead of the
    /// initramfs, which then holds only cocoon-init and the modules that mount it.
    #[arg(long)]
    pub root_disk: bool,
    /// A directory copied onto the root disk as is (files, directories, symlinks; permission
    /// bits kept, owners and times not), e.g. a GPU driver's user-space libraries. Needs
    /// `--root-disk`.
    #[arg(long, requires = "root_disk")]
    pub root_extra: Option<PathBuf>,
    /// A pin file of Debian packages whose files go on the root disk (e.g.
    /// `image-builder/gpu-root.toml`): fetched and checked like the kernel's, cached with them.
    /// Needs `--root-disk`.
    #[arg(long, requires = "root_disk", value_name = "TOML")]
    pub root_packages: Option<PathBuf>,
    /// A `--root-packages` .deb to use instead of fetching it (matched by its sha256), or a
    /// directory of them under their archive names. Repeatable.
    #[arg(
        long = "root-deb",
        value_name = "DEB_OR_DIR",
        requires = "root_packages"
    )]
    pub root_deb: Vec<PathBuf>,
    /// `issued_at` of `measurement.json`, Unix seconds (default: $SOURCE_DATE_EPOCH, else 0, so
    /// that builds stay reproducible; publishers set the real time when they assemble releases).
    #[arg(long)]
    pub issued_at: Option<u64>,
}

fn progress(start: Instant, what: &str) {
    eprintln!(
        "cocoon-image: [{:>6.2}s] {what}",
        start.elapsed().as_secs_f64()
    );
}

fn default_bin_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("locate cocoon-image")?;
    Ok(exe.parent().map(Path::to_path_buf).unwrap_or_default())
}

fn default_cache() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/tmp"))
        .join(".cache/cocoon/kernel")
}

/// Reads a binary without its symbol table (`strip --strip-all`, binutils; the guest never
/// needs symbols and they are a fifth of the worker's size). Unless `dynamic_ok`, it must be
/// statically linked: the initramfs has no shared libraries.
fn read_binary(path: &Path, scratch: &Path, dynamic_ok: bool) -> anyhow::Result<Vec<u8>> {
    let bytes = std::fs::read(path).with_context(|| format!("read {}", path.display()))?;
    match elf::check_static(&bytes) {
        Ok(()) => {}
        Err(elf::ElfError::Dynamic) if dynamic_ok => {}
        Err(elf::ElfError::Dynamic) => {
            bail!(
                "{}: dynamically linked; build it with crt-static, or put it on a root disk \
                 (--root-disk, its libraries through --root-packages)",
                path.display()
            )
        }
        Err(e) => return Err(e).with_context(|| path.display().to_string()),
    }
    let tmp = scratch.join(format!(
        ".strip-{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("bin")
    ));
    let status = std::process::Command::new("strip")
        .arg("--strip-all")
        .arg("-o")
        .arg(&tmp)
        .arg(path)
        .status()
        .context("run strip (binutils)")?;
    if !status.success() {
        bail!("strip {} failed ({status})", path.display());
    }
    let stripped = std::fs::read(&tmp).with_context(|| format!("read {}", tmp.display()))?;
    let _ = std::fs::remove_file(&tmp);
    Ok(stripped)
}

fn artifact(bytes: &[u8]) -> Artifact {
    Artifact {
        sha256: hex::encode(Sha256::digest(bytes)),
        size: bytes.len() as u64,
    }
}

/// The kernel command line of a role's image (measured into RTMR2).
pub fn cmdline(role: &str) -> String {
    format!("console=ttyS0 panic=-1 quiet cocoon.role={role}")
}

pub fn run(args: &BuildArgs) -> anyhow::Result<()> {
    let start = Instant::now();
    let pin = KernelPin::pinned()?;
    let bin_dir = match &args.bin_dir {
        Some(d) => d.clone(),
        None => default_bin_dir()?,
    };
    let cache = args.cache.clone().unwrap_or_else(default_cache);

    let debs = fetch::fetch(
        &pin.packages,
        &cache,
        &args.kernel_deb,
        &fetch::Sources::default(),
        &fetch::Curl,
    )?;
    let unpacked = fetch::unpack(&pin, &debs, &cache)?;
    let config = std::fs::read_to_string(&unpacked.config)
        .with_context(|| format!("read {}", unpacked.config.display()))?;
    let missing = kernel::check_config(&config, &pin.config.required);
    if !missing.is_empty() {
        bail!(
            "kernel {} config ({}): {}",
            pin.release,
            unpacked.config.display(),
            missing
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ")
        );
    }
    progress(
        start,
        &format!(
            "kernel {} ({} packages, {} config lines checked)",
            pin.release,
            debs.len(),
            pin.config.required.len()
        ),
    );

    std::fs::create_dir_all(&args.out).with_context(|| format!("mkdir {}", args.out.display()))?;
    let init = read_binary(&bin_dir.join("cocoon-init"), &args.out, false)?;
    let service_name = format!("cocoon-{}", args.role);
    let service_path = args
        .service
        .clone()
        .unwrap_or_else(|| bin_dir.join(&service_name));
    let service = read_binary(&service_path, &args.out, args.root_disk)?;

    let modules = if args.root_disk {
        pin.modules_for_root_disk(&args.role)
    } else {
        pin.modules_for(&args.role)
    };
    let mut module_bytes = BTreeMap::new();
    for rel in &modules {
        let path = unpacked.modules_dir.join(rel);
        let bytes = std::fs::read(&path).with_context(|| format!("read {}", path.display()))?;
        module_bytes.insert(rel.clone(), bytes);
    }
    kernel::check_order(&modules, |rel| {
        let info = kernel::decompress_module(&unpacked.modules_dir.join(rel))?;
        match kernel::module_release(&info) {
            Some(r) if r == pin.release => {}
            other => bail!(
                "module {rel} is built for kernel {}, not {}",
                other.as_deref().unwrap_or("(no vermagic)"),
                pin.release
            ),
        }
        Ok(kernel::module_depends(&info))
    })?;
    progress(
        start,
        &format!(
            "{} modules, dependency order and vermagic checked",
            modules.len()
        ),
    );

    let mut archive = Archive::new();
    for dir in ["proc", "sys", "dev", "run", "tmp"] {
        archive.insert(dir, Entry::Dir)?;
    }
    archive.insert("dev/console", Entry::CharDev { major: 5, minor: 1 })?;
    archive.insert(
        "init",
        Entry::File {
            mode: 0o755,
            data: init,
        },
    )?;
    let service_entry = Entry::File {
        mode: 0o755,
        data: service,
    };
    let root = if args.root_disk {
        archive.insert("sysroot", Entry::Dir)?;
        let mut root = Archive::new();
        if let Some(file) = &args.root_packages {
            let text = std::fs::read_to_string(file)
                .with_context(|| format!("read {}", file.display()))?;
            let pin = root_disk::RootPackages::parse(&text, &file.display().to_string())?;
            let debs = fetch::fetch(
                &pin.packages,
                &cache,
                &args.root_deb,
                &fetch::Sources::default(),
                &fetch::Curl,
            )?;
            let tree = fetch::unpack_tree(&pin.packages, &debs, &cache)?;
            pin.add_to(&mut root, &tree)?;
            progress(
                start,
                &format!(
                    "root packages: {} from {}, {} paths taken",
                    pin.packages.len(),
                    file.display(),
                    pin.take.len()
                ),
            );
        }
        if let Some(extra) = &args.root_extra {
            root_disk::add_tree(&mut root, extra, "")?;
        }
        for dir in ["dev", "proc", "sys", "run", "tmp"] {
            if root.entries().contains_key(dir) {
                bail!("{dir} is a mount point on the root disk: --root-extra and --root-packages may not put anything there");
            }
            root.insert(dir, Entry::Dir)?;
        }
        let bin = format!("bin/{service_name}");
        if root.entries().contains_key(&bin) {
            bail!("{bin} is the service binary: --root-extra and --root-packages may not put anything there");
        }
        root.insert(&bin, service_entry)?;
        let linked = root_disk::check_libraries(&root)?;
        if linked > 0 {
            progress(
                start,
                &format!("root disk: {linked} dynamically linked objects find their loader and libraries on it"),
            );
        }
        let disk = root_disk::build(&root)?;
        progress(
            start,
            &format!(
                "root disk: {} entries, {} blocks of EROFS, {} bytes with its hash tree",
                root.len(),
                disk.1.data_blocks,
                disk.0.len()
            ),
        );
        Some(disk)
    } else {
        archive.insert(&format!("bin/{service_name}"), service_entry)?;
        None
    };
    let mut list = String::new();
    for (rel, bytes) in module_bytes {
        let in_image = format!("{}/{rel}", pin.release);
        archive.insert(
            &format!("lib/modules/{in_image}"),
            Entry::File {
                mode: 0o644,
                data: bytes,
            },
        )?;
        let _ = &in_image;
    }
    for rel in &modules {
        list.push_str(&format!("{}/{rel}\n", pin.release));
    }
    archive.insert(
        "etc/cocoon/modules",
        Entry::File {
            mode: 0o644,
            data: list.into_bytes(),
        },
    )?;
    let initramfs = archive.to_cpio_gz()?;
    progress(
        start,
        &format!(
            "initramfs: {} entries, {} bytes gzip",
            archive.len(),
            initramfs.len()
        ),
    );

    let vmlinuz = std::fs::read(&unpacked.vmlinuz)
        .with_context(|| format!("read {}", unpacked.vmlinuz.display()))?;
    let mut cmdline = cmdline(&args.role);
    if let Some((_, params)) = &root {
        cmdline.push(' ');
        cmdline.push_str(&params.cmdline_word());
    }

    let firmware = match &args.firmware {
        Some(p) => Some(std::fs::read(p).with_context(|| format!("read {}", p.display()))?),
        None => None,
    };
    let shape = VmShape {
        memory: args.memory,
    };
    let (regs, sources) = registers::expected(
        args.platform,
        &vmlinuz,
        &initramfs,
        &cmdline,
        &shape,
        firmware.as_deref(),
        args.rtmr0.as_deref(),
    )?;
    progress(start, "registers computed");

    let mut artifacts = BTreeMap::new();
    for (name, bytes) in [
        ("vmlinuz", &vmlinuz[..]),
        ("initramfs.cpio.gz", &initramfs[..]),
        ("cmdline", cmdline.as_bytes()),
    ] {
        let path = args.out.join(name);
        std::fs::write(&path, bytes).with_context(|| format!("write {}", path.display()))?;
        artifacts.insert(name.to_string(), artifact(bytes));
    }
    if let Some((disk, _)) = &root {
        let path = args.out.join(ROOT_DISK);
        std::fs::write(&path, disk).with_context(|| format!("write {}", path.display()))?;
        artifacts.insert(ROOT_DISK.to_string(), artifact(disk));
    } else {
        // A stale root disk from an earlier build must not sit next to this image.
        let _ = std::fs::remove_file(args.out.join(ROOT_DISK));
    }
    let manifest = ImageManifest {
        format: IMAGE_MANIFEST_FORMAT.into(),
        role: args.role.clone(),
        artifacts,
        kernel: ManifestKernel {
            package: pin.boot_package().name.clone(),
            version: pin.boot_package().version.clone(),
            deb_sha256: pin.boot_package().sha256.clone(),
            packages: pin
                .packages
                .iter()
                .map(|p| ManifestPackage {
                    name: p.name.clone(),
                    version: p.version.clone(),
                    deb_sha256: p.sha256.clone(),
                })
                .collect(),
        },
        cmdline,
        platform: args.platform.name().into(),
        memory: args.memory,
        image_hash: regs.image_hash(),
        registers: regs,
        register_sources: sources,
        source_commit: args.source_commit.clone().or_else(git_head),
    };
    let mut json = serde_json::to_string_pretty(&manifest)?;
    json.push('\n');
    let path = args.out.join("manifest.json");
    std::fs::write(&path, json).with_context(|| format!("write {}", path.display()))?;

    // The release manifest content for this role (measurements::manifest), ready for
    // `cocoon-measure manifest sign` (or to be combined with other roles by
    // `cocoon-measure manifest from-images`).
    let issued_at = args.issued_at.unwrap_or_else(|| {
        std::env::var("SOURCE_DATE_EPOCH")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    });
    let mut release = measurements::manifest::Manifest::new(args.publisher.clone(), issued_at)
        .with_role(args.role.clone(), manifest.registers);
    release.source_commit = manifest.source_commit.clone();
    let mut json = serde_json::to_string_pretty(&release)?;
    json.push('\n');
    let path = args.out.join("measurement.json");
    std::fs::write(&path, json).with_context(|| format!("write {}", path.display()))?;
    progress(start, &format!("wrote {}", args.out.display()));
    for (name, a) in &manifest.artifacts {
        println!("{}  {name}", a.sha256);
    }
    println!("{}  image_hash ({})", manifest.image_hash, manifest.role);
    if initramfs.len() > 60 << 20 {
        bail!(
            "initramfs is {} bytes, over the 60 MB budget",
            initramfs.len()
        );
    }
    Ok(())
}

/// The root disk's file in an image directory.
pub const ROOT_DISK: &str = protocol::guest::ROOT_DISK_FILE;

fn git_head() -> Option<String> {
    let out = std::process::Command::new("git")
        .args(["rev-parse", "HEAD"])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
        .filter(|s| s.len() == 40)
}

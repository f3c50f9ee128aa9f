//! `cocoon-image model`: a GGUF file → a dm-verity model disk.
//!
//! Writes into `--out`:
//! * `model.img`: the GGUF bytes zero-padded to a multiple of 4096 (the data device; the worker
//!   reads the GGUF straight from the verity device, no filesystem),
//! * `model.verity`: the hash device (superblock + hash tree, [`image::verity`]),
//! * `model.json`: [`ModelDisk`], including what the guest needs for the dm table.
//!
//! Same GGUF, name and salt ⇒ identical bytes: the salt and UUID are derived from the GGUF's
//! SHA-256 (unless `--salt` is given) and no paths or times are recorded. Steps: copy + hash the
//! GGUF, hash the image into a tree, write the hash device, write `model.json` last. Each file is
//! written under a `.partial` name and renamed, and an old `model.json` is removed first, so a
//! failed run never leaves a `model.json` that describes other files. Large inputs report progress
//! on stderr.

use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use anyhow::Context;
use image::verity::{self, HashTree, ModelDisk, Salt, VerityUuid, BLOCK_SIZE};
use sha2::{Digest, Sha256};

/// Data device file name.
pub const IMAGE_FILE: &str = "model.img";
/// Hash device file name.
pub const VERITY_FILE: &str = "model.verity";
/// Record file name.
pub const JSON_FILE: &str = "model.json";

const GGUF_MAGIC: &[u8; 4] = b"GGUF";
const CHUNK: usize = 1 << 20;
/// Inputs at least this large report progress.
const PROGRESS_MIN: u64 = 256 << 20;

/// Arguments of `cocoon-image model`.
#[derive(clap::Args, Debug)]
pub struct ModelArgs {
    /// The GGUF model file.
    #[arg(long, value_name = "FILE")]
    pub gguf: PathBuf,
    /// Output directory (created if missing); model.img, model.verity and model.json in it are
    /// replaced.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Model name clients ask for (1-128 printable ASCII characters, no spaces). Default: the
    /// GGUF file stem, lowercased, characters outside [a-z0-9._-] replaced by '-'.
    #[arg(long, value_parser = parse_name)]
    pub name: Option<String>,
    /// dm-verity salt in hex (at most 256 bytes; "-" for none). Default:
    /// SHA-256("cocoon/verity-salt/v1\0" || SHA-256 of the GGUF).
    #[arg(long, value_name = "HEX", value_parser = parse_salt)]
    pub salt: Option<Salt>,
}

fn parse_name(s: &str) -> Result<String, String> {
    verity::check_model_name(s).map_err(|e| e.to_string())?;
    Ok(s.to_string())
}

fn parse_salt(s: &str) -> Result<Salt, String> {
    Salt::from_hex(s).map_err(|e| e.to_string())
}

/// The default model name for a GGUF path.
pub fn default_name(gguf: &Path) -> String {
    let stem = gguf
        .file_stem()
        .map(|s| s.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    let name: String = stem
        .chars()
        .map(|c| match c {
            'a'..='z' | '0'..='9' | '.' | '_' | '-' => c,
            _ => '-',
        })
        .take(128)
        .collect();
    if name.is_empty() {
        "model".into()
    } else {
        name
    }
}

pub fn run(args: &ModelArgs) -> anyhow::Result<()> {
    let out = &args.out;
    fs::create_dir_all(out).with_context(|| format!("create {}", out.display()))?;
    let json_path = out.join(JSON_FILE);
    remove_if_present(&json_path)?;

    let copied = copy_padded(&args.gguf, &out.join(IMAGE_FILE))?;
    let name = args
        .name
        .clone()
        .unwrap_or_else(|| default_name(&args.gguf));
    let salt = match &args.salt {
        Some(s) => s.clone(),
        None => Salt::derived(&copied.source_sha256),
    };
    let uuid = VerityUuid::derived(&copied.source_sha256);
    let tree = hash_image(&out.join(IMAGE_FILE), copied.image_size, salt.clone())?;
    let verity_sha256 = write_hash_device(&tree, uuid, &out.join(VERITY_FILE))?;

    let disk = ModelDisk {
        format: verity::MODEL_DISK_FORMAT.into(),
        name,
        source_sha256: copied.source_sha256,
        source_size: copied.source_size,
        data_blocks: tree.geometry().data_blocks(),
        data_block_size: BLOCK_SIZE as u32,
        hash_block_size: BLOCK_SIZE as u32,
        hash_algorithm: verity::HashAlgorithm::Sha256,
        salt,
        uuid,
        root_hash: *tree.root(),
        hash_start_block: verity::HASH_START_BLOCK,
        image_sha256: copied.image_sha256,
        verity_sha256,
    };
    disk.validate()
        .context("model.json about to be written is invalid")?;
    write_renamed(&json_path, |w| w.write_all(disk.to_json().as_bytes()))?;

    println!("model:     {}", disk.name);
    println!("root hash: {}", hex::encode(disk.root_hash));
    println!(
        "dm table:  {}",
        verity::dm_table(&disk, "<data_dev>", "<hash_dev>")
    );
    println!("wrote:     {}", json_path.display());
    Ok(())
}

struct Copied {
    source_sha256: [u8; 32],
    source_size: u64,
    image_sha256: [u8; 32],
    image_size: u64,
}

/// Copies the GGUF into `dest`, zero-padded to whole blocks, hashing source and image.
fn copy_padded(gguf: &Path, dest: &Path) -> anyhow::Result<Copied> {
    let mut src = File::open(gguf).with_context(|| format!("open {}", gguf.display()))?;
    let expected = src
        .metadata()
        .with_context(|| format!("stat {}", gguf.display()))?
        .len();
    if expected == 0 {
        anyhow::bail!("{}: empty file", gguf.display());
    }
    let mut source = Sha256::new();
    let mut image_sha256 = [0u8; 32];
    let mut progress = Progress::new("copying", gguf, expected);
    let mut size = 0u64;
    let mut buf = vec![0u8; CHUNK];
    write_renamed(dest, |w| {
        loop {
            let n = match src.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if size == 0 && (n < GGUF_MAGIC.len() || &buf[..4] != GGUF_MAGIC) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "not a GGUF file (no GGUF magic at offset 0)",
                ));
            }
            source.update(&buf[..n]);
            w.write_all(&buf[..n])?;
            size += n as u64;
            progress.at(size);
        }
        let pad = (size.next_multiple_of(BLOCK_SIZE as u64) - size) as usize;
        let zeros = vec![0u8; pad];
        // The image is the source plus zeros: continue from a copy of the source digest.
        let mut image = source.clone();
        image.update(&zeros);
        image_sha256 = image.finalize().into();
        w.write_all(&zeros)
    })
    .with_context(|| format!("copy {} to {}", gguf.display(), dest.display()))?;
    if size != expected {
        anyhow::bail!(
            "{}: changed while reading ({expected} bytes at start, read {size})",
            gguf.display()
        );
    }
    Ok(Copied {
        source_sha256: source.finalize().into(),
        source_size: size,
        image_sha256,
        image_size: size.next_multiple_of(BLOCK_SIZE as u64),
    })
}

fn hash_image(img: &Path, size: u64, salt: Salt) -> anyhow::Result<HashTree> {
    let f = File::open(img).with_context(|| format!("open {}", img.display()))?;
    let mut progress = Progress::new("hashing", img, size);
    HashTree::from_reader(f, size, salt, &mut |done| progress.at(done))
        .with_context(|| format!("hash tree of {}", img.display()))
}

/// Writes the hash device and returns its SHA-256.
fn write_hash_device(tree: &HashTree, uuid: VerityUuid, dest: &Path) -> anyhow::Result<[u8; 32]> {
    let mut digest = Sha256::new();
    write_renamed(dest, |w| {
        let mut hashing = HashingWriter {
            inner: w,
            digest: &mut digest,
        };
        tree.write_hash_device(uuid, &mut hashing)
    })
    .with_context(|| format!("write {}", dest.display()))?;
    Ok(digest.finalize().into())
}

struct HashingWriter<'a, W> {
    inner: W,
    digest: &'a mut Sha256,
}

impl<W: Write> Write for HashingWriter<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.digest.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Writes `dest.partial` through `fill`, then renames it to `dest`.
fn write_renamed(
    dest: &Path,
    fill: impl FnOnce(&mut BufWriter<File>) -> io::Result<()>,
) -> anyhow::Result<()> {
    let mut tmp = dest.as_os_str().to_owned();
    tmp.push(".partial");
    let tmp = PathBuf::from(tmp);
    let f = File::create(&tmp).with_context(|| format!("create {}", tmp.display()))?;
    let mut w = BufWriter::with_capacity(CHUNK, f);
    let result = fill(&mut w).and_then(|()| w.flush());
    if let Err(e) = result {
        drop(w);
        let _ = fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("write {}", tmp.display()));
    }
    drop(w);
    fs::rename(&tmp, dest)
        .with_context(|| format!("rename {} to {}", tmp.display(), dest.display()))
}

fn remove_if_present(path: &Path) -> anyhow::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("remove old {}", path.display()))
        }
        _ => Ok(()),
    }
}

/// Progress lines on stderr for inputs of at least 256 MiB: every 5% or 256 MiB, whichever
/// comes first.
struct Progress {
    what: String,
    total: u64,
    step: u64,
    next: u64,
}

impl Progress {
    fn new(verb: &str, path: &Path, total: u64) -> Self {
        let step = (total / 20).clamp(1, 256 << 20);
        Self {
            what: format!("{verb} {}", path.display()),
            total,
            step,
            next: if total >= PROGRESS_MIN {
                step
            } else {
                u64::MAX
            },
        }
    }

    fn at(&mut self, done: u64) {
        if done < self.next {
            return;
        }
        while self.next <= done {
            self.next = self.next.saturating_add(self.step);
        }
        eprintln!(
            "cocoon-image: {}: {}% ({} of {} MiB)",
            self.what,
            done * 100 / self.total,
            done >> 20,
            self.total >> 20
        );
    }
}

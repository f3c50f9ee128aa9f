//! The config disk: a deterministic tar of the files named in `[guest.files]`.
//!
//! The guest's PID 1 finds the disk by its virtio serial (`cocoon-config`), extends the
//! SHA-256 of the *whole disk* into RTMR3 (and its event log) before parsing anything on it,
//! and then reads the entries. Its bytes are therefore part of what a verifier checks, so they
//! depend on the file names and contents only:
//!
//! * POSIX ustar entries, sorted by name (byte order), regular files only, no directories;
//! * mode `0644`, uid/gid `0`, empty user/group names, mtime `0`, no extended headers;
//! * the end-of-archive marker (two zero blocks); the total is a multiple of 512 bytes.
//!
//! [`build`] is pure (names and bytes in, disk bytes out); [`read_files`] reads the sources.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::config::{valid_guest_file_name, MAX_GUEST_FILE};

/// Block size of tar and of the virtual disk.
pub const BLOCK: usize = 512;

/// Config disk failures.
#[derive(Debug, thiserror::Error)]
pub enum ConfigDiskError {
    #[error("guest.files.{name:?} ({path}): {source}")]
    Read {
        name: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("guest.files.{name:?} ({path}): {size} bytes is more than the {max} allowed for a config file")]
    TooLarge {
        name: String,
        path: PathBuf,
        size: u64,
        max: u64,
    },
    #[error("config disk entry {name:?}: {reason}")]
    Entry { name: String, reason: String },
}

/// A built config disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigDisk {
    pub bytes: Vec<u8>,
    /// SHA-256 of `bytes`: the digest the guest extends into RTMR3.
    pub sha256: [u8; 32],
}

impl ConfigDisk {
    pub fn sha256_hex(&self) -> String {
        hex::encode(self.sha256)
    }
}

/// Builds the disk from entry names and contents (see the module docs). The map's order is
/// the entry order.
pub fn build(files: &BTreeMap<String, Vec<u8>>) -> Result<ConfigDisk, ConfigDiskError> {
    let mut builder = tar::Builder::new(Vec::new());
    for (name, data) in files {
        let entry_err = |reason: String| ConfigDiskError::Entry {
            name: name.clone(),
            reason,
        };
        if !valid_guest_file_name(name) {
            return Err(entry_err("not a plain file name".into()));
        }
        let mut h = tar::Header::new_ustar();
        h.set_path(name).map_err(|e| entry_err(e.to_string()))?;
        h.set_entry_type(tar::EntryType::Regular);
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_username("").map_err(|e| entry_err(e.to_string()))?;
        h.set_groupname("").map_err(|e| entry_err(e.to_string()))?;
        h.set_device_major(0)
            .map_err(|e| entry_err(e.to_string()))?;
        h.set_device_minor(0)
            .map_err(|e| entry_err(e.to_string()))?;
        h.set_cksum();
        builder
            .append(&h, data.as_slice())
            .map_err(|e| entry_err(e.to_string()))?;
    }
    let bytes = builder.into_inner().map_err(|e| ConfigDiskError::Entry {
        name: String::new(),
        reason: e.to_string(),
    })?;
    debug_assert_eq!(bytes.len() % BLOCK, 0);
    let sha256 = Sha256::digest(&bytes).into();
    Ok(ConfigDisk { bytes, sha256 })
}

/// Reads the files of `[guest.files]` (each at most [`MAX_GUEST_FILE`] bytes).
pub fn read_files(
    files: &BTreeMap<String, PathBuf>,
) -> Result<BTreeMap<String, Vec<u8>>, ConfigDiskError> {
    let mut out = BTreeMap::new();
    for (name, path) in files {
        let read_err = |source| ConfigDiskError::Read {
            name: name.clone(),
            path: path.clone(),
            source,
        };
        let size = std::fs::metadata(path).map_err(read_err)?.len();
        if size > MAX_GUEST_FILE {
            return Err(ConfigDiskError::TooLarge {
                name: name.clone(),
                path: path.clone(),
                size,
                max: MAX_GUEST_FILE,
            });
        }
        let bytes = std::fs::read(path).map_err(|source| ConfigDiskError::Read {
            name: name.clone(),
            path: path.clone(),
            source,
        })?;
        out.insert(name.clone(), bytes);
    }
    Ok(out)
}

/// Reads the sources and builds the disk.
pub fn from_files(files: &BTreeMap<String, PathBuf>) -> Result<ConfigDisk, ConfigDiskError> {
    build(&read_files(files)?)
}

/// The entry names and contents of a disk built by [`build`] (for checks and tests).
pub fn entries(bytes: &[u8]) -> std::io::Result<Vec<(String, Vec<u8>)>> {
    use std::io::Read;
    let mut out = Vec::new();
    let mut archive = tar::Archive::new(bytes);
    for e in archive.entries()? {
        let mut e = e?;
        let name = e.path()?.display().to_string();
        let mut data = Vec::new();
        e.read_to_end(&mut data)?;
        out.push((name, data));
    }
    Ok(out)
}

/// Where an instance's config disk is written.
pub fn disk_path(instance_dir: &Path) -> PathBuf {
    instance_dir.join("config.tar")
}

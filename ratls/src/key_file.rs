//! Key files (the client's account key, the worker's wallet key): a 32-byte Ed25519 seed as 64
//! lowercase hex characters and a newline.
//!
//! A missing file is created with mode 0600 (never overwriting: `create_new`). An existing file
//! readable by group or others is refused, as ssh refuses such keys. The seed is never logged.
//!
//! Every buffer here that holds the seed or its hex text is wiped on drop ([`Zeroizing`]): the
//! file contents read, the decoded seed, the text written. The seed inside [`AccountKey`] and
//! the PKCS#8 bytes of issued account certificates are `ratls`'s to wipe (it does, on drop).
//! What nobody here can wipe: the signing key rustls/ring keep for the TLS client certificate,
//! rcgen's internal copies, the kernel's page cache, and the stack copies the compiler leaves
//! when the seed array is moved (e.g. into [`AccountKey::from_seed`]).

use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::account::AccountKey;
use zeroize::Zeroizing;

/// Bytes of a key file read at most (the real one has 65); a longer file is malformed.
const MAX_FILE: usize = 256;

/// Key file errors (each names the file).
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("key file {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("key file {path}: mode {mode:o} lets others read it (chmod 600 {path})")]
    Permissions { path: PathBuf, mode: u32 },
    #[error("key file {path}: not a regular file")]
    NotAFile { path: PathBuf },
    #[error("key file {path}: expected 64 hex characters")]
    Format { path: PathBuf },
    #[error("key file {path}: cannot generate a key: {detail}")]
    Generate { path: PathBuf, detail: String },
}

/// Loads the key at `path`, or creates a new random one there. Returns the key and whether it
/// was created.
pub fn load_or_create(path: &Path) -> Result<(AccountKey, bool), KeyFileError> {
    match read_seed(path) {
        Ok(seed) => Ok((AccountKey::from_seed(*seed), false)),
        Err(KeyFileError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            create(path).map(|key| (key, true))
        }
        Err(e) => Err(e),
    }
}

/// Reads the seed stored at `path` (checking the file's mode first).
pub fn read_seed(path: &Path) -> Result<Zeroizing<[u8; 32]>, KeyFileError> {
    let io = |source| KeyFileError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    // The mode of the file actually opened (not of whatever the path names later).
    let meta = file.metadata().map_err(io)?;
    if !meta.is_file() {
        return Err(KeyFileError::NotAFile {
            path: path.to_path_buf(),
        });
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(KeyFileError::Permissions {
            path: path.to_path_buf(),
            mode,
        });
    }
    // Room for one byte past the limit, so reading never reallocates (which would leave an
    // unwiped copy behind).
    let mut text = Zeroizing::new(Vec::with_capacity(MAX_FILE + 1));
    file.take(MAX_FILE as u64 + 1)
        .read_to_end(&mut text)
        .map_err(io)?;
    if text.len() > MAX_FILE {
        return Err(KeyFileError::Format {
            path: path.to_path_buf(),
        });
    }
    parse(&text, path)
}

/// Creates a new random seed at `path` in this file format (mode 0600, never overwriting: an
/// existing file is an error of kind `AlreadyExists`). Used for the TON wallet key of
/// `cocoon-client account init`.
pub fn create_seed(path: &Path) -> Result<Zeroizing<[u8; 32]>, KeyFileError> {
    let mut seed = Zeroizing::new([0u8; 32]);
    getrandom::getrandom(&mut seed[..]).map_err(|e| KeyFileError::Generate {
        path: path.to_path_buf(),
        detail: e.to_string(),
    })?;
    write_new(path, &seed)?;
    Ok(seed)
}

fn write_new(path: &Path, seed: &[u8; 32]) -> Result<(), KeyFileError> {
    let io = |source| KeyFileError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io)?;
    file.write_all(&encode(seed)[..])
        .and_then(|()| file.sync_all())
        .map_err(io)
}

/// Creates a new random key at `path` (mode 0600, never overwriting).
fn create(path: &Path) -> Result<AccountKey, KeyFileError> {
    let key = AccountKey::generate().map_err(|e| KeyFileError::Generate {
        path: path.to_path_buf(),
        detail: e.to_string(),
    })?;
    write_new(path, key.seed())?;
    Ok(key)
}

/// The file contents for `seed`: 64 lowercase hex characters and a newline.
fn encode(seed: &[u8; 32]) -> Zeroizing<[u8; 65]> {
    let mut out = Zeroizing::new([b'\n'; 65]);
    // Cannot fail: the output is exactly twice the input.
    let _ = hex::encode_to_slice(seed, &mut out[..64]);
    out
}

fn parse(text: &[u8], path: &Path) -> Result<Zeroizing<[u8; 32]>, KeyFileError> {
    let format = || KeyFileError::Format {
        path: path.to_path_buf(),
    };
    let hex_text = text.trim_ascii();
    let mut seed = Zeroizing::new([0u8; 32]);
    hex::decode_to_slice(hex_text, &mut seed[..]).map_err(|_| format())?;
    Ok(seed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("cocoon-client-key-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir.join("client.key")
    }

    #[test]
    fn creates_0600_then_loads_the_same_key() {
        let path = tmp("create");
        let (a, created) = load_or_create(&path).unwrap();
        assert!(created);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let (b, created) = load_or_create(&path).unwrap();
        assert!(!created);
        assert_eq!(a.account_id(), b.account_id());
    }

    #[test]
    fn refuses_open_permissions_and_bad_contents() {
        let path = tmp("bad");
        let dir = tmp("a-directory");
        std::fs::create_dir_all(&dir).unwrap();
        assert!(matches!(
            load_or_create(&dir),
            Err(KeyFileError::NotAFile { .. })
        ));
        std::fs::write(&path, "zz\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(matches!(
            load_or_create(&path),
            Err(KeyFileError::Format { .. })
        ));
        std::fs::write(&path, format!("{}\n", "ab".repeat(32))).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            load_or_create(&path),
            Err(KeyFileError::Permissions { mode: 0o644, .. })
        ));
        std::fs::write(&path, format!("{}\n", "ab".repeat(200))).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(matches!(
            load_or_create(&path),
            Err(KeyFileError::Format { .. })
        ));
    }

    #[test]
    fn seed_buffers_are_wiped_on_drop_and_round_trip() {
        fn wiped_on_drop<T: zeroize::ZeroizeOnDrop>(_: &T) {}
        let path = tmp("wipe");
        let (key, _) = load_or_create(&path).unwrap();
        let seed = read_seed(&path).unwrap();
        wiped_on_drop(&seed);
        assert_eq!(*seed, *key.seed());
        let text = encode(key.seed());
        wiped_on_drop(&text);
        assert_eq!(&text[..], std::fs::read(&path).unwrap());
        // Surrounding whitespace is fine, as before.
        assert_eq!(*parse(&text[..], &path).unwrap(), *key.seed());
        assert!(matches!(
            parse(b"  ", &path),
            Err(KeyFileError::Format { .. })
        ));
    }
}

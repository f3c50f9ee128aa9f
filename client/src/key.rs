//! The account key file: the 32-byte Ed25519 seed as 64 lowercase hex characters and a newline.
//!
//! A missing file is created with mode 0600 (never overwriting: `create_new`). An existing file
//! readable by group or others is refused, as ssh refuses such keys. The seed is never logged.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use ratls::account::AccountKey;

/// Account key file errors (each names the file).
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("account key {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("account key {path}: mode {mode:o} lets others read it (chmod 600 {path})")]
    Permissions { path: PathBuf, mode: u32 },
    #[error("account key {path}: expected 64 hex characters")]
    Format { path: PathBuf },
    #[error("account key {path}: cannot generate a key: {detail}")]
    Generate { path: PathBuf, detail: String },
}

/// Loads the key at `path`, or creates a new random one there. Returns the key and whether it
/// was created.
pub fn load_or_create(path: &Path) -> Result<(AccountKey, bool), KeyFileError> {
    let io = |source| KeyFileError::Io {
        path: path.to_path_buf(),
        source,
    };
    match std::fs::metadata(path) {
        Ok(meta) => {
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(KeyFileError::Permissions {
                    path: path.to_path_buf(),
                    mode,
                });
            }
            let text = std::fs::read_to_string(path).map_err(io)?;
            Ok((parse(text.trim(), path)?, false))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = AccountKey::generate().map_err(|e| KeyFileError::Generate {
                path: path.to_path_buf(),
                detail: e.to_string(),
            })?;
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(io)?;
            file.write_all(format!("{}\n", hex::encode(key.seed())).as_bytes())
                .and_then(|()| file.sync_all())
                .map_err(io)?;
            Ok((key, true))
        }
        Err(e) => Err(io(e)),
    }
}

fn parse(text: &str, path: &Path) -> Result<AccountKey, KeyFileError> {
    let format = || KeyFileError::Format {
        path: path.to_path_buf(),
    };
    let bytes = hex::decode(text).map_err(|_| format())?;
    let seed: [u8; 32] = bytes.try_into().map_err(|_| format())?;
    Ok(AccountKey::from_seed(seed))
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
    }
}

//! Where the proxy's long-lived secrets live: the proxy key Kp (it signs vouchers and keys the
//! ledger's tags) and the wallet key. They are not the RA-TLS keys, which are born and die with
//! the TD; Kp must survive a restart, or the proxy contract and the ledger are orphaned.
//!
//! A TD has no native sealing, so this is a seam ([`KeyStore`]). [`EncryptedFileStore`] is the
//! development store: each key in its own file, encrypted with ChaCha20-Poly1305 under a key
//! stretched from a passphrase (PBKDF2-HMAC-SHA256). Production needs a store that releases keys
//! only to the same measured image (docs/threat-model.md, "Proxy keys and ledger").

use std::path::{Path, PathBuf};

use ring::aead::{self, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305};
use ring::pbkdf2;
use zeroize::Zeroizing;

const MAGIC: &[u8; 16] = b"cocoon-key-v1\0\0\0";
const SALT_LEN: usize = 16;
const NONCE_LEN: usize = 12;
const SECRET_LEN: usize = 32;
const FILE_LEN: usize = MAGIC.len() + SALT_LEN + NONCE_LEN + SECRET_LEN + 16;
/// PBKDF2 rounds: ~0.1 s on this class of machine, paid once per key at start.
const ROUNDS: u32 = 200_000;

/// Name of the proxy key Kp in the store.
pub const PROXY_KEY: &str = "proxy-kp";
/// Name of the proxy's wallet key in the store.
pub const WALLET_KEY: &str = "proxy-wallet";

/// Why a key could not be had.
#[derive(Debug, thiserror::Error)]
pub enum KeyStoreError {
    #[error("key store {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("key {path}: not a cocoon key file (wrong size or header)")]
    Malformed { path: PathBuf },
    #[error("key {path}: cannot be decrypted (wrong passphrase, or the file was modified)")]
    Decrypt { path: PathBuf },
    #[error("key name {0:?}: only letters, digits, '-' and '_'")]
    BadName(String),
    #[error("key store: no randomness: {0}")]
    Random(String),
}

/// A place that keeps 32-byte secrets by name.
pub trait KeyStore: Send + Sync + std::fmt::Debug {
    /// The secret named `name`, created (random) on first use.
    fn load_or_create(&self, name: &str) -> Result<Zeroizing<[u8; SECRET_LEN]>, KeyStoreError>;
}

/// Keys in files `<dir>/<name>.key`, encrypted under a passphrase (see the module docs).
pub struct EncryptedFileStore {
    dir: PathBuf,
    passphrase: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for EncryptedFileStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EncryptedFileStore")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl EncryptedFileStore {
    /// A store in `dir` (created 0700 if missing) under `passphrase`.
    pub fn new(dir: &Path, passphrase: Zeroizing<Vec<u8>>) -> Result<Self, KeyStoreError> {
        let io = |source| KeyStoreError::Io {
            path: dir.to_path_buf(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io)?;
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            passphrase,
        })
    }

    fn aead_key(&self, salt: &[u8]) -> Result<LessSafeKey, KeyStoreError> {
        let mut k = Zeroizing::new([0u8; 32]);
        pbkdf2::derive(
            pbkdf2::PBKDF2_HMAC_SHA256,
            std::num::NonZeroU32::new(ROUNDS).unwrap_or(std::num::NonZeroU32::MIN),
            salt,
            &self.passphrase,
            k.as_mut(),
        );
        let unbound = UnboundKey::new(&CHACHA20_POLY1305, k.as_ref())
            .map_err(|_| KeyStoreError::Random("ChaCha20-Poly1305 key rejected".into()))?;
        Ok(LessSafeKey::new(unbound))
    }

    fn open(
        &self,
        path: &Path,
        name: &str,
        file: &[u8],
    ) -> Result<[u8; SECRET_LEN], KeyStoreError> {
        let malformed = || KeyStoreError::Malformed {
            path: path.to_path_buf(),
        };
        if file.len() != FILE_LEN || !file.starts_with(MAGIC) {
            return Err(malformed());
        }
        let rest = &file[MAGIC.len()..];
        let (salt, rest) = rest.split_at(SALT_LEN);
        let (nonce, sealed) = rest.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| malformed())?;
        let mut buf = Zeroizing::new(sealed.to_vec());
        let plain = self
            .aead_key(salt)?
            .open_in_place(nonce, aead::Aad::from(name.as_bytes()), &mut buf)
            .map_err(|_| KeyStoreError::Decrypt {
                path: path.to_path_buf(),
            })?;
        let mut out = [0u8; SECRET_LEN];
        out.copy_from_slice(plain);
        Ok(out)
    }
}

fn random<const N: usize>() -> Result<[u8; N], KeyStoreError> {
    let mut b = [0u8; N];
    getrandom::getrandom(&mut b).map_err(|e| KeyStoreError::Random(e.to_string()))?;
    Ok(b)
}

impl KeyStore for EncryptedFileStore {
    fn load_or_create(&self, name: &str) -> Result<Zeroizing<[u8; SECRET_LEN]>, KeyStoreError> {
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(KeyStoreError::BadName(name.to_string()));
        }
        let path = self.dir.join(format!("{name}.key"));
        let io = |source| KeyStoreError::Io {
            path: path.clone(),
            source,
        };
        match std::fs::read(&path) {
            Ok(file) => return Ok(Zeroizing::new(self.open(&path, name, &file)?)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(e)),
        }
        let secret = Zeroizing::new(random::<SECRET_LEN>()?);
        let salt = random::<SALT_LEN>()?;
        let nonce = random::<NONCE_LEN>()?;
        let mut sealed = secret.to_vec();
        self.aead_key(&salt)?
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                aead::Aad::from(name.as_bytes()),
                &mut sealed,
            )
            .map_err(|_| KeyStoreError::Random("sealing failed".into()))?;
        let mut file = Vec::with_capacity(FILE_LEN);
        file.extend_from_slice(MAGIC);
        file.extend_from_slice(&salt);
        file.extend_from_slice(&nonce);
        file.extend_from_slice(&sealed);
        // Written to a temporary name and renamed: a crash leaves no half key; create_new
        // keeps two starting proxies from both creating one.
        let tmp = self.dir.join(format!(".{name}.key.tmp"));
        {
            use std::io::Write;
            let mut opts = std::fs::OpenOptions::new();
            opts.write(true).create(true).truncate(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt;
                opts.mode(0o600);
            }
            let mut f = opts.open(&tmp).map_err(io)?;
            f.write_all(&file).map_err(io)?;
            f.sync_all().map_err(io)?;
        }
        std::fs::hard_link(&tmp, &path).map_err(io)?;
        let _ = std::fs::remove_file(&tmp);
        if let Ok(d) = std::fs::File::open(&self.dir) {
            let _ = d.sync_all();
        }
        Ok(secret)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(dir: &Path, pass: &str) -> EncryptedFileStore {
        EncryptedFileStore::new(dir, Zeroizing::new(pass.as_bytes().to_vec())).unwrap()
    }

    #[test]
    fn created_once_then_reloaded_and_refused_when_wrong() {
        let dir = std::env::temp_dir().join(format!("cocoon-keystore-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let s = store(&dir, "correct horse");
        let kp = s.load_or_create("proxy-kp").unwrap();
        assert_eq!(*s.load_or_create("proxy-kp").unwrap(), *kp);
        assert_ne!(*s.load_or_create("wallet").unwrap(), *kp);
        // The file holds no plaintext.
        let file = std::fs::read(dir.join("proxy-kp.key")).unwrap();
        assert!(!file.windows(32).any(|w| w == kp.as_ref()));
        assert!(matches!(
            store(&dir, "wrong").load_or_create("proxy-kp"),
            Err(KeyStoreError::Decrypt { .. })
        ));
        // A key file renamed to another key's name does not decrypt (name is bound).
        std::fs::copy(dir.join("proxy-kp.key"), dir.join("other.key")).unwrap();
        assert!(matches!(
            s.load_or_create("other"),
            Err(KeyStoreError::Decrypt { .. })
        ));
        let mut flipped = file.clone();
        flipped[40] ^= 1;
        std::fs::write(dir.join("proxy-kp.key"), &flipped).unwrap();
        assert!(matches!(
            s.load_or_create("proxy-kp"),
            Err(KeyStoreError::Decrypt { .. })
        ));
        std::fs::write(dir.join("proxy-kp.key"), &file[..10]).unwrap();
        assert!(matches!(
            s.load_or_create("proxy-kp"),
            Err(KeyStoreError::Malformed { .. })
        ));
        assert!(matches!(
            s.load_or_create("../x"),
            Err(KeyStoreError::BadName(_))
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }
}

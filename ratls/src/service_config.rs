//! Loading a service's TOML config file: the one helper the proxy, the worker and the client
//! use, and its error type.
//!
//! Each service defines its file's schema once, as a serde type with `deny_unknown_fields`
//! (`proxy::config::ConfigFile`, `worker::config::WorkerConfigFile`,
//! `client::config::ClientConfigFile`), and implements [`ServiceConfig`] for it. Loading is
//! three steps, one verb each:
//!
//! * [`parse`]: TOML text → the file type (unknown keys refused); errors name the file;
//! * [`ServiceConfig::validate`]: the file type → the service's runtime type; relative paths are
//!   resolved against the directory given; errors name the field (`models[1].url: …`);
//! * [`open`]: read the file, parse, validate against the file's own directory
//!   ([`base_dir`]), and keep the SHA-256 of the bytes (what a simulated process measures into
//!   RTMR3). The text is wiped once parsed: it may hold secrets (api keys).
//!
//! The same types are `Serialize`, and `cocoon-host` renders every config it writes from them
//! (`toml::to_string`), so a key is named in exactly one Rust type.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use sha2::Digest;

/// A config file that could not be loaded; each variant names the file or the field.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Not TOML, or not the file type (unknown key, missing key, wrong type).
    #[error("{path}: {detail}")]
    Parse { path: PathBuf, detail: String },
    /// A value the service refuses; `field` is the key path (`models[1].url`).
    #[error("{field}: {detail}")]
    Field { field: String, detail: String },
    /// The `[policy]` section.
    #[error(transparent)]
    Policy(#[from] crate::config::ConfigError),
    /// A file the config names could not be used (e.g. the client's account key).
    #[error(transparent)]
    Resource(Box<dyn std::error::Error + Send + Sync>),
}

/// [`ConfigError::Field`].
pub fn field(field: impl Into<String>, detail: impl Into<String>) -> ConfigError {
    ConfigError::Field {
        field: field.into(),
        detail: detail.into(),
    }
}

/// A service's config file type: the schema (serde) and its validation.
pub trait ServiceConfig: DeserializeOwned {
    /// The validated runtime configuration.
    type Valid;

    /// Checks every value and builds the runtime type; relative paths are resolved against
    /// `base`. May read the files the config names (policy roots, keys).
    fn validate(self, base: &Path) -> Result<Self::Valid, ConfigError>;

    /// Parses TOML text; `path` only names the file in errors. The default is [`parse`];
    /// a type whose entries are parsed one by one (to name them in errors) overrides it.
    fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        parse(text, path)
    }
}

/// Parses TOML text into `T` (whose `deny_unknown_fields` refuses unknown keys); `path` only
/// names the file in errors.
pub fn parse<T: DeserializeOwned>(text: &str, path: &Path) -> Result<T, ConfigError> {
    toml::from_str(text).map_err(|e| ConfigError::Parse {
        path: path.to_path_buf(),
        detail: e.to_string().trim_end().to_string(),
    })
}

/// The directory relative paths in the config file at `path` are resolved against (`.` for a
/// bare file name).
pub fn base_dir(path: &Path) -> &Path {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// A loaded config file.
#[derive(Clone, Debug)]
pub struct Opened<T> {
    /// The validated configuration.
    pub config: T,
    /// The file's directory (relative paths were resolved against it).
    pub base_dir: PathBuf,
    /// SHA-256 of the file's bytes: what a simulated process measures into RTMR3
    /// (`attestation::config::TeeConfig::open_for_config`).
    pub sha256: [u8; 32],
}

/// Reads the file at `path`, parses it as `T` and validates it against its own directory.
pub fn open<T: ServiceConfig>(path: &Path) -> Result<Opened<T::Valid>, ConfigError> {
    let text = zeroize::Zeroizing::new(std::fs::read_to_string(path).map_err(|source| {
        ConfigError::Read {
            path: path.to_path_buf(),
            source,
        }
    })?);
    let sha256: [u8; 32] = sha2::Sha256::digest(text.as_bytes()).into();
    let base = base_dir(path);
    let config = T::parse(&text, path)?.validate(base)?;
    Ok(Opened {
        config,
        base_dir: base.to_path_buf(),
        sha256,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct File {
        n: u32,
    }

    impl ServiceConfig for File {
        type Valid = (u32, PathBuf);
        fn validate(self, base: &Path) -> Result<Self::Valid, ConfigError> {
            if self.n == 0 {
                return Err(field("n", "must be positive"));
            }
            Ok((self.n, base.to_path_buf()))
        }
    }

    #[test]
    fn open_reads_parses_and_validates_against_the_files_directory() {
        let dir = std::env::temp_dir().join(format!("ratls-service-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s.toml");
        std::fs::write(&path, "n = 3\n").unwrap();
        let o = open::<File>(&path).unwrap();
        assert_eq!(o.config, (3, dir.clone()));
        assert_eq!(o.base_dir, dir);
        assert_eq!(o.sha256, <[u8; 32]>::from(sha2::Sha256::digest(b"n = 3\n")));
        std::fs::write(&path, "n = 3\nx = 1\n").unwrap();
        let e = open::<File>(&path).unwrap_err().to_string();
        assert!(
            e.starts_with(&path.display().to_string()) && e.contains('x'),
            "{e}"
        );
        std::fs::write(&path, "n = 0\n").unwrap();
        assert_eq!(
            open::<File>(&path).unwrap_err().to_string(),
            "n: must be positive"
        );
        let e = open::<File>(&dir.join("missing.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("cannot read ") && e.contains("missing.toml"),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(base_dir(Path::new("a.toml")), Path::new("."));
    }
}

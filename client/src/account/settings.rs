//! `account.toml`: the settings of `cocoon-client account`, all optional, each overridden by
//! the command-line flag of the same name. Kept apart from `client.toml` (which configures the
//! proxy connection) so the account commands need no attestation policy.
//!
//! ```toml
//! key = "wallet.key"                        # wallet key file, relative to this file
//! owner = "0:…"                             # owner of the Cocoon wallet (raw or user-friendly)
//! proxy = "0:…"                             # proxy contract
//! chain = "https://toncenter.com/api/v2"    # toncenter v2 base URL
//! api_key_env = "TONCENTER_API_KEY"         # env var holding the API key (optional)
//! timeout_secs = 120                        # wait for the transactions at most this long
//! poll_ms = 2000                            # between polls
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use ton::address::Addr;

use super::WaitOptions;

/// `account.toml` as written.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccountFile {
    /// Wallet key file.
    pub key: Option<PathBuf>,
    /// Owner of the Cocoon wallet.
    pub owner: Option<String>,
    /// Proxy contract address.
    pub proxy: Option<String>,
    /// toncenter v2 base URL.
    pub chain: Option<String>,
    /// Name of the environment variable holding the API key.
    pub api_key_env: Option<String>,
    /// Wait timeout (seconds).
    pub timeout_secs: Option<u64>,
    /// Poll interval (milliseconds).
    pub poll_ms: Option<u64>,
}

/// An `account.toml` error.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// Reading the file.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Parsing the file.
    #[error("{path}: {reason}")]
    Parse { path: PathBuf, reason: String },
    /// A required setting is missing.
    #[error("missing {what}: pass --{flag} or set `{flag}` in account.toml")]
    Missing {
        what: &'static str,
        flag: &'static str,
    },
    /// An address does not parse.
    #[error("{what} {text:?}: {reason}")]
    Address {
        what: &'static str,
        text: String,
        reason: String,
    },
    /// A value out of range.
    #[error("{what}: {reason}")]
    Invalid { what: &'static str, reason: String },
}

impl AccountFile {
    /// Reads `path`; relative `key` paths are resolved against its directory.
    pub fn read(path: &Path) -> Result<AccountFile, SettingsError> {
        let text = std::fs::read_to_string(path).map_err(|source| SettingsError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let mut f: AccountFile = toml::from_str(&text).map_err(|e| SettingsError::Parse {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        if let Some(k) = &f.key {
            if k.is_relative() {
                let base = path.parent().unwrap_or(Path::new("."));
                f.key = Some(base.join(k));
            }
        }
        Ok(f)
    }

    /// `self` with every setting `flags` has replaced.
    pub fn overridden_by(self, flags: AccountFile) -> AccountFile {
        AccountFile {
            key: flags.key.or(self.key),
            owner: flags.owner.or(self.owner),
            proxy: flags.proxy.or(self.proxy),
            chain: flags.chain.or(self.chain),
            api_key_env: flags.api_key_env.or(self.api_key_env),
            timeout_secs: flags.timeout_secs.or(self.timeout_secs),
            poll_ms: flags.poll_ms.or(self.poll_ms),
        }
    }

    /// The key file.
    pub fn key_path(&self) -> Result<&Path, SettingsError> {
        self.key.as_deref().ok_or(SettingsError::Missing {
            what: "wallet key file",
            flag: "key",
        })
    }

    /// The wallet owner.
    pub fn owner_addr(&self) -> Result<Addr, SettingsError> {
        parse_addr("owner", self.owner.as_deref(), "wallet owner address")
    }

    /// The proxy contract.
    pub fn proxy_addr(&self) -> Result<Addr, SettingsError> {
        parse_addr("proxy", self.proxy.as_deref(), "proxy contract address")
    }

    /// The chain URL.
    pub fn chain_url(&self) -> Result<&str, SettingsError> {
        self.chain.as_deref().ok_or(SettingsError::Missing {
            what: "chain API URL",
            flag: "chain",
        })
    }

    /// Timeout and poll interval (defaults 120 s and 2 s).
    pub fn wait(&self) -> Result<WaitOptions, SettingsError> {
        let timeout = self.timeout_secs.unwrap_or(120);
        let poll = self.poll_ms.unwrap_or(2000);
        if timeout == 0 || timeout > 86_400 {
            return Err(SettingsError::Invalid {
                what: "timeout_secs",
                reason: format!("{timeout}: must be 1..=86400"),
            });
        }
        if poll == 0 || poll > 60_000 {
            return Err(SettingsError::Invalid {
                what: "poll_ms",
                reason: format!("{poll}: must be 1..=60000"),
            });
        }
        Ok(WaitOptions {
            timeout: Duration::from_secs(timeout),
            poll: Duration::from_millis(poll),
        })
    }
}

impl AccountFile {
    /// The chain API client (toncenter v2 over HTTP; the API key from `api_key_env`, default
    /// `TONCENTER_API_KEY`).
    pub fn chain(&self) -> Result<std::sync::Arc<dyn tonsim::TonChain>, SettingsError> {
        let var = self.api_key_env.as_deref().unwrap_or("TONCENTER_API_KEY");
        let key = std::env::var(var)
            .ok()
            .filter(|k| !k.is_empty())
            .map(tonsim::chain_config::ApiKey);
        let c =
            tonsim::HttpChain::new(self.chain_url()?, key).map_err(|e| SettingsError::Invalid {
                what: "chain",
                reason: e.to_string(),
            })?;
        Ok(std::sync::Arc::new(c))
    }

    /// The Cocoon wallet of the key file and owner.
    pub fn wallet(&self) -> Result<super::Wallet, super::AccountError> {
        let owner = self.owner_addr()?;
        let path = self.key_path()?;
        let seed = crate::key::read_seed(path)?;
        super::Wallet::new(&seed, owner)
    }

    /// The account these settings describe (reads the proxy contract from the chain).
    pub async fn open(&self) -> Result<super::Account, super::AccountError> {
        let wallet = self.wallet()?;
        let proxy = self.proxy_addr()?;
        let wait = self.wait()?;
        let chain = self.chain()?;
        super::Account::open(chain, wallet, proxy, wait).await
    }
}

fn parse_addr(
    flag: &'static str,
    text: Option<&str>,
    what: &'static str,
) -> Result<Addr, SettingsError> {
    let text = text.ok_or(SettingsError::Missing { what, flag })?;
    Addr::parse_any(text).map_err(|e| SettingsError::Address {
        what,
        text: text.to_string(),
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_flags_and_errors() {
        let dir = std::env::temp_dir().join(format!("cocoon-account-toml-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("account.toml");
        let owner = format!("0:{}", "11".repeat(32));
        std::fs::write(
            &p,
            format!("key = \"w.key\"\nowner = \"{owner}\"\nchain = \"http://x/api/v2\"\n"),
        )
        .unwrap();
        let f = AccountFile::read(&p).unwrap();
        assert_eq!(f.key_path().unwrap(), dir.join("w.key"));
        assert_eq!(f.owner_addr().unwrap().to_string(), owner);
        assert!(matches!(
            f.proxy_addr(),
            Err(SettingsError::Missing { flag: "proxy", .. })
        ));
        let f = f.overridden_by(AccountFile {
            proxy: Some("nonsense".into()),
            timeout_secs: Some(0),
            ..AccountFile::default()
        });
        assert!(matches!(f.proxy_addr(), Err(SettingsError::Address { .. })));
        assert!(f.wait().is_err());
        assert_eq!(f.chain_url().unwrap(), "http://x/api/v2");
        std::fs::write(&p, "kee = 1\n").unwrap();
        assert!(matches!(
            AccountFile::read(&p),
            Err(SettingsError::Parse { .. })
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }
}

//! Which [`TonChain`] to use: the local chain or a TON HTTP API.

use std::sync::Arc;

use crate::http_client::HttpChain;
use crate::tonchain::{ChainError, TonChain};

/// toncenter's mainnet API (v2). Not exercised by any test here: see `docs/payments.md`.
pub const MAINNET_URL: &str = "https://toncenter.com/api/v2";
/// toncenter's testnet API (v2). Not exercised by any test here.
pub const TESTNET_URL: &str = "https://testnet.toncenter.com/api/v2";

/// An API key, sent as `X-API-Key`; never printed.
#[derive(Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(transparent)]
pub struct ApiKey(pub String);

impl ApiKey {
    /// The key held by environment variable `var` (`None`: no key); an error naming `var`
    /// if it is not set. Keys stay out of config files, which are measured and shared.
    pub fn from_env(var: Option<&str>) -> Result<Option<ApiKey>, String> {
        var.map(|v| {
            std::env::var(v)
                .map(ApiKey)
                .map_err(|_| format!("chain_api_key_env: {v} is not set"))
        })
        .transpose()
    }
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiKey(<redacted>)")
    }
}

/// Chain selection, as a config file states it (`kind = "local"` or `kind = "http"`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum ChainConfig {
    /// The in-process local chain (tests, development).
    Local,
    /// A toncenter-style TON HTTP API v2 at `url` (ending in `/api/v2`).
    Http {
        /// Base URL.
        url: String,
        /// Optional API key.
        #[serde(default)]
        api_key: Option<ApiKey>,
    },
}

impl ChainConfig {
    /// toncenter mainnet.
    pub fn mainnet(api_key: Option<ApiKey>) -> ChainConfig {
        ChainConfig::Http {
            url: MAINNET_URL.into(),
            api_key,
        }
    }

    /// toncenter testnet.
    pub fn testnet(api_key: Option<ApiKey>) -> ChainConfig {
        ChainConfig::Http {
            url: TESTNET_URL.into(),
            api_key,
        }
    }

    /// The chain this config selects; `Local` uses `local` (a `LocalChain`, which exists with
    /// the `local` feature; an error if none is given).
    pub fn open(&self, local: Option<Arc<dyn TonChain>>) -> Result<Arc<dyn TonChain>, ChainError> {
        match self {
            ChainConfig::Local => match local {
                Some(l) => Ok(l),
                None => Err(ChainError::Invalid {
                    what: "chain config",
                    reason: "kind = local needs a local chain".into(),
                }),
            },
            ChainConfig::Http { url, api_key } => {
                Ok(Arc::new(HttpChain::new(url, api_key.clone())?))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_redacts() {
        let c: ChainConfig = serde_json::from_str(
            r#"{"kind": "http", "url": "http://127.0.0.1:1/api/v2", "api_key": "s3cret"}"#,
        )
        .unwrap();
        assert!(!format!("{c:?}").contains("s3cret"));
        assert!(c.open(None).is_ok());
        let l: ChainConfig = serde_json::from_str(r#"{"kind": "local"}"#).unwrap();
        assert!(matches!(l.open(None), Err(ChainError::Invalid { .. })));
        assert!(
            serde_json::from_str::<ChainConfig>(r#"{"kind": "http", "url": "x", "x": 1}"#).is_err()
        );
        assert_eq!(
            ChainConfig::testnet(None),
            ChainConfig::Http {
                url: TESTNET_URL.into(),
                api_key: None
            }
        );
    }
}

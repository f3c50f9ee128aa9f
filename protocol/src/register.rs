//! Registration: the first exchange on a worker connection. The proxy (HTTP/2 client) POSTs a
//! [`Hello`] to [`crate::paths::HELLO`]; the worker answers with its [`Registration`].

use serde::{Deserialize, Serialize};

use crate::{ApiError, ErrorKind};

/// The proxy's opening message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hello {
    /// Protocol versions the proxy speaks.
    pub versions: Vec<u32>,
    /// The proxy's name (informational).
    pub proxy: String,
}

/// One model a worker serves.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelAdvert {
    /// Name clients ask for.
    pub name: String,
    /// SHA-256 of the model file (hex), as measured by the worker.
    pub model_hash: String,
    /// Context window in tokens.
    pub max_context: u32,
    /// Largest completion the worker accepts.
    pub max_completion_tokens: u32,
}

/// The worker's answer to [`Hello`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Registration {
    /// The version chosen from the proxy's list.
    pub version: u32,
    /// Stable worker name (informational; identity is the attested key).
    pub worker: String,
    pub models: Vec<ModelAdvert>,
    /// Concurrent requests the worker accepts.
    pub capacity: u32,
    /// Price multiplier in thousandths (1000 = list price).
    pub price_coefficient_milli: u32,
    /// Where the worker wants to be paid (absent: it serves unpaid; see [`crate::payout`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payout: Option<crate::payout::PayoutAdvert>,
}

impl Registration {
    /// Checks the registration's own consistency.
    pub fn validate(&self) -> Result<(), ApiError> {
        let bad = |m: String| Err(ApiError::new(ErrorKind::InvalidRequest, m));
        if !crate::SUPPORTED_VERSIONS.contains(&self.version) {
            return bad(format!(
                "registration: version {} not supported",
                self.version
            ));
        }
        if self.models.is_empty() || self.models.len() > 64 {
            return bad(format!(
                "registration: {} models (1..=64)",
                self.models.len()
            ));
        }
        if self.capacity == 0 || self.capacity > 100_000 {
            return bad(format!(
                "registration: capacity {} (1..=100000)",
                self.capacity
            ));
        }
        if self.price_coefficient_milli == 0 {
            return bad("registration: price coefficient 0".into());
        }
        if let Some(p) = &self.payout {
            if p.owner.is_empty() || p.owner.len() > 128 {
                return bad("registration: payout owner length".into());
            }
        }
        for m in &self.models {
            crate::meta::check_model(&m.name)?;
            if m.model_hash.len() != 64 || hex::decode(&m.model_hash).is_err() {
                return bad(format!(
                    "registration: model {} hash is not 32 hex bytes",
                    m.name
                ));
            }
        }
        Ok(())
    }
}

/// The highest version both sides speak.
pub fn negotiate(ours: &[u32], theirs: &[u32]) -> Result<u32, ApiError> {
    ours.iter()
        .filter(|v| theirs.contains(v))
        .max()
        .copied()
        .ok_or_else(|| {
            ApiError::new(
                ErrorKind::UnsupportedVersion,
                format!("no common protocol version: ours {ours:?}, theirs {theirs:?}"),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiation() {
        assert_eq!(negotiate(&[1, 2], &[1]).unwrap(), 1);
        assert_eq!(negotiate(&[1, 2, 3], &[3, 2]).unwrap(), 3);
        assert_eq!(
            negotiate(&[1], &[2]).unwrap_err().kind,
            ErrorKind::UnsupportedVersion
        );
    }

    #[test]
    fn registration_validation() {
        let ok = Registration {
            version: 1,
            worker: "w".into(),
            models: vec![ModelAdvert {
                name: "m".into(),
                model_hash: "00".repeat(32),
                max_context: 2048,
                max_completion_tokens: 512,
            }],
            capacity: 4,
            price_coefficient_milli: 1000,
            payout: None,
        };
        ok.validate().unwrap();
        let mut bad = ok.clone();
        bad.capacity = 0;
        assert!(bad.validate().is_err());
        let mut bad = ok.clone();
        bad.models[0].model_hash = "xyz".into();
        assert!(bad.validate().is_err());
        let json = serde_json::to_string(&ok).unwrap();
        assert_eq!(serde_json::from_str::<Registration>(&json).unwrap(), ok);
        assert!(serde_json::from_str::<Registration>(
            &json.replace("\"capacity\"", "\"extra\":1,\"capacity\"")
        )
        .is_err());
    }
}

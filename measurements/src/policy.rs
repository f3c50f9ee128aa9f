//! What a verifier accepts.
//!
//! A [`Policy`] is data: the roots it trusts, the TCB statuses it tolerates, whether debug TDs
//! are allowed (never by default), which images and runtime registers it expects, and what the
//! report_data must be. [`Policy::check`] applies it to [`Evidence`] that
//! [`crate::verify::verify_evidence`] produced; the split lets a cache keep verified evidence
//! and re-apply a cheap policy check on every use.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use sha2::{Digest, Sha256};

use crate::registers::{
    ImageHash, Sha384, TD_ATTR_DEBUG, TD_ATTR_MIGRATABLE, TD_ATTR_SEPT_VE_DISABLE,
    TD_ATTR_TUD_PROFILING_MASK,
};
use crate::verify::{Evidence, Rejection};

pub use dcap_qvl::tcb_info::TcbStatus;

/// All TCB statuses a policy may name, in the spelling Intel's PCS uses.
pub const TCB_STATUSES: &[TcbStatus] = &[
    TcbStatus::UpToDate,
    TcbStatus::SWHardeningNeeded,
    TcbStatus::ConfigurationNeeded,
    TcbStatus::ConfigurationAndSWHardeningNeeded,
    TcbStatus::OutOfDate,
    TcbStatus::OutOfDateConfigurationNeeded,
    TcbStatus::TDRelaunchAdvised,
    TcbStatus::TDRelaunchAdvisedConfigurationNeeded,
];

/// Parses a TCB status name (case-insensitive, as Intel spells it, e.g. `OutOfDate`).
/// `Revoked` is not accepted: a revoked platform is rejected regardless of policy.
pub fn parse_tcb_status(s: &str) -> Result<TcbStatus, String> {
    TCB_STATUSES
        .iter()
        .copied()
        .find(|st| st.to_string().eq_ignore_ascii_case(s.trim()))
        .ok_or_else(|| {
            let names: Vec<String> = TCB_STATUSES.iter().map(ToString::to_string).collect();
            format!("unknown tcb status {s:?} (one of {})", names.join(", "))
        })
}

/// A root certificate a policy trusts for the PCK chain and collateral signers.
#[derive(Clone, PartialEq, Eq)]
pub struct TrustRoot {
    /// Human-readable name used in verdicts ("intel-sgx-root-ca", "cocoon-simulated-root").
    pub name: String,
    /// The root certificate, DER.
    pub der: Vec<u8>,
}

impl fmt::Debug for TrustRoot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "TrustRoot({}, sha256:{})",
            self.name,
            hex::encode(self.fingerprint())
        )
    }
}

impl TrustRoot {
    /// Intel's SGX Root CA, the only root production policy trusts.
    pub fn intel() -> Self {
        Self {
            name: "intel-sgx-root-ca".into(),
            der: crate::INTEL_SGX_ROOT_CA_DER.to_vec(),
        }
    }

    /// A root from DER bytes, e.g. the cocoon simulated root for development.
    pub fn new(name: impl Into<String>, der: Vec<u8>) -> Self {
        Self {
            name: name.into(),
            der,
        }
    }

    /// SHA-256 of the DER certificate.
    pub fn fingerprint(&self) -> [u8; 32] {
        Sha256::digest(&self.der).into()
    }

    /// Whether this is Intel's production root.
    pub fn is_intel(&self) -> bool {
        self.der == crate::INTEL_SGX_ROOT_CA_DER
    }
}

/// What a verifier accepts. Construct with [`Policy::production`] and narrow it.
#[derive(Clone, Debug)]
pub struct Policy {
    /// Roots the PCK chain and collateral may chain to. Production: Intel's only.
    pub roots: Vec<TrustRoot>,
    /// TCB statuses accepted. Default: `UpToDate` only.
    pub allowed_tcb_statuses: BTreeSet<TcbStatusKey>,
    /// Advisory IDs that reject a quote even when its status is allowed.
    pub rejected_advisories: BTreeSet<String>,
    /// Accept TDs with the DEBUG (or profiling) attribute. Development only.
    pub allow_debug: bool,
    /// Image hashes accepted; `None` accepts any image (inspection tools only, never services).
    pub allowed_images: Option<BTreeSet<ImageHash>>,
    /// RTMR3 values accepted (the replayed runtime config); `None` skips the check.
    pub allowed_rtmr3: Option<BTreeSet<Sha384>>,
    /// report_data the quote must carry (the channel binding); `None` skips the check.
    pub required_report_data: Option<[u8; 64]>,
    /// Reject collateral issued more than this many seconds before `now`.
    pub max_collateral_age_secs: Option<u64>,
    /// Models a peer may serve: name → accepted SHA-256 digests of the model. `None` accepts
    /// any model (checked by [`Policy::check_model`] on what a worker registers, not on the
    /// quote).
    pub allowed_models: Option<BTreeMap<String, BTreeSet<[u8; 32]>>>,
    /// GPU evidence the peer's certificate must carry and pass ([`crate::gpu::bundle`]);
    /// `None`: GPU evidence is not required (and not checked).
    pub gpu: Option<crate::gpu::GpuPolicy>,
}

/// Orderable wrapper for [`TcbStatus`] (which is not `Ord`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TcbStatusKey(u8);

impl From<TcbStatus> for TcbStatusKey {
    fn from(s: TcbStatus) -> Self {
        let i = TCB_STATUSES
            .iter()
            .position(|x| *x == s)
            .unwrap_or(u8::MAX as usize);
        Self(u8::try_from(i).unwrap_or(u8::MAX))
    }
}

impl Default for Policy {
    fn default() -> Self {
        Self::production()
    }
}

impl Policy {
    /// Intel root only, `UpToDate` only, no debug, any image (narrow it before use).
    pub fn production() -> Self {
        Self {
            roots: vec![TrustRoot::intel()],
            allowed_tcb_statuses: [TcbStatus::UpToDate.into()].into_iter().collect(),
            rejected_advisories: BTreeSet::new(),
            allow_debug: false,
            allowed_images: None,
            allowed_rtmr3: None,
            required_report_data: None,
            max_collateral_age_secs: None,
            allowed_models: None,
            gpu: None,
        }
    }

    /// A development policy that trusts only the given simulated root (not Intel's).
    pub fn simulated(root: TrustRoot) -> Self {
        Self {
            roots: vec![root],
            ..Self::production()
        }
    }

    /// Also accept a TCB status.
    pub fn allow_tcb_status(mut self, status: TcbStatus) -> Self {
        self.allowed_tcb_statuses.insert(status.into());
        self
    }

    /// Accept exactly these images.
    pub fn with_images(mut self, images: impl IntoIterator<Item = ImageHash>) -> Self {
        self.allowed_images = Some(images.into_iter().collect());
        self
    }

    /// Require this report_data.
    pub fn with_report_data(mut self, report_data: [u8; 64]) -> Self {
        self.required_report_data = Some(report_data);
        self
    }

    /// Whether `status` is allowed.
    pub fn tcb_status_allowed(&self, status: TcbStatus) -> bool {
        self.allowed_tcb_statuses.contains(&status.into())
    }

    /// Applies the policy to verified evidence. `now` is Unix seconds.
    pub fn check(&self, ev: &Evidence, now: u64) -> Result<(), Rejection> {
        if !self
            .roots
            .iter()
            .any(|r| r.fingerprint() == ev.root_fingerprint)
        {
            return Err(Rejection::UntrustedRoot {
                fingerprint: hex::encode(ev.root_fingerprint),
            });
        }
        if now > ev.valid_until {
            return Err(Rejection::CollateralExpired {
                item: "evidence",
                next_update: ev.valid_until,
                now,
            });
        }
        if let Some(max_age) = self.max_collateral_age_secs {
            if now.saturating_sub(ev.collateral_issued_at) > max_age {
                return Err(Rejection::CollateralTooOld {
                    issued_at: ev.collateral_issued_at,
                    max_age_secs: max_age,
                    now,
                });
            }
        }
        check_td_attributes(ev.report.registers.td_attributes_u64(), self.allow_debug)?;
        if !self.tcb_status_allowed(ev.tcb_status) {
            return Err(Rejection::TcbStatusNotAllowed {
                status: ev.tcb_status.to_string(),
                advisory_ids: ev.advisory_ids.clone(),
            });
        }
        if let Some(id) = ev
            .advisory_ids
            .iter()
            .find(|id| self.rejected_advisories.contains(*id))
        {
            return Err(Rejection::AdvisoryRejected(id.clone()));
        }
        if let Some(images) = &self.allowed_images {
            let got = ev.image_hash();
            if !images.contains(&got) {
                return Err(Rejection::ImageNotAllowed {
                    got,
                    allowed: images.len(),
                });
            }
        }
        if let Some(allowed) = &self.allowed_rtmr3 {
            let got = ev.report.registers.rtmr[3];
            if !allowed.contains(&got) {
                return Err(Rejection::Rtmr3Mismatch {
                    got: hex::encode(got),
                });
            }
        }
        if let Some(expected) = &self.required_report_data {
            if &ev.report.report_data != expected {
                return Err(Rejection::ReportDataMismatch {
                    expected: hex::encode(expected),
                    got: hex::encode(ev.report.report_data),
                });
            }
        }
        Ok(())
    }
}

impl Policy {
    /// Whether the runtime configuration (RTMR3) is pinned.
    pub fn pins_config(&self) -> bool {
        self.allowed_rtmr3.is_some()
    }

    /// Checks a model a peer serves (its name and the SHA-256 of the model, hex, as the peer
    /// registered it) against [`Policy::allowed_models`].
    pub fn check_model(&self, name: &str, digest_hex: &str) -> Result<(), Rejection> {
        let Some(allowed) = &self.allowed_models else {
            return Ok(());
        };
        let shown = || digest_hex.chars().take(64).collect::<String>();
        let digest = crate::parse_hex_array::<32>(digest_hex, "model digest").map_err(|_| {
            Rejection::ModelNotAllowed {
                model: name.chars().take(64).collect(),
                digest: shown(),
                detail: "digest is not 32 hex bytes".into(),
            }
        })?;
        match allowed.get(name) {
            Some(digests) if digests.contains(&digest) => Ok(()),
            Some(digests) => Err(Rejection::ModelNotAllowed {
                model: name.into(),
                digest: shown(),
                detail: format!("not among the {} digests pinned for it", digests.len()),
            }),
            None => Err(Rejection::ModelNotAllowed {
                model: name.chars().take(64).collect(),
                digest: shown(),
                detail: format!(
                    "no such model pinned (pinned: {})",
                    allowed.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
            }),
        }
    }
}

/// Checks TD attributes: DEBUG and profiling only when allowed; SEPT_VE_DISABLE always
/// required; MIGRATABLE never accepted.
pub fn check_td_attributes(attrs: u64, allow_debug: bool) -> Result<(), Rejection> {
    if attrs & TD_ATTR_DEBUG != 0 && !allow_debug {
        return Err(Rejection::DebugTd {
            td_attributes: format!("{attrs:016x}"),
        });
    }
    if attrs & TD_ATTR_TUD_PROFILING_MASK != 0 && !allow_debug {
        return Err(Rejection::TdAttribute {
            detail: format!("profiling bits set in td attributes {attrs:016x}"),
        });
    }
    if attrs & TD_ATTR_SEPT_VE_DISABLE == 0 {
        return Err(Rejection::TdAttribute {
            detail: format!("SEPT_VE_DISABLE not set in td attributes {attrs:016x}"),
        });
    }
    if attrs & TD_ATTR_MIGRATABLE != 0 {
        return Err(Rejection::TdAttribute {
            detail: format!("MIGRATABLE set in td attributes {attrs:016x}"),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcb_status_names_round_trip() {
        for s in TCB_STATUSES {
            assert_eq!(parse_tcb_status(&s.to_string()).unwrap(), *s);
        }
        assert_eq!(parse_tcb_status("outofdate").unwrap(), TcbStatus::OutOfDate);
        assert!(parse_tcb_status("Revoked").is_err());
        assert!(parse_tcb_status("Fine").is_err());
    }

    #[test]
    fn attributes() {
        let ok = TD_ATTR_SEPT_VE_DISABLE;
        assert!(check_td_attributes(ok, false).is_ok());
        assert!(matches!(
            check_td_attributes(ok | TD_ATTR_DEBUG, false),
            Err(Rejection::DebugTd { .. })
        ));
        assert!(check_td_attributes(ok | TD_ATTR_DEBUG, true).is_ok());
        assert!(check_td_attributes(0, true).is_err());
        assert!(check_td_attributes(ok | TD_ATTR_MIGRATABLE, true).is_err());
        assert!(check_td_attributes(ok | 0x10, false).is_err());
    }

    #[test]
    fn intel_root_fingerprint_is_pinned() {
        assert_eq!(
            hex::encode(TrustRoot::intel().fingerprint()),
            "44a0196b2b99f889b8e149e95b807a350e7424964399e885a7cbb8ccfab674d3"
        );
    }
}

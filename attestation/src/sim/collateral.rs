//! Collateral of the simulated platform: CRLs, TCB info and QE identity, as Intel's PCS serves
//! them (Intel SGX/TDX PCS API v4: TDX TCB info version 3, TD_QE identity version 2), packaged
//! as a `dcap_qvl::QuoteCollateralV3`.
//!
//! The JSON documents are signed by the simulated TCB signing key with ECDSA P-256 over the
//! exact bytes of the JSON string, the signature being raw `r || s`, as Intel signs them.
//!
//! Trust boundary: this produces collateral; it decides nothing. The verifier checks it against
//! whatever root its policy names, and production policy never names the simulated root.

use dcap_qvl::{QuoteCollateralV3, TcbStatus};
use serde::Serialize;

use super::pki::{datetime, CrlIssuer};
use super::quote::consts as quote_consts;
use super::quote::consts::QE_ISVPRODID;
use super::{SimError, SimPlatform};

/// tcbDate of every simulated TCB level.
const SIM_TCB_DATE: &str = "2024-01-01T00:00:00Z";

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct TcbInfoJson {
    id: &'static str,
    version: u8,
    issue_date: String,
    next_update: String,
    fmspc: String,
    pce_id: String,
    tcb_type: u32,
    tcb_evaluation_data_number: u32,
    tdx_module: TdxModuleJson,
    tdx_module_identities: Vec<TdxModuleIdentityJson>,
    tcb_levels: Vec<TcbLevelJson>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct TdxModuleJson {
    mrsigner: String,
    attributes: String,
    attributes_mask: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct TdxModuleIdentityJson {
    id: String,
    mrsigner: String,
    attributes: String,
    attributes_mask: String,
    tcb_levels: Vec<ModuleTcbLevelJson>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ModuleTcbLevelJson {
    tcb: IsvSvnJson,
    tcb_date: &'static str,
    tcb_status: TcbStatus,
}

#[derive(Serialize)]
struct IsvSvnJson {
    isvsvn: u16,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct TcbLevelJson {
    tcb: TcbJson,
    tcb_date: &'static str,
    tcb_status: TcbStatus,
    #[serde(rename = "advisoryIDs", skip_serializing_if = "Vec::is_empty")]
    advisory_ids: Vec<String>,
}

#[derive(Serialize)]
struct TcbJson {
    sgxtcbcomponents: Vec<SvnJson>,
    pcesvn: u16,
    tdxtcbcomponents: Vec<SvnJson>,
}

#[derive(Serialize)]
struct SvnJson {
    svn: u8,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct QeIdentityJson {
    id: &'static str,
    version: u8,
    issue_date: String,
    next_update: String,
    tcb_evaluation_data_number: u32,
    miscselect: String,
    miscselect_mask: String,
    attributes: String,
    attributes_mask: String,
    mrsigner: String,
    isvprodid: u16,
    tcb_levels: Vec<QeTcbLevelJson>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct QeTcbLevelJson {
    tcb: IsvSvnJson,
    tcb_date: &'static str,
    tcb_status: TcbStatus,
}

fn svns(values: &[u8]) -> Vec<SvnJson> {
    values.iter().map(|&svn| SvnJson { svn }).collect()
}

fn upper_hex(bytes: &[u8]) -> String {
    hex::encode_upper(bytes)
}

/// Formats Unix seconds as RFC 3339 UTC (`2025-06-19T10:16:03Z`), as Intel's JSON does.
fn rfc3339(secs: u64, what: &'static str) -> Result<String, SimError> {
    let t = datetime(secs, what)?;
    if !(0..=9999).contains(&t.year()) {
        return Err(SimError::TimeOutOfRange { what, secs });
    }
    Ok(format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    ))
}

impl SimPlatform {
    /// Collateral under which this platform's quotes verify with status UpToDate between
    /// `issued_at` and `issued_at + valid_for_secs` (Unix seconds; TCB info and QE identity
    /// issueDate/nextUpdate, CRL thisUpdate/nextUpdate). Deterministic for given arguments.
    ///
    /// Verification succeeds for `issued_at <= now < issued_at + valid_for_secs`: dcap-qvl
    /// accepts the JSON up to and including nextUpdate, but webpki treats a CRL as expired
    /// from nextUpdate on.
    pub fn collateral(
        &self,
        issued_at: u64,
        valid_for_secs: u64,
    ) -> Result<QuoteCollateralV3, SimError> {
        self.collateral_with_status(issued_at, valid_for_secs, TcbStatus::UpToDate, &[])
    }

    /// Like [`Self::collateral`], but the TCB level the platform matches has `status` and
    /// `advisories`. For any status other than UpToDate an UpToDate level that the platform
    /// does not reach (PCE SVN one higher) is listed first, as in Intel's TCB info. Statuses
    /// that Intel does not allow in a TCB info (e.g. TDRelaunchAdvised) are emitted as given;
    /// verifiers reject them.
    pub fn collateral_with_status(
        &self,
        issued_at: u64,
        valid_for_secs: u64,
        status: TcbStatus,
        advisories: &[&str],
    ) -> Result<QuoteCollateralV3, SimError> {
        if valid_for_secs == 0 {
            return Err(SimError::EmptyValidity(valid_for_secs));
        }
        let next_update =
            issued_at
                .checked_add(valid_for_secs)
                .ok_or(SimError::TimeOutOfRange {
                    what: "collateral nextUpdate",
                    secs: issued_at,
                })?;
        let issue_date = rfc3339(issued_at, "collateral issueDate")?;
        let next_update_str = rfc3339(next_update, "collateral nextUpdate")?;

        let tcb_info = self.tcb_info_json(&issue_date, &next_update_str, status, advisories)?;
        let qe_identity = self.qe_identity_json(&issue_date, &next_update_str)?;
        let tcb_info_signature = self.pki.tcb_key.sign_raw(tcb_info.as_bytes(), "tcb info")?;
        let qe_identity_signature = self
            .pki
            .tcb_key
            .sign_raw(qe_identity.as_bytes(), "qe identity")?;
        let tcb_chain = self.pki.tcb_issuer_chain_pem();

        Ok(QuoteCollateralV3 {
            pck_crl_issuer_chain: self.pki.pck_crl_issuer_chain_pem(),
            root_ca_crl: self.pki.crl(CrlIssuer::Root, issued_at, next_update)?,
            pck_crl: self
                .pki
                .crl(CrlIssuer::PlatformCa, issued_at, next_update)?,
            tcb_info_issuer_chain: tcb_chain.clone(),
            tcb_info,
            tcb_info_signature: tcb_info_signature.to_vec(),
            qe_identity_issuer_chain: tcb_chain,
            qe_identity,
            qe_identity_signature: qe_identity_signature.to_vec(),
            pck_certificate_chain: None,
        })
    }

    fn tcb_info_json(
        &self,
        issue_date: &str,
        next_update: &str,
        status: TcbStatus,
        advisories: &[&str],
    ) -> Result<String, SimError> {
        let p = &self.params;
        let module_mrsigner = upper_hex(&quote_consts::MRSIGNER_SEAM);
        let module_attributes = upper_hex(&quote_consts::SEAM_ATTRIBUTES);
        let all_ones_mask = upper_hex(&[0xff; 8]);

        let module_version = p.tee_tcb_svn[1];
        let tdx_module_identities = if module_version == 0 {
            Vec::new()
        } else {
            vec![TdxModuleIdentityJson {
                id: format!("TDX_{module_version:02X}"),
                mrsigner: module_mrsigner.clone(),
                attributes: module_attributes.clone(),
                attributes_mask: all_ones_mask.clone(),
                tcb_levels: vec![ModuleTcbLevelJson {
                    tcb: IsvSvnJson {
                        isvsvn: u16::from(p.tee_tcb_svn[0]),
                    },
                    tcb_date: SIM_TCB_DATE,
                    tcb_status: TcbStatus::UpToDate,
                }],
            }]
        };

        let level = |pce_svn: u16, status: TcbStatus, advisory_ids: Vec<String>| TcbLevelJson {
            tcb: TcbJson {
                sgxtcbcomponents: svns(&p.cpu_svn),
                pcesvn: pce_svn,
                tdxtcbcomponents: svns(&p.tee_tcb_svn),
            },
            tcb_date: SIM_TCB_DATE,
            tcb_status: status,
            advisory_ids,
        };
        let mut tcb_levels = Vec::new();
        if status != TcbStatus::UpToDate {
            if let Some(newer) = p.pce_svn.checked_add(1) {
                tcb_levels.push(level(newer, TcbStatus::UpToDate, Vec::new()));
            }
        }
        let advisory_ids = advisories.iter().map(|a| a.to_string()).collect();
        tcb_levels.push(level(p.pce_svn, status, advisory_ids));

        let info = TcbInfoJson {
            id: "TDX",
            version: 3,
            issue_date: issue_date.to_string(),
            next_update: next_update.to_string(),
            fmspc: upper_hex(&p.fmspc),
            pce_id: upper_hex(&p.pce_id),
            tcb_type: 0,
            tcb_evaluation_data_number: p.tcb_evaluation_data_number,
            tdx_module: TdxModuleJson {
                mrsigner: module_mrsigner,
                attributes: module_attributes,
                attributes_mask: all_ones_mask,
            },
            tdx_module_identities,
            tcb_levels,
        };
        Ok(serde_json::to_string(&info)?)
    }

    fn qe_identity_json(&self, issue_date: &str, next_update: &str) -> Result<String, SimError> {
        let identity = QeIdentityJson {
            id: "TD_QE",
            version: 2,
            issue_date: issue_date.to_string(),
            next_update: next_update.to_string(),
            tcb_evaluation_data_number: self.params.tcb_evaluation_data_number,
            miscselect: upper_hex(&quote_consts::QE_MISCSELECT.to_le_bytes()),
            miscselect_mask: upper_hex(&[0xff; 4]),
            attributes: upper_hex(&quote_consts::QE_IDENTITY_ATTRIBUTES),
            attributes_mask: upper_hex(&quote_consts::QE_IDENTITY_ATTRIBUTES_MASK),
            mrsigner: upper_hex(&self.qe.mrsigner),
            isvprodid: QE_ISVPRODID,
            tcb_levels: vec![QeTcbLevelJson {
                tcb: IsvSvnJson {
                    isvsvn: self.params.qe_isv_svn,
                },
                tcb_date: SIM_TCB_DATE,
                tcb_status: TcbStatus::UpToDate,
            }],
        };
        Ok(serde_json::to_string(&identity)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_formats_utc() {
        assert_eq!(rfc3339(0, "t").unwrap(), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_750_328_163, "t").unwrap(), "2025-06-19T10:16:03Z");
        assert!(rfc3339(u64::MAX, "t").is_err());
    }

    #[test]
    fn json_parses_as_dcap_qvl_types() {
        let platform = SimPlatform::from_seed([4u8; 32]).unwrap();
        let c = platform
            .collateral_with_status(1_750_000_000, 86_400, TcbStatus::OutOfDate, &["SA-1"])
            .unwrap();
        let info: dcap_qvl::TcbInfo = serde_json::from_str(&c.tcb_info).unwrap();
        assert_eq!(info.id, "TDX");
        assert_eq!(info.tcb_levels.len(), 2);
        assert_eq!(info.tcb_levels[1].tcb_status, TcbStatus::OutOfDate);
        assert_eq!(info.tcb_levels[1].advisory_ids, ["SA-1"]);
        assert_eq!(info.tdx_module_identities[0].id, "TDX_01");
        let qe: dcap_qvl::QeIdentity = serde_json::from_str(&c.qe_identity).unwrap();
        assert_eq!(qe.id, "TD_QE");
        assert_eq!(qe.isvprodid, QE_ISVPRODID);
    }

    #[test]
    fn rejects_empty_and_overflowing_validity() {
        let platform = SimPlatform::from_seed([4u8; 32]).unwrap();
        assert!(matches!(
            platform.collateral(1_750_000_000, 0),
            Err(SimError::EmptyValidity(0))
        ));
        assert!(matches!(
            platform.collateral(u64::MAX, 1),
            Err(SimError::TimeOutOfRange { .. })
        ));
    }
}

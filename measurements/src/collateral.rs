//! Quote collateral: the Intel-signed documents a verifier needs besides the quote.
//!
//! The format is dcap-qvl's `QuoteCollateralV3` (as a PCCS returns it: PCK CRL and its issuer
//! chain, root CA CRL, TCB info + signature + issuer chain, QE identity + signature + issuer
//! chain). Collateral may come from an untrusted source: every signature in it chains to the
//! root the policy pins. This module only parses it and reads its validity dates so that
//! expiry is reported with a named reason before the cryptographic checks run.

use serde::Deserialize;

pub use dcap_qvl::QuoteCollateralV3;

/// Collateral parse errors.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CollateralError {
    #[error("collateral json: {0}")]
    Json(String),
    #[error("collateral {item}: {detail}")]
    Field { item: &'static str, detail: String },
}

/// Parsed collateral plus the validity windows of its dated items.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Collateral {
    pub raw: QuoteCollateralV3,
    /// `(item, issued_at, next_update)` in Unix seconds for TCB info, QE identity and the two CRLs.
    pub windows: Vec<ValidityWindow>,
}

/// The validity window of one collateral item.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ValidityWindow {
    pub item: &'static str,
    pub issued_at: u64,
    pub next_update: u64,
}

impl ValidityWindow {
    /// The last second at which the item is valid. TCB info and QE identity are valid up to and
    /// including `nextUpdate` (Intel QVL); a CRL is expired from its `nextUpdate` on (RFC 5280
    /// as webpki implements it).
    pub fn last_valid_second(&self) -> u64 {
        if self.item.ends_with("crl") {
            self.next_update.saturating_sub(1)
        } else {
            self.next_update
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Dated {
    issue_date: String,
    next_update: String,
}

impl Collateral {
    /// Parses collateral JSON (dcap-qvl `QuoteCollateralV3`, binary fields hex-encoded).
    pub fn from_json(bytes: &[u8]) -> Result<Self, CollateralError> {
        let raw: QuoteCollateralV3 =
            serde_json::from_slice(bytes).map_err(|e| CollateralError::Json(e.to_string()))?;
        Self::new(raw)
    }

    /// Serializes the collateral as JSON (the format [`Collateral::from_json`] reads).
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(&self.raw).unwrap_or_default()
    }

    /// Wraps already-decoded collateral, reading its validity windows.
    pub fn new(raw: QuoteCollateralV3) -> Result<Self, CollateralError> {
        let windows = vec![
            json_window("tcb_info", &raw.tcb_info)?,
            json_window("qe_identity", &raw.qe_identity)?,
            crl_window("root_ca_crl", &raw.root_ca_crl)?,
            crl_window("pck_crl", &raw.pck_crl)?,
        ];
        Ok(Self { raw, windows })
    }

    /// The last second at which every dated item is still valid: the collateral is stale after it.
    pub fn expires_at(&self) -> u64 {
        self.windows
            .iter()
            .map(ValidityWindow::last_valid_second)
            .min()
            .unwrap_or(0)
    }

    /// The latest issue time over all dated items.
    pub fn issued_at(&self) -> u64 {
        self.windows.iter().map(|w| w.issued_at).max().unwrap_or(0)
    }
}

/// Which Intel CA issued a PCK certificate: the `ca` parameter of a PCCS's `pckcrl` query.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PckCa {
    Platform,
    Processor,
}

impl PckCa {
    /// The query value (`platform` or `processor`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Platform => "platform",
            Self::Processor => "processor",
        }
    }
}

/// What a collateral service needs to know about a quote: the platform's FMSPC, the CA that
/// issued its PCK certificate and whether TDX or SGX collateral is wanted. Read from the PCK
/// certificate the quote embeds (certification data type 5); nothing here is verified, a
/// lie only makes the verifier fetch collateral that does not match the quote.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PckIdentity {
    pub fmspc: [u8; 6],
    pub ca: PckCa,
    /// `true` for a TDX quote, `false` for SGX.
    pub tdx: bool,
}

impl PckIdentity {
    /// The FMSPC as the upper-case hex a PCCS expects.
    pub fn fmspc_hex(&self) -> String {
        hex::encode_upper(self.fmspc)
    }
}

/// Intel's SGX extension of PCK certificates, and its FMSPC item (Intel SGX PCK Certificate
/// and CRL Profile).
const SGX_EXTENSION_OID: &str = "1.2.840.113741.1.13.1";
const FMSPC_OID: &str = "1.2.840.113741.1.13.1.4";
/// TEE type of a TDX quote header.
const TEE_TYPE_TDX: u32 = 0x81;

/// Reads the [`PckIdentity`] of `quote` from its embedded PCK certificate.
pub fn pck_identity(quote: &[u8]) -> Result<PckIdentity, CollateralError> {
    use x509_parser::prelude::FromDer;
    let field = |item: &'static str, detail: String| CollateralError::Field { item, detail };
    let q = dcap_qvl::quote::Quote::parse(quote).map_err(|e| field("quote", format!("{e:#}")))?;
    let pem = q
        .raw_cert_chain()
        .map_err(|e| field("pck certificate", format!("{e:#}")))?;
    let chain = crate::verify::pem_certs(pem);
    let leaf = chain
        .first()
        .ok_or_else(|| field("pck certificate", "quote embeds no certificate".into()))?;
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(leaf)
        .map_err(|e| field("pck certificate", e.to_string()))?;
    let issuer = cert.issuer().to_string();
    let ca = if issuer.contains("PCK Platform CA") {
        PckCa::Platform
    } else if issuer.contains("PCK Processor CA") {
        PckCa::Processor
    } else {
        return Err(field(
            "pck certificate",
            format!("issuer {issuer:?} is neither the PCK Platform nor the Processor CA"),
        ));
    };
    let ext = cert
        .extensions()
        .iter()
        .find(|e| e.oid.to_id_string() == SGX_EXTENSION_OID)
        .ok_or_else(|| field("pck certificate", "no SGX extension".into()))?;
    let fmspc = sgx_extension_fmspc(ext.value).ok_or_else(|| {
        field(
            "pck certificate",
            "SGX extension has no 6-byte FMSPC".into(),
        )
    })?;
    Ok(PckIdentity {
        fmspc,
        ca,
        tdx: q.header.tee_type == TEE_TYPE_TDX,
    })
}

/// The FMSPC in the DER value of the SGX extension: a SEQUENCE of SEQUENCE { OID, value }.
fn sgx_extension_fmspc(der: &[u8]) -> Option<[u8; 6]> {
    use der::{asn1::ObjectIdentifier, Decode, Reader};
    #[derive(der::Sequence)]
    struct Item {
        id: ObjectIdentifier,
        value: der::Any,
    }
    let fmspc_oid = ObjectIdentifier::new(FMSPC_OID).ok()?;
    let mut reader = der::SliceReader::new(der).ok()?;
    let items: Vec<Item> = reader
        .sequence(|r| {
            let mut out = Vec::new();
            while !r.is_finished() {
                out.push(Item::decode(r)?);
            }
            Ok(out)
        })
        .ok()?;
    if !reader.is_finished() {
        return None;
    }
    let item = items.into_iter().find(|i| i.id == fmspc_oid)?;
    let octets = der::asn1::OctetStringRef::try_from(&item.value).ok()?;
    octets.as_bytes().try_into().ok()
}

fn json_window(item: &'static str, json: &str) -> Result<ValidityWindow, CollateralError> {
    let d: Dated = serde_json::from_str(json).map_err(|e| CollateralError::Field {
        item,
        detail: e.to_string(),
    })?;
    Ok(ValidityWindow {
        item,
        issued_at: rfc3339(item, &d.issue_date)?,
        next_update: rfc3339(item, &d.next_update)?,
    })
}

fn crl_window(item: &'static str, der: &[u8]) -> Result<ValidityWindow, CollateralError> {
    use x509_parser::prelude::FromDer;
    let (_, crl) =
        x509_parser::revocation_list::CertificateRevocationList::from_der(der).map_err(|e| {
            CollateralError::Field {
                item,
                detail: e.to_string(),
            }
        })?;
    let issued_at = crl.last_update().timestamp();
    let next_update = crl
        .next_update()
        .map(|t| t.timestamp())
        .ok_or(CollateralError::Field {
            item,
            detail: "crl has no nextUpdate".into(),
        })?;
    Ok(ValidityWindow {
        item,
        issued_at: u64::try_from(issued_at).unwrap_or(0),
        next_update: u64::try_from(next_update).unwrap_or(0),
    })
}

/// Parses the `YYYY-MM-DDTHH:MM:SSZ` timestamps Intel's PCS uses (fractional seconds and
/// numeric offsets tolerated) into Unix seconds.
pub fn rfc3339(item: &'static str, s: &str) -> Result<u64, CollateralError> {
    let bad = || CollateralError::Field {
        item,
        detail: format!("bad timestamp {s:?}"),
    };
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || (b[10] != b'T' && b[10] != b't') {
        return Err(bad());
    }
    let num = |r: std::ops::Range<usize>| -> Result<i64, CollateralError> {
        s.get(r)
            .filter(|x| x.bytes().all(|c| c.is_ascii_digit()))
            .and_then(|x| x.parse().ok())
            .ok_or_else(bad)
    };
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, se) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || se > 60 {
        return Err(bad());
    }
    // Byte-wise from here on: the input is untrusted text, never sliced at a byte offset that
    // may fall inside a multi-byte character.
    let mut rest = &b[19..];
    if let Some(frac) = rest.strip_prefix(b".") {
        let digits = frac.iter().take_while(|c| c.is_ascii_digit()).count();
        rest = &frac[digits..];
    }
    let two = |hi: u8, lo: u8| -> Result<i64, CollateralError> {
        if hi.is_ascii_digit() && lo.is_ascii_digit() {
            Ok(i64::from(hi - b'0') * 10 + i64::from(lo - b'0'))
        } else {
            Err(bad())
        }
    };
    let offset = match rest {
        b"Z" | b"z" => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let (oh, om) = (two(*h1, *h2)?, two(*m1, *m2)?);
            if oh > 23 || om > 59 {
                return Err(bad());
            }
            let sign = if *sign == b'-' { -1 } else { 1 };
            sign * (oh * 3600 + om * 60)
        }
        _ => return Err(bad()),
    };
    // Days from civil (Howard Hinnant's algorithm, proleptic Gregorian).
    let y2 = if mo <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146097 + doe - 719468;
    let secs = days * 86400 + h * 3600 + mi * 60 + se - offset;
    u64::try_from(secs).map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_known_values() {
        assert_eq!(rfc3339("t", "1970-01-01T00:00:00Z").unwrap(), 0);
        assert_eq!(rfc3339("t", "2025-07-19T10:00:34Z").unwrap(), 1752919234);
        assert_eq!(
            rfc3339("t", "2025-07-19T12:00:34+02:00").unwrap(),
            1752919234
        );
        assert_eq!(
            rfc3339("t", "2024-02-29T00:00:00.123Z").unwrap(),
            1709164800
        );
        for bad in [
            "",
            "2025-13-01T00:00:00Z",
            "2025-07-19 10:00:34Z",
            "2025-07-19T10:00:34",
            "é025-07-19T10:00:34Z",
        ] {
            assert!(rfc3339("t", bad).is_err(), "{bad}");
        }
    }

    /// Regression: a multi-byte character in the offset (reachable before authentication,
    /// through collateral embedded in an RA-TLS certificate) panicked on a byte slice.
    #[test]
    fn rfc3339_non_ascii_never_panics() {
        assert!(rfc3339("t", "2025-07-19T10:00:34+0\u{e9}00").is_err());
        assert!(rfc3339("t", "2025-07-19T10:00:34+\u{e9}:000").is_err());
        let good = "2025-07-19T12:00:34.5+02:00";
        for ch in ['\u{e9}', '\u{20ac}', '\u{1f600}'] {
            for at in 0..=good.len() {
                for replace in [false, true] {
                    let mut s = good.as_bytes()[..at].to_vec();
                    let mut buf = [0u8; 4];
                    s.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
                    let tail = if replace && at < good.len() {
                        at + 1
                    } else {
                        at
                    };
                    s.extend_from_slice(&good.as_bytes()[tail..]);
                    let s = String::from_utf8(s).unwrap();
                    assert!(rfc3339("t", &s).is_err(), "{s}");
                }
            }
        }
        assert!(rfc3339("t", "2025-07-19T10:00:34+24:00").is_err());
    }
}

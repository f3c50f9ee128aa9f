//! Parsing of Intel TDX quotes (versions 4 and 5) into the fields cocoon's policy reads.
//!
//! Layout per the Intel TDX DCAP Quoting Library API, "Quote Format" (v4: header, TD report
//! body, signature data; v5: header, body descriptor `{type: u16, size: u32}`, body, signature
//! data). This parser only extracts fields; signature and certificate verification is done by
//! [`crate::verify`] through dcap-qvl. It never panics on any input (see `fuzz/`).

use crate::registers::{Sha384, TdRegisters};
use crate::QuoteError;

/// Length of the quote header.
pub const HEADER_LEN: usize = 48;
/// Length of a TDX 1.0 TD report body (`sgx_report2_body_t`).
pub const TD_REPORT10_LEN: usize = 584;
/// Length of a TDX 1.5 TD report body.
pub const TD_REPORT15_LEN: usize = 648;
/// Length of a TDX 1.5 "ex" TD report body.
pub const TD_REPORT15_EX_LEN: usize = 885;
/// TEE type of TDX in the quote header.
pub const TEE_TYPE_TDX: u32 = 0x81;
/// Attestation key type ECDSA-256 with P-256.
pub const ATT_KEY_TYPE_ECDSA_P256: u16 = 2;
/// Offset of the 64-byte report_data inside a v4 quote.
pub const V4_REPORT_DATA_OFFSET: usize = HEADER_LEN + 520;

/// Fields of a TD report body that cocoon reads (the TDX 1.0 part; TDX 1.5 bodies extend it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TdReport {
    pub tee_tcb_svn: [u8; 16],
    pub mrseam: Sha384,
    pub mrsigner_seam: Sha384,
    pub seam_attributes: [u8; 8],
    pub registers: TdRegisters,
    pub report_data: [u8; 64],
}

/// A structurally parsed TDX quote. Nothing in it is verified yet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParsedQuote {
    /// Quote format version (4 or 5).
    pub version: u16,
    /// v5 body type (2 = TDX 1.0, 3 = TDX 1.5, 4 = TDX 1.5 ex); 2 for v4 quotes.
    pub body_type: u16,
    pub attestation_key_type: u16,
    pub qe_vendor_id: [u8; 16],
    pub report: TdReport,
    /// Length of the signature data that follows the body.
    pub signature_data_len: u32,
    /// Total length of the quote structure. Bytes after it (real quotes carry zero padding,
    /// one real test vector carries text) are ignored, as Intel's QVL ignores them: nothing
    /// that follows the signature data is covered by a signature or interpreted.
    pub len: usize,
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], QuoteError> {
        let end = self.pos.checked_add(n).ok_or(QuoteError::Truncated {
            field,
            offset: self.pos,
            need: n,
            have: 0,
        })?;
        let slice = self.bytes.get(self.pos..end).ok_or(QuoteError::Truncated {
            field,
            offset: self.pos,
            need: n,
            have: self.bytes.len().saturating_sub(self.pos),
        })?;
        self.pos = end;
        Ok(slice)
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], QuoteError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, field)?);
        Ok(out)
    }

    fn u16(&mut self, field: &'static str) -> Result<u16, QuoteError> {
        Ok(u16::from_le_bytes(self.array(field)?))
    }

    fn u32(&mut self, field: &'static str) -> Result<u32, QuoteError> {
        Ok(u32::from_le_bytes(self.array(field)?))
    }
}

impl ParsedQuote {
    /// Parses the header and TD report body of a binary quote.
    pub fn parse(bytes: &[u8]) -> Result<Self, QuoteError> {
        let mut r = Reader { bytes, pos: 0 };
        let version = r.u16("header.version")?;
        let attestation_key_type = r.u16("header.attestation_key_type")?;
        let tee_type = r.u32("header.tee_type")?;
        let _reserved = r.take(4, "header.reserved")?;
        let qe_vendor_id = r.array::<16>("header.qe_vendor_id")?;
        let _user_data = r.take(20, "header.user_data")?;
        if version != 4 && version != 5 {
            return Err(QuoteError::UnsupportedVersion(version));
        }
        if tee_type != TEE_TYPE_TDX {
            return Err(QuoteError::NotTdx(tee_type));
        }
        let body_type = if version == 5 {
            let body_type = r.u16("body.type")?;
            let size = r.u32("body.size")?;
            let expected = match body_type {
                2 => TD_REPORT10_LEN,
                3 => TD_REPORT15_LEN,
                4 => TD_REPORT15_EX_LEN,
                other => return Err(QuoteError::UnsupportedBodyType(other)),
            };
            if size as usize != expected {
                return Err(QuoteError::BodySize {
                    body_type,
                    expected,
                    got: size,
                });
            }
            body_type
        } else {
            2
        };
        let body_start = r.pos;
        let report = parse_td_report10(&mut r)?;
        // Skip the TDX 1.5 extension fields: the verifier (dcap-qvl) checks them.
        let body_len = match body_type {
            3 => TD_REPORT15_LEN,
            4 => TD_REPORT15_EX_LEN,
            _ => TD_REPORT10_LEN,
        };
        r.pos = body_start;
        r.take(body_len, "body")?;
        let signature_data_len = r.u32("signature_data_len")?;
        let remaining = bytes.len().saturating_sub(r.pos);
        if (signature_data_len as usize) > remaining {
            return Err(QuoteError::Truncated {
                field: "signature_data",
                offset: r.pos,
                need: signature_data_len as usize,
                have: remaining,
            });
        }
        Ok(Self {
            version,
            body_type,
            attestation_key_type,
            qe_vendor_id,
            report,
            signature_data_len,
            len: r.pos + signature_data_len as usize,
        })
    }
}

fn parse_td_report10(r: &mut Reader<'_>) -> Result<TdReport, QuoteError> {
    let tee_tcb_svn = r.array("td.tee_tcb_svn")?;
    let mrseam = r.array("td.mrseam")?;
    let mrsigner_seam = r.array("td.mrsigner_seam")?;
    let seam_attributes = r.array("td.seam_attributes")?;
    let td_attributes = r.array("td.td_attributes")?;
    let xfam = r.array("td.xfam")?;
    let mrtd = r.array("td.mrtd")?;
    let mrconfigid = r.array("td.mrconfigid")?;
    let mrowner = r.array("td.mrowner")?;
    let mrownerconfig = r.array("td.mrownerconfig")?;
    let rtmr = [
        r.array("td.rtmr0")?,
        r.array("td.rtmr1")?,
        r.array("td.rtmr2")?,
        r.array("td.rtmr3")?,
    ];
    let report_data = r.array("td.report_data")?;
    Ok(TdReport {
        tee_tcb_svn,
        mrseam,
        mrsigner_seam,
        seam_attributes,
        registers: TdRegisters {
            mrtd,
            rtmr,
            td_attributes,
            xfam,
            mrconfigid,
            mrowner,
            mrownerconfig,
        },
        report_data,
    })
}

/// Decodes quote input that may be binary or hex text (whitespace and a `0x` prefix allowed).
pub fn decode_quote_input(bytes: &[u8], hex_text: bool) -> Result<Vec<u8>, QuoteError> {
    if !hex_text {
        return Ok(bytes.to_vec());
    }
    let text = std::str::from_utf8(bytes).map_err(|_| QuoteError::HexNotUtf8)?;
    let trimmed = text.trim();
    let trimmed = trimmed.strip_prefix("0x").unwrap_or(trimmed);
    let compact: String = trimmed.chars().filter(|c| !c.is_whitespace()).collect();
    hex::decode(&compact).map_err(|e| QuoteError::Hex(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A structurally valid quote: `version`, v5 body type, body filled with a pattern,
    /// `sig` bytes of signature data.
    fn synthetic(version: u16, body_type: u16, sig: &[u8]) -> Vec<u8> {
        let mut q = Vec::new();
        q.extend_from_slice(&version.to_le_bytes());
        q.extend_from_slice(&ATT_KEY_TYPE_ECDSA_P256.to_le_bytes());
        q.extend_from_slice(&TEE_TYPE_TDX.to_le_bytes());
        q.extend_from_slice(&[0; 40]);
        let len = match body_type {
            3 => TD_REPORT15_LEN,
            4 => TD_REPORT15_EX_LEN,
            _ => TD_REPORT10_LEN,
        };
        if version == 5 {
            q.extend_from_slice(&body_type.to_le_bytes());
            q.extend_from_slice(&(len as u32).to_le_bytes());
        }
        q.extend((0..len).map(|i| (i % 251) as u8));
        q.extend_from_slice(&(sig.len() as u32).to_le_bytes());
        q.extend_from_slice(sig);
        q
    }

    #[test]
    fn v4_and_v5_bodies_give_the_same_fields() {
        let v4 = ParsedQuote::parse(&synthetic(4, 2, b"sig")).unwrap();
        for body_type in [2, 3, 4] {
            let q = synthetic(5, body_type, b"sig");
            let v5 = ParsedQuote::parse(&q).unwrap();
            assert_eq!(v5.version, 5);
            assert_eq!(v5.body_type, body_type);
            assert_eq!(v5.report, v4.report, "body type {body_type}");
            assert_eq!(v5.len, q.len());
        }
        // Field offsets of the TDX 1.0 body: mrtd at 136, report_data at 520.
        assert_eq!(v4.report.registers.mrtd[0], 136);
        assert_eq!(v4.report.report_data[0], (520 % 251) as u8);
        assert_eq!(V4_REPORT_DATA_OFFSET, 48 + 520);
    }

    #[test]
    fn structural_errors_are_typed() {
        let mut bad_version = synthetic(4, 2, b"");
        bad_version[0] = 3;
        assert_eq!(
            ParsedQuote::parse(&bad_version),
            Err(QuoteError::UnsupportedVersion(3))
        );
        let mut sgx = synthetic(4, 2, b"");
        sgx[4..8].copy_from_slice(&0u32.to_le_bytes());
        assert_eq!(ParsedQuote::parse(&sgx), Err(QuoteError::NotTdx(0)));
        let mut body = synthetic(5, 2, b"");
        body[48] = 9;
        assert_eq!(
            ParsedQuote::parse(&body),
            Err(QuoteError::UnsupportedBodyType(9))
        );
        let mut size = synthetic(5, 2, b"");
        size[50] = 0;
        assert!(matches!(
            ParsedQuote::parse(&size),
            Err(QuoteError::BodySize { .. })
        ));
        let full = synthetic(4, 2, b"signature");
        for cut in [0, 10, 47, 48, 300, 632, 635, full.len() - 1] {
            assert!(
                matches!(
                    ParsedQuote::parse(&full[..cut]),
                    Err(QuoteError::Truncated { .. })
                ),
                "cut {cut}"
            );
        }
    }

    #[test]
    fn hex_input() {
        let q = synthetic(4, 2, b"s");
        let text = format!("0x{}\n", hex::encode(&q));
        assert_eq!(decode_quote_input(text.as_bytes(), true).unwrap(), q);
        assert!(matches!(
            decode_quote_input(b"zz", true),
            Err(QuoteError::Hex(_))
        ));
        assert_eq!(
            decode_quote_input(&[0xff, 0xfe], true),
            Err(QuoteError::HexNotUtf8)
        );
    }
}

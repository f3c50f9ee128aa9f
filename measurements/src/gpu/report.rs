//! Strict parser of an NVIDIA Hopper attestation report: the SPDM 1.1 GET_MEASUREMENTS request
//! followed by the signed MEASUREMENTS response, exactly as the GPU returns them.
//!
//! Layout (DMTF DSP0274 SPDM 1.1, sections 10.11 "GET_MEASUREMENTS request and MEASUREMENTS
//! response" and 10.11.1 "Measurement block"; multi-byte integers little-endian):
//!
//! ```text
//! request  (37 bytes): version 0x11 | code 0xE0 | param1 (bit 0: signature requested)
//!                      | param2 (0xFF: all measurements) | nonce[32] | slot id
//! response:            version 0x11 | code 0x60 | param1 | param2 (slot id)
//!                      | number_of_blocks (1) | record_length (3) | record[record_length]
//!                      | nonce[32] | opaque_length (2) | opaque[opaque_length]
//!                      | signature[96]  (ECDSA P-384 r || s over everything before it)
//! block:               index (1) | specification 0x01 (DMTF) | size (2)
//!                      | value_type (1) | value_size (2) | value[value_size]   (size = 3 + value_size)
//! opaque (NVIDIA):     repeated  type (2) | length (2) | value[length]
//! ```
//!
//! Every length is checked against the bytes present, block indices must be unique, the
//! declared block count must match, and nothing may follow the signature. Failures are typed
//! [`ReportError`]s; nothing here panics on any input (a fuzz target checks that).
//!
//! Trust boundary: the input is untrusted bytes. Parsing establishes no trust: the signature,
//! nonce and certificate chain are checked by [`super::verify_gpu`].

use std::collections::BTreeMap;

/// SPDM version byte of the reports this parser accepts (SPDM 1.1, as Hopper firmware emits).
pub const SPDM_VERSION_11: u8 = 0x11;
/// GET_MEASUREMENTS request code.
pub const GET_MEASUREMENTS: u8 = 0xE0;
/// MEASUREMENTS response code.
pub const MEASUREMENTS: u8 = 0x60;
/// Length of the request (SPDM 1.1 with the signature-requested attribute).
pub const REQUEST_LEN: usize = 37;
/// Length of the ECDSA P-384 signature (r || s).
pub const SIGNATURE_LEN: usize = 96;
/// Length of the nonce in the request and the response.
pub const NONCE_LEN: usize = 32;
/// DMTF measurement specification (measurement block byte 1).
pub const DMTF_MEASUREMENT_SPEC: u8 = 0x01;

/// NVIDIA opaque-data field types used by the verifier.
pub mod opaque_type {
    /// Driver version, NUL-terminated ASCII ("550.90.07").
    pub const DRIVER_VERSION: u16 = 3;
    /// VBIOS version, 8 bytes.
    pub const VBIOS_VERSION: u16 = 6;
    /// NVDEC0 engine status: 0xAA enabled, 0x55 disabled.
    pub const NVDEC0_STATUS: u16 = 11;
    /// Chip SKU, NUL-padded ASCII ("882").
    pub const CHIP_SKU: u16 = 15;
    /// Project, NUL-padded ASCII ("1010").
    pub const PROJECT: u16 = 17;
    /// Project SKU, NUL-padded ASCII ("0200").
    pub const PROJECT_SKU: u16 = 18;
    /// FWID: SHA-384 of the firmware that holds the attestation key (48 bytes).
    pub const FWID: u16 = 20;
}

/// NVDEC0 status byte meaning "enabled".
pub const NVDEC_ENABLED: u8 = 0xAA;
/// NVDEC0 status byte meaning "disabled".
pub const NVDEC_DISABLED: u8 = 0x55;

/// Why a report could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReportError {
    #[error("report truncated at {field} (offset {offset}): need {need} bytes, have {have}")]
    Truncated {
        field: &'static str,
        offset: usize,
        need: usize,
        have: usize,
    },
    #[error("{field}: expected {expected:#04x}, got {got:#04x}")]
    Unexpected {
        field: &'static str,
        expected: u8,
        got: u8,
    },
    #[error("request does not ask for a signature (param1 {0:#04x})")]
    SignatureNotRequested(u8),
    #[error("response declares {declared} measurement blocks, record holds {found}")]
    BlockCount { declared: u8, found: usize },
    #[error("measurement block {index}: {detail}")]
    Block { index: u8, detail: String },
    #[error("measurement block index {0} appears twice")]
    DuplicateBlock(u8),
    #[error("opaque field type {0} appears twice")]
    DuplicateOpaque(u16),
    #[error("opaque data: field at offset {offset} overruns the opaque area")]
    OpaqueOverrun { offset: usize },
    #[error("opaque field {field}: {detail}")]
    OpaqueField { field: &'static str, detail: String },
    #[error("opaque field {0} missing")]
    OpaqueMissing(&'static str),
    #[error("{0} trailing bytes after the signature")]
    Trailing(usize),
    #[error("hex report input: {0}")]
    Hex(String),
}

/// One measurement block of the response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MeasurementBlock {
    /// SPDM block index (1-based). NVIDIA's RIMs number the same measurement `index - 1`.
    pub index: u8,
    /// DMTF measurement value type (e.g. 0x01 mutable firmware).
    pub value_type: u8,
    /// The measurement value (a SHA-384 digest on Hopper).
    pub value: Vec<u8>,
}

impl MeasurementBlock {
    /// The index NVIDIA's RIMs and verifier use for this block (0-based).
    pub fn rim_index(&self) -> u16 {
        u16::from(self.index).saturating_sub(1)
    }
}

/// A parsed Hopper attestation report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GpuReport {
    /// The nonce the requester put into GET_MEASUREMENTS.
    pub request_nonce: [u8; NONCE_LEN],
    /// Request param2 (0xFF: all measurements).
    pub measurement_operation: u8,
    /// The responder's nonce.
    pub response_nonce: [u8; NONCE_LEN],
    /// Blocks in the order of the record.
    pub blocks: Vec<MeasurementBlock>,
    /// Opaque fields by type.
    pub opaque: BTreeMap<u16, Vec<u8>>,
    /// Driver version from the opaque data ("550.90.07").
    pub driver_version: String,
    /// VBIOS version from the opaque data, as NVIDIA prints it ("96.00.9F.00.01").
    pub vbios_version: String,
    /// FWID from the opaque data.
    pub fwid: Vec<u8>,
    /// NVDEC0 status byte if present.
    pub nvdec0_status: Option<u8>,
    /// The signed bytes (request and response up to the signature).
    pub signed_len: usize,
    /// ECDSA P-384 signature `r || s`.
    pub signature: [u8; SIGNATURE_LEN],
}

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], ReportError> {
        let have = self.buf.len().saturating_sub(self.pos);
        if have < n {
            return Err(ReportError::Truncated {
                field,
                offset: self.pos,
                need: n,
                have,
            });
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn u8(&mut self, field: &'static str) -> Result<u8, ReportError> {
        Ok(self.take(1, field)?[0])
    }

    fn u16(&mut self, field: &'static str) -> Result<u16, ReportError> {
        let b = self.take(2, field)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    fn u24(&mut self, field: &'static str) -> Result<usize, ReportError> {
        let b = self.take(3, field)?;
        Ok(usize::from(b[0]) | usize::from(b[1]) << 8 | usize::from(b[2]) << 16)
    }

    fn expect(&mut self, field: &'static str, expected: u8) -> Result<(), ReportError> {
        let got = self.u8(field)?;
        if got != expected {
            return Err(ReportError::Unexpected {
                field,
                expected,
                got,
            });
        }
        Ok(())
    }
}

/// Decodes report input that is either raw bytes or hex text (whitespace around it ignored).
/// Raw bytes are recognised by their first byte being the SPDM version 0x11 rather than an
/// ASCII hex digit.
pub fn decode_report_input(input: &[u8]) -> Result<Vec<u8>, ReportError> {
    if input.first() == Some(&SPDM_VERSION_11) {
        return Ok(input.to_vec());
    }
    let text = std::str::from_utf8(input)
        .map_err(|_| ReportError::Hex("neither a binary spdm report nor utf-8 hex text".into()))?;
    let t = text.trim();
    let t = t.strip_prefix("0x").unwrap_or(t);
    hex::decode(t).map_err(|e| ReportError::Hex(e.to_string()))
}

impl GpuReport {
    /// Parses a report (request followed by response), rejecting anything that is not exactly
    /// one well-formed request and one signed response.
    pub fn parse(bytes: &[u8]) -> Result<Self, ReportError> {
        let mut c = Cursor { buf: bytes, pos: 0 };
        // Request.
        c.expect("request spdm version", SPDM_VERSION_11)?;
        c.expect("request code", GET_MEASUREMENTS)?;
        let attrs = c.u8("request param1")?;
        if attrs & 1 == 0 {
            return Err(ReportError::SignatureNotRequested(attrs));
        }
        let measurement_operation = c.u8("request param2")?;
        let request_nonce = to_array(c.take(NONCE_LEN, "request nonce")?);
        let _slot = c.u8("request slot id")?;
        // Response.
        c.expect("response spdm version", SPDM_VERSION_11)?;
        c.expect("response code", MEASUREMENTS)?;
        let _param1 = c.u8("response param1")?;
        let _param2 = c.u8("response param2")?;
        let declared = c.u8("number of blocks")?;
        let record_len = c.u24("measurement record length")?;
        let record = c.take(record_len, "measurement record")?;
        let blocks = parse_record(record)?;
        if blocks.len() != usize::from(declared) {
            return Err(ReportError::BlockCount {
                declared,
                found: blocks.len(),
            });
        }
        let response_nonce = to_array(c.take(NONCE_LEN, "response nonce")?);
        let opaque_len = usize::from(c.u16("opaque length")?);
        let opaque = parse_opaque(c.take(opaque_len, "opaque data")?)?;
        let signed_len = c.pos;
        let signature = to_array(c.take(SIGNATURE_LEN, "signature")?);
        if c.pos != bytes.len() {
            return Err(ReportError::Trailing(bytes.len() - c.pos));
        }
        let driver_version = ascii_field(&opaque, opaque_type::DRIVER_VERSION, "driver version")?;
        let vbios_version = vbios_field(&opaque)?;
        let fwid = opaque
            .get(&opaque_type::FWID)
            .ok_or(ReportError::OpaqueMissing("fwid"))?
            .clone();
        if fwid.len() != 48 {
            return Err(ReportError::OpaqueField {
                field: "fwid",
                detail: format!("expected 48 bytes, got {}", fwid.len()),
            });
        }
        let nvdec0_status = match opaque.get(&opaque_type::NVDEC0_STATUS) {
            None => None,
            Some(v) if v.len() == 1 && (v[0] == NVDEC_ENABLED || v[0] == NVDEC_DISABLED) => {
                Some(v[0])
            }
            Some(v) => {
                return Err(ReportError::OpaqueField {
                    field: "nvdec0 status",
                    detail: format!("expected one byte 0xaa or 0x55, got {}", hex::encode(v)),
                })
            }
        };
        Ok(Self {
            request_nonce,
            measurement_operation,
            response_nonce,
            blocks,
            opaque,
            driver_version,
            vbios_version,
            fwid,
            nvdec0_status,
            signed_len,
            signature,
        })
    }

    /// Whether the NVDEC0 engine is reported disabled.
    pub fn nvdec0_disabled(&self) -> bool {
        self.nvdec0_status == Some(NVDEC_DISABLED)
    }

    /// An opaque ASCII field (NUL padding removed), e.g. [`opaque_type::PROJECT`].
    pub fn opaque_text(&self, field: u16) -> Option<String> {
        let v = self.opaque.get(&field)?;
        let end = v.iter().position(|b| *b == 0).unwrap_or(v.len());
        std::str::from_utf8(&v[..end]).ok().map(str::to_owned)
    }
}

fn to_array<const N: usize>(s: &[u8]) -> [u8; N] {
    let mut a = [0u8; N];
    a.copy_from_slice(&s[..N]);
    a
}

fn parse_record(record: &[u8]) -> Result<Vec<MeasurementBlock>, ReportError> {
    let mut c = Cursor {
        buf: record,
        pos: 0,
    };
    let mut blocks: Vec<MeasurementBlock> = Vec::new();
    while c.pos < record.len() {
        let index = c.u8("block index")?;
        let bad = |detail: String| ReportError::Block { index, detail };
        let spec = c.u8("block measurement specification")?;
        if spec != DMTF_MEASUREMENT_SPEC {
            return Err(bad(format!(
                "measurement specification {spec:#04x}, expected 0x01 (dmtf)"
            )));
        }
        let size = usize::from(c.u16("block size")?);
        let body = c.take(size, "block measurement")?;
        if size < 3 {
            return Err(bad(format!(
                "measurement size {size} below the dmtf header"
            )));
        }
        let value_type = body[0];
        let value_size = usize::from(u16::from_le_bytes([body[1], body[2]]));
        if value_size + 3 != size {
            return Err(bad(format!(
                "dmtf value size {value_size} does not fill the block size {size}"
            )));
        }
        if blocks.iter().any(|b| b.index == index) {
            return Err(ReportError::DuplicateBlock(index));
        }
        blocks.push(MeasurementBlock {
            index,
            value_type,
            value: body[3..].to_vec(),
        });
    }
    Ok(blocks)
}

fn parse_opaque(data: &[u8]) -> Result<BTreeMap<u16, Vec<u8>>, ReportError> {
    let mut c = Cursor { buf: data, pos: 0 };
    let mut out = BTreeMap::new();
    while c.pos < data.len() {
        let offset = c.pos;
        let overrun = |_| ReportError::OpaqueOverrun { offset };
        let ty = c.u16("opaque type").map_err(overrun)?;
        let len = usize::from(c.u16("opaque length").map_err(overrun)?);
        let value = c.take(len, "opaque value").map_err(overrun)?;
        if out.insert(ty, value.to_vec()).is_some() {
            return Err(ReportError::DuplicateOpaque(ty));
        }
    }
    Ok(out)
}

fn ascii_field(
    opaque: &BTreeMap<u16, Vec<u8>>,
    ty: u16,
    field: &'static str,
) -> Result<String, ReportError> {
    let v = opaque.get(&ty).ok_or(ReportError::OpaqueMissing(field))?;
    let end = v.iter().position(|b| *b == 0).unwrap_or(v.len());
    if v[end..].iter().any(|b| *b != 0) {
        return Err(ReportError::OpaqueField {
            field,
            detail: "bytes after the nul terminator".into(),
        });
    }
    let s = &v[..end];
    if s.is_empty() || !s.iter().all(|b| b.is_ascii_graphic()) {
        return Err(ReportError::OpaqueField {
            field,
            detail: format!("not printable ascii: {}", hex::encode(v)),
        });
    }
    Ok(String::from_utf8_lossy(s).into_owned())
}

/// VBIOS version: 8 bytes `b0..b7`, printed as NVIDIA does: `b3.b2.b1.b0.b4` in upper-case hex
/// (bytes 00 9f 00 96 01 00 00 00 → "96.00.9F.00.01"). Bytes 5..7 must be zero.
fn vbios_field(opaque: &BTreeMap<u16, Vec<u8>>) -> Result<String, ReportError> {
    let v = opaque
        .get(&opaque_type::VBIOS_VERSION)
        .ok_or(ReportError::OpaqueMissing("vbios version"))?;
    if v.len() != 8 || v[5..].iter().any(|b| *b != 0) {
        return Err(ReportError::OpaqueField {
            field: "vbios version",
            detail: format!(
                "expected 8 bytes with 3 zero high bytes, got {}",
                hex::encode(v)
            ),
        });
    }
    Ok(format!(
        "{:02X}.{:02X}.{:02X}.{:02X}.{:02X}",
        v[3], v[2], v[1], v[0], v[4]
    ))
}

/// Encodes a VBIOS version string ("96.00.9F.00.01") into the 8 opaque bytes; the inverse of
/// the parser's formatting. Used by the simulated generator.
pub fn encode_vbios_version(s: &str) -> Option<[u8; 8]> {
    let parts: Vec<u8> = s
        .split('.')
        .map(|p| u8::from_str_radix(p, 16).ok())
        .collect::<Option<_>>()?;
    if parts.len() != 5 {
        return None;
    }
    Some([parts[3], parts[2], parts[1], parts[0], parts[4], 0, 0, 0])
}

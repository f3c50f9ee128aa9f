//! TCG2 "crypto agile" event logs as TDX firmware leaves them in the CCEL area.
//!
//! The TDX virtual firmware (TDVF/OVMF, td-shim) records every measurement it extends into an
//! RTMR in an event log, published to the guest through the ACPI `CCEL` table (ACPI 6.5,
//! "Confidential Computing Event Log Table"). The log uses the format of the TCG PC Client
//! Platform Firmware Profile Specification (PFP, sections 10.2 "Event Logging" and 10.4
//! "Event Types"):
//!
//! * a `TCG_PCR_EVENT` header record in the old SHA-1 layout (`pcrIndex u32, eventType u32 =
//!   EV_NO_ACTION, digest[20], eventSize u32, event`) whose event is `TCG_EfiSpecIDEvent`
//!   ("Spec ID Event03": platform class, spec version, `uintnSize`, the list of digest
//!   algorithms with their sizes, vendor info);
//! * `TCG_PCR_EVENT2` records: `mrIndex u32, eventType u32, TPML_DIGEST_VALUES (count u32, then
//!   count × (algId u16, digest[size from the header])), eventSize u32, event[eventSize]`.
//!
//! MR index 1..=4 means RTMR0..=3; MR index 0 is MRTD, which no event extends (only
//! `EV_NO_ACTION` events may carry it). The log ends at the end of the area, at a record whose
//! `mrIndex` and `eventType` are both `0xFFFFFFFF` (the unused tail of the area is 0xFF), or at a
//! record whose event type or event size is zero (zero-filled tails).
//!
//! Trust boundary: the whole log is host-writable memory from the verifier's point of view and
//! proves nothing by itself. [`EventLog::replay`] turns it into RTMR values; only when those equal
//! the RTMRs of a verified quote do the events describe what was measured. The parser never
//! panics and never allocates more than the input it was given (every length is checked against
//! the remaining bytes first).

use crate::registers::{extend_sha384, Sha384};

mod ccel_table;
mod describe;

pub use ccel_table::{CcelTable, CcelTableError, CCEL_TABLE_LEN, CC_TYPE_TDX};
pub use describe::DigestCheck;

// Event types (PFP section 10.4.1).
pub const EV_PREBOOT_CERT: u32 = 0x0000_0000;
pub const EV_POST_CODE: u32 = 0x0000_0001;
pub const EV_UNUSED: u32 = 0x0000_0002;
pub const EV_NO_ACTION: u32 = 0x0000_0003;
pub const EV_SEPARATOR: u32 = 0x0000_0004;
pub const EV_ACTION: u32 = 0x0000_0005;
pub const EV_EVENT_TAG: u32 = 0x0000_0006;
pub const EV_S_CRTM_CONTENTS: u32 = 0x0000_0007;
pub const EV_S_CRTM_VERSION: u32 = 0x0000_0008;
pub const EV_CPU_MICROCODE: u32 = 0x0000_0009;
pub const EV_PLATFORM_CONFIG_FLAGS: u32 = 0x0000_000A;
pub const EV_TABLE_OF_DEVICES: u32 = 0x0000_000B;
pub const EV_COMPACT_HASH: u32 = 0x0000_000C;
pub const EV_IPL: u32 = 0x0000_000D;
pub const EV_IPL_PARTITION_DATA: u32 = 0x0000_000E;
pub const EV_NONHOST_CODE: u32 = 0x0000_000F;
pub const EV_NONHOST_CONFIG: u32 = 0x0000_0010;
pub const EV_NONHOST_INFO: u32 = 0x0000_0011;
pub const EV_OMIT_BOOT_DEVICE_EVENTS: u32 = 0x0000_0012;
pub const EV_EFI_VARIABLE_DRIVER_CONFIG: u32 = 0x8000_0001;
pub const EV_EFI_VARIABLE_BOOT: u32 = 0x8000_0002;
pub const EV_EFI_BOOT_SERVICES_APPLICATION: u32 = 0x8000_0003;
pub const EV_EFI_BOOT_SERVICES_DRIVER: u32 = 0x8000_0004;
pub const EV_EFI_RUNTIME_SERVICES_DRIVER: u32 = 0x8000_0005;
pub const EV_EFI_GPT_EVENT: u32 = 0x8000_0006;
pub const EV_EFI_ACTION: u32 = 0x8000_0007;
pub const EV_EFI_PLATFORM_FIRMWARE_BLOB: u32 = 0x8000_0008;
pub const EV_EFI_HANDOFF_TABLES: u32 = 0x8000_0009;
pub const EV_EFI_PLATFORM_FIRMWARE_BLOB2: u32 = 0x8000_000A;
pub const EV_EFI_HANDOFF_TABLES2: u32 = 0x8000_000B;
pub const EV_EFI_VARIABLE_BOOT2: u32 = 0x8000_000C;
pub const EV_EFI_GPT_EVENT2: u32 = 0x8000_000D;
pub const EV_EFI_HCRTM_EVENT: u32 = 0x8000_0010;
pub const EV_EFI_VARIABLE_AUTHORITY: u32 = 0x8000_00E0;
pub const EV_EFI_SPDM_FIRMWARE_BLOB: u32 = 0x8000_00E1;
pub const EV_EFI_SPDM_FIRMWARE_CONFIG: u32 = 0x8000_00E2;

const EVENT_TYPE_NAMES: &[(u32, &str)] = &[
    (EV_PREBOOT_CERT, "EV_PREBOOT_CERT"),
    (EV_POST_CODE, "EV_POST_CODE"),
    (EV_UNUSED, "EV_UNUSED"),
    (EV_NO_ACTION, "EV_NO_ACTION"),
    (EV_SEPARATOR, "EV_SEPARATOR"),
    (EV_ACTION, "EV_ACTION"),
    (EV_EVENT_TAG, "EV_EVENT_TAG"),
    (EV_S_CRTM_CONTENTS, "EV_S_CRTM_CONTENTS"),
    (EV_S_CRTM_VERSION, "EV_S_CRTM_VERSION"),
    (EV_CPU_MICROCODE, "EV_CPU_MICROCODE"),
    (EV_PLATFORM_CONFIG_FLAGS, "EV_PLATFORM_CONFIG_FLAGS"),
    (EV_TABLE_OF_DEVICES, "EV_TABLE_OF_DEVICES"),
    (EV_COMPACT_HASH, "EV_COMPACT_HASH"),
    (EV_IPL, "EV_IPL"),
    (EV_IPL_PARTITION_DATA, "EV_IPL_PARTITION_DATA"),
    (EV_NONHOST_CODE, "EV_NONHOST_CODE"),
    (EV_NONHOST_CONFIG, "EV_NONHOST_CONFIG"),
    (EV_NONHOST_INFO, "EV_NONHOST_INFO"),
    (EV_OMIT_BOOT_DEVICE_EVENTS, "EV_OMIT_BOOT_DEVICE_EVENTS"),
    (
        EV_EFI_VARIABLE_DRIVER_CONFIG,
        "EV_EFI_VARIABLE_DRIVER_CONFIG",
    ),
    (EV_EFI_VARIABLE_BOOT, "EV_EFI_VARIABLE_BOOT"),
    (
        EV_EFI_BOOT_SERVICES_APPLICATION,
        "EV_EFI_BOOT_SERVICES_APPLICATION",
    ),
    (EV_EFI_BOOT_SERVICES_DRIVER, "EV_EFI_BOOT_SERVICES_DRIVER"),
    (
        EV_EFI_RUNTIME_SERVICES_DRIVER,
        "EV_EFI_RUNTIME_SERVICES_DRIVER",
    ),
    (EV_EFI_GPT_EVENT, "EV_EFI_GPT_EVENT"),
    (EV_EFI_ACTION, "EV_EFI_ACTION"),
    (
        EV_EFI_PLATFORM_FIRMWARE_BLOB,
        "EV_EFI_PLATFORM_FIRMWARE_BLOB",
    ),
    (EV_EFI_HANDOFF_TABLES, "EV_EFI_HANDOFF_TABLES"),
    (
        EV_EFI_PLATFORM_FIRMWARE_BLOB2,
        "EV_EFI_PLATFORM_FIRMWARE_BLOB2",
    ),
    (EV_EFI_HANDOFF_TABLES2, "EV_EFI_HANDOFF_TABLES2"),
    (EV_EFI_VARIABLE_BOOT2, "EV_EFI_VARIABLE_BOOT2"),
    (EV_EFI_GPT_EVENT2, "EV_EFI_GPT_EVENT2"),
    (EV_EFI_HCRTM_EVENT, "EV_EFI_HCRTM_EVENT"),
    (EV_EFI_VARIABLE_AUTHORITY, "EV_EFI_VARIABLE_AUTHORITY"),
    (EV_EFI_SPDM_FIRMWARE_BLOB, "EV_EFI_SPDM_FIRMWARE_BLOB"),
    (EV_EFI_SPDM_FIRMWARE_CONFIG, "EV_EFI_SPDM_FIRMWARE_CONFIG"),
];

/// The TCG name of an event type, if it is one the PFP specification defines.
pub fn event_type_name(event_type: u32) -> Option<&'static str> {
    EVENT_TYPE_NAMES
        .iter()
        .find(|(t, _)| *t == event_type)
        .map(|(_, n)| *n)
}

/// The TCG name of an event type, or `EV_UNKNOWN(0x…)`.
pub fn event_type_label(event_type: u32) -> String {
    event_type_name(event_type)
        .map(str::to_owned)
        .unwrap_or_else(|| format!("EV_UNKNOWN({event_type:#010x})"))
}

// Digest algorithm ids (TCG Algorithm Registry).
pub const TPM_ALG_SHA1: u16 = 0x0004;
pub const TPM_ALG_SHA256: u16 = 0x000B;
pub const TPM_ALG_SHA384: u16 = 0x000C;
pub const TPM_ALG_SHA512: u16 = 0x000D;
pub const TPM_ALG_SM3_256: u16 = 0x0012;
pub const TPM_ALG_SHA3_256: u16 = 0x0027;
pub const TPM_ALG_SHA3_384: u16 = 0x0028;
pub const TPM_ALG_SHA3_512: u16 = 0x0029;

/// The digest size the TCG algorithm registry fixes for an algorithm id, if known.
pub fn known_digest_size(alg_id: u16) -> Option<u16> {
    Some(match alg_id {
        TPM_ALG_SHA1 => 20,
        TPM_ALG_SHA256 | TPM_ALG_SM3_256 | TPM_ALG_SHA3_256 => 32,
        TPM_ALG_SHA384 | TPM_ALG_SHA3_384 => 48,
        TPM_ALG_SHA512 | TPM_ALG_SHA3_512 => 64,
        _ => return None,
    })
}

/// `Spec ID Event03\0`, the signature of `TCG_EfiSpecIDEvent`.
pub const SPEC_ID_SIGNATURE: &[u8; 16] = b"Spec ID Event03\0";

/// One entry of the Spec ID event's algorithm list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AlgorithmSize {
    pub alg_id: u16,
    pub digest_size: u16,
}

/// The header record and its `TCG_EfiSpecIDEvent`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecId {
    /// `pcrIndex` of the header record (0 for td-shim, 1 for OVMF; not meaningful).
    pub header_mr_index: u32,
    /// The SHA-1 sized digest of the header record (zero in every known log).
    pub header_digest: [u8; 20],
    pub platform_class: u32,
    pub spec_version_minor: u8,
    pub spec_version_major: u8,
    pub spec_errata: u8,
    pub uintn_size: u8,
    pub algorithms: Vec<AlgorithmSize>,
    pub vendor_info: Vec<u8>,
}

impl SpecId {
    /// The digest size the log declares for an algorithm.
    pub fn digest_size(&self, alg_id: u16) -> Option<usize> {
        self.algorithms
            .iter()
            .find(|a| a.alg_id == alg_id)
            .map(|a| usize::from(a.digest_size))
    }
}

/// One digest of a `TCG_PCR_EVENT2` record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventDigest {
    pub alg_id: u16,
    pub digest: Vec<u8>,
}

/// One `TCG_PCR_EVENT2` record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Byte offset of the record in the area.
    pub offset: usize,
    /// TDX MR index: 0 = MRTD, 1..=4 = RTMR0..=3.
    pub mr_index: u32,
    pub event_type: u32,
    /// All digests in record order (the SHA-384 one included).
    pub digests: Vec<EventDigest>,
    /// The SHA-384 digest, the one extended into the RTMR.
    pub sha384: Sha384,
    /// The event data.
    pub data: Vec<u8>,
}

/// Why parsing stopped without an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogEnd {
    /// The area ended (or only padding bytes were left) at this offset.
    AreaEnd { offset: usize },
    /// A record header of all 0xFF at this offset.
    Padding { offset: usize },
    /// A record with event type or event size zero at this offset.
    ZeroRecord { offset: usize },
}

impl LogEnd {
    /// Where the log ends: the number of bytes of the area it occupies.
    pub fn offset(&self) -> usize {
        match *self {
            Self::AreaEnd { offset } | Self::Padding { offset } | Self::ZeroRecord { offset } => {
                offset
            }
        }
    }
}

/// A parsed CCEL event log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventLog {
    pub spec_id: SpecId,
    pub events: Vec<Event>,
    pub end: LogEnd,
}

/// Errors from parsing an event log. Offsets are byte offsets into the area.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventLogError {
    #[error("event log truncated in {what} at offset {offset}: need {need} bytes, have {have}")]
    Truncated {
        what: &'static str,
        offset: usize,
        need: usize,
        have: usize,
    },
    #[error("event log header: {reason}")]
    Header { reason: &'static str },
    #[error("spec id event: algorithm {alg_id:#06x} declared with digest size {got}, expected {expected}")]
    DigestSize {
        alg_id: u16,
        expected: u16,
        got: u16,
    },
    #[error("spec id event: algorithm {alg_id:#06x} declared twice")]
    DuplicateAlgorithm { alg_id: u16 },
    #[error("spec id event does not declare sha-384 (0x000c), which tdx logs must use")]
    NoSha384Algorithm,
    #[error("event {index} at offset {offset}: digest algorithm {alg_id:#06x} is not declared in the spec id event")]
    UnknownAlgorithm {
        index: usize,
        offset: usize,
        alg_id: u16,
    },
    #[error("event {index} at offset {offset}: {count} digests, but the spec id event declares {declared} algorithms")]
    DigestCount {
        index: usize,
        offset: usize,
        count: u32,
        declared: usize,
    },
    #[error("event {index} at offset {offset}: two digests for algorithm {alg_id:#06x}")]
    DuplicateDigest {
        index: usize,
        offset: usize,
        alg_id: u16,
    },
    #[error("event {index} at offset {offset}: no sha-384 digest")]
    MissingSha384 { index: usize, offset: usize },
    #[error("event {index} at offset {offset}: event size {size} exceeds the {remaining} bytes left in the area")]
    OversizedEvent {
        index: usize,
        offset: usize,
        size: u32,
        remaining: usize,
    },
    #[error("event {index} at offset {offset}: {event_type} with mr index {mr_index}, measured events need 1..=4 (rtmr0..3)")]
    MrIndex {
        index: usize,
        offset: usize,
        mr_index: u32,
        event_type: String,
    },
}

/// A bounds-checked little-endian reader over the area.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], EventLogError> {
        if n > self.remaining() {
            return Err(EventLogError::Truncated {
                what,
                offset: self.pos,
                need: n,
                have: self.remaining(),
            });
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], EventLogError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, what)?);
        Ok(out)
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, EventLogError> {
        Ok(self.array::<1>(what)?[0])
    }

    fn u16(&mut self, what: &'static str) -> Result<u16, EventLogError> {
        self.array(what).map(u16::from_le_bytes)
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, EventLogError> {
        self.array(what).map(u32::from_le_bytes)
    }
}

/// Parses a CCEL event-log area (see the module docs for the format and where it ends).
pub fn parse(area: &[u8]) -> Result<EventLog, EventLogError> {
    let mut r = Reader { buf: area, pos: 0 };
    let spec_id = parse_header(&mut r)?;
    let mut events = Vec::new();
    loop {
        let offset = r.pos;
        let rest = &area[offset..];
        if rest.len() < 8 {
            if rest.iter().all(|&b| b == 0xFF) || rest.iter().all(|&b| b == 0) {
                break Ok(EventLog {
                    spec_id,
                    events,
                    end: LogEnd::AreaEnd { offset },
                });
            }
            return Err(EventLogError::Truncated {
                what: "event header",
                offset,
                need: 8,
                have: rest.len(),
            });
        }
        let mr_index = r.u32("mr index")?;
        let event_type = r.u32("event type")?;
        if mr_index == u32::MAX && event_type == u32::MAX {
            break Ok(EventLog {
                spec_id,
                events,
                end: LogEnd::Padding { offset },
            });
        }
        if event_type == 0 {
            break Ok(EventLog {
                spec_id,
                events,
                end: LogEnd::ZeroRecord { offset },
            });
        }
        let index = events.len();
        let (digests, sha384) = parse_digests(&mut r, &spec_id, index, offset)?;
        let size = r.u32("event size")?;
        if size == 0 {
            break Ok(EventLog {
                spec_id,
                events,
                end: LogEnd::ZeroRecord { offset },
            });
        }
        let remaining = r.remaining();
        let data = usize::try_from(size)
            .ok()
            .filter(|&n| n <= remaining)
            .and_then(|n| r.take(n, "event data").ok())
            .ok_or(EventLogError::OversizedEvent {
                index,
                offset,
                size,
                remaining,
            })?;
        if event_type != EV_NO_ACTION && !(1..=4).contains(&mr_index) {
            return Err(EventLogError::MrIndex {
                index,
                offset,
                mr_index,
                event_type: event_type_label(event_type),
            });
        }
        events.push(Event {
            offset,
            mr_index,
            event_type,
            digests,
            sha384,
            data: data.to_vec(),
        });
    }
}

fn parse_header(r: &mut Reader<'_>) -> Result<SpecId, EventLogError> {
    let header_mr_index = r.u32("header mr index")?;
    let event_type = r.u32("header event type")?;
    if event_type != EV_NO_ACTION {
        return Err(EventLogError::Header {
            reason: "first record is not EV_NO_ACTION (not a crypto-agile log)",
        });
    }
    let header_digest = r.array::<20>("header digest")?;
    let size = r.u32("header event size")?;
    let start = r.pos;
    let body = r.take(size as usize, "spec id event")?;
    let mut s = Reader {
        buf: &r.buf[..start + body.len()],
        pos: start,
    };
    if &s.array::<16>("spec id signature")? != SPEC_ID_SIGNATURE {
        return Err(EventLogError::Header {
            reason: "header event is not \"Spec ID Event03\"",
        });
    }
    let platform_class = s.u32("platform class")?;
    let spec_version_minor = s.u8("spec version")?;
    let spec_version_major = s.u8("spec version")?;
    let spec_errata = s.u8("spec errata")?;
    let uintn_size = s.u8("uintn size")?;
    let n = s.u32("number of algorithms")?;
    if n == 0 {
        return Err(EventLogError::Header {
            reason: "spec id event declares no algorithms",
        });
    }
    // Each entry is 4 bytes; check before allocating for n of them.
    if (n as usize).saturating_mul(4) > s.remaining() {
        return Err(EventLogError::Truncated {
            what: "algorithm list",
            offset: s.pos,
            need: (n as usize).saturating_mul(4),
            have: s.remaining(),
        });
    }
    let mut algorithms: Vec<AlgorithmSize> = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let alg_id = s.u16("algorithm id")?;
        let digest_size = s.u16("digest size")?;
        if let Some(expected) = known_digest_size(alg_id) {
            if expected != digest_size {
                return Err(EventLogError::DigestSize {
                    alg_id,
                    expected,
                    got: digest_size,
                });
            }
        } else if digest_size == 0 {
            return Err(EventLogError::Header {
                reason: "spec id event declares a zero digest size",
            });
        }
        if algorithms.iter().any(|a| a.alg_id == alg_id) {
            return Err(EventLogError::DuplicateAlgorithm { alg_id });
        }
        algorithms.push(AlgorithmSize {
            alg_id,
            digest_size,
        });
    }
    if !algorithms.iter().any(|a| a.alg_id == TPM_ALG_SHA384) {
        return Err(EventLogError::NoSha384Algorithm);
    }
    let vendor_len = s.u8("vendor info size")?;
    let vendor_info = s.take(usize::from(vendor_len), "vendor info")?.to_vec();
    if s.remaining() != 0 {
        return Err(EventLogError::Header {
            reason: "spec id event has bytes after the vendor info",
        });
    }
    Ok(SpecId {
        header_mr_index,
        header_digest,
        platform_class,
        spec_version_minor,
        spec_version_major,
        spec_errata,
        uintn_size,
        algorithms,
        vendor_info,
    })
}

fn parse_digests(
    r: &mut Reader<'_>,
    spec_id: &SpecId,
    index: usize,
    offset: usize,
) -> Result<(Vec<EventDigest>, Sha384), EventLogError> {
    let count = r.u32("digest count")?;
    if count as usize > spec_id.algorithms.len() {
        return Err(EventLogError::DigestCount {
            index,
            offset,
            count,
            declared: spec_id.algorithms.len(),
        });
    }
    let mut digests: Vec<EventDigest> = Vec::with_capacity(count as usize);
    let mut sha384 = None;
    for _ in 0..count {
        let alg_id = r.u16("digest algorithm")?;
        let size = spec_id
            .digest_size(alg_id)
            .ok_or(EventLogError::UnknownAlgorithm {
                index,
                offset,
                alg_id,
            })?;
        if digests.iter().any(|d| d.alg_id == alg_id) {
            return Err(EventLogError::DuplicateDigest {
                index,
                offset,
                alg_id,
            });
        }
        let digest = r.take(size, "digest")?;
        if alg_id == TPM_ALG_SHA384 {
            sha384 = digest.try_into().ok();
        }
        digests.push(EventDigest {
            alg_id,
            digest: digest.to_vec(),
        });
    }
    let sha384 = sha384.ok_or(EventLogError::MissingSha384 { index, offset })?;
    Ok((digests, sha384))
}

/// Parses the area bounded by the CCEL table's log area minimum length (LAML).
pub fn parse_with_table(area: &[u8], table: &CcelTable) -> Result<EventLog, EventLogError> {
    parse(table.bound(area))
}

impl EventLog {
    /// RTMR0..=3 after extending every measured event, starting from 48 zero bytes:
    /// `RTMR[i] = SHA-384(RTMR[i] || digest)`. `EV_NO_ACTION` events are not extended.
    pub fn replay(&self) -> [Sha384; 4] {
        let mut rtmr = [[0u8; 48]; 4];
        for ev in &self.events {
            if let Some(i) = ev.rtmr_index() {
                rtmr[i] = extend_sha384(&rtmr[i], &ev.sha384);
            }
        }
        rtmr
    }

    /// The log in its binary form (header record and every event, no padding). `parse` of the
    /// result gives this log back, apart from the end marker.
    pub fn encode(&self) -> Vec<u8> {
        let s = &self.spec_id;
        let mut spec = Vec::new();
        spec.extend_from_slice(SPEC_ID_SIGNATURE);
        spec.extend_from_slice(&s.platform_class.to_le_bytes());
        spec.extend_from_slice(&[
            s.spec_version_minor,
            s.spec_version_major,
            s.spec_errata,
            s.uintn_size,
        ]);
        spec.extend_from_slice(&(s.algorithms.len() as u32).to_le_bytes());
        for a in &s.algorithms {
            spec.extend_from_slice(&a.alg_id.to_le_bytes());
            spec.extend_from_slice(&a.digest_size.to_le_bytes());
        }
        let vendor = &s.vendor_info[..s.vendor_info.len().min(255)];
        spec.push(vendor.len() as u8);
        spec.extend_from_slice(vendor);
        let mut out = Vec::new();
        out.extend_from_slice(&s.header_mr_index.to_le_bytes());
        out.extend_from_slice(&EV_NO_ACTION.to_le_bytes());
        out.extend_from_slice(&s.header_digest);
        out.extend_from_slice(&(spec.len() as u32).to_le_bytes());
        out.extend_from_slice(&spec);
        for ev in &self.events {
            out.extend_from_slice(&ev.mr_index.to_le_bytes());
            out.extend_from_slice(&ev.event_type.to_le_bytes());
            out.extend_from_slice(&(ev.digests.len() as u32).to_le_bytes());
            for d in &ev.digests {
                out.extend_from_slice(&d.alg_id.to_le_bytes());
                out.extend_from_slice(&d.digest);
            }
            out.extend_from_slice(&(ev.data.len() as u32).to_le_bytes());
            out.extend_from_slice(&ev.data);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_sizes() {
        assert_eq!(event_type_name(EV_EFI_ACTION), Some("EV_EFI_ACTION"));
        assert_eq!(event_type_name(0x8000_000B), Some("EV_EFI_HANDOFF_TABLES2"));
        assert_eq!(event_type_label(0x1234), "EV_UNKNOWN(0x00001234)");
        assert_eq!(known_digest_size(TPM_ALG_SHA384), Some(48));
        assert_eq!(known_digest_size(0x9999), None);
    }
}

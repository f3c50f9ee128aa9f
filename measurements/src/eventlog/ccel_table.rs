//! The ACPI `CCEL` table, which tells the guest where the event-log area is and how long.

/// The ACPI `CCEL` table (ACPI 6.5, section 5.2.34): where the event log area is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CcelTable {
    pub revision: u8,
    pub oem_id: [u8; 6],
    pub oem_table_id: [u8; 8],
    /// Confidential-computing type: 1 = AMD SEV, 2 = Intel TDX.
    pub cc_type: u8,
    pub cc_subtype: u8,
    /// Log area minimum length.
    pub laml: u64,
    /// Log area start address (guest physical).
    pub lasa: u64,
}

/// CC type of Intel TDX in the CCEL table.
pub const CC_TYPE_TDX: u8 = 2;
/// Length of the CCEL table: 36-byte ACPI header, CC type and subtype, reserved, LAML, LASA.
pub const CCEL_TABLE_LEN: usize = 56;

/// Errors from parsing the ACPI CCEL table.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CcelTableError {
    #[error("ccel table truncated: need {need} bytes, have {have}")]
    Truncated { need: usize, have: usize },
    #[error("acpi table signature {got:?} is not \"CCEL\"")]
    Signature { got: String },
    #[error("ccel table length field {length} is invalid ({have} bytes given, at least {CCEL_TABLE_LEN} needed)")]
    Length { length: u32, have: usize },
    #[error("ccel table checksum: bytes sum to {sum:#04x}, expected 0")]
    Checksum { sum: u8 },
}

impl CcelTable {
    /// Parses the table as read from `/sys/firmware/acpi/tables/CCEL`.
    pub fn parse(bytes: &[u8]) -> Result<Self, CcelTableError> {
        if bytes.len() < CCEL_TABLE_LEN {
            return Err(CcelTableError::Truncated {
                need: CCEL_TABLE_LEN,
                have: bytes.len(),
            });
        }
        if &bytes[..4] != b"CCEL" {
            return Err(CcelTableError::Signature {
                got: String::from_utf8_lossy(&bytes[..4])
                    .escape_debug()
                    .to_string(),
            });
        }
        let length = u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
        let len = length as usize;
        if len < CCEL_TABLE_LEN || len > bytes.len() {
            return Err(CcelTableError::Length {
                length,
                have: bytes.len(),
            });
        }
        let sum = bytes[..len].iter().fold(0u8, |a, &b| a.wrapping_add(b));
        if sum != 0 {
            return Err(CcelTableError::Checksum { sum });
        }
        // Layout after the 36-byte ACPI header: CC type u8, CC subtype u8, reserved u16,
        // LAML u64, LASA u64 (length checked above, so the fixed slices are in bounds).
        let array = |at: usize| -> [u8; 8] { bytes[at..at + 8].try_into().unwrap_or_default() };
        Ok(Self {
            revision: bytes[8],
            oem_id: bytes[10..16].try_into().unwrap_or_default(),
            oem_table_id: array(16),
            cc_type: bytes[36],
            cc_subtype: bytes[37],
            laml: u64::from_le_bytes(array(40)),
            lasa: u64::from_le_bytes(array(48)),
        })
    }

    /// The part of `area` inside the log area minimum length.
    pub fn bound<'a>(&self, area: &'a [u8]) -> &'a [u8] {
        let n = usize::try_from(self.laml).unwrap_or(usize::MAX);
        &area[..area.len().min(n)]
    }
}

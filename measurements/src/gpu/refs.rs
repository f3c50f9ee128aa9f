//! GPU reference values: what a signed cocoon manifest says a GPU's measurements must be, per
//! (driver, VBIOS) version pair, and the comparison of a report against them.
//!
//! # Wire form (`cocoon-gpu-refs/v1`)
//! ```json
//! { "format": "cocoon-gpu-refs/v1",
//!   "sets": [ { "chip": "GH100", "driver_version": "550.90.07", "vbios_version": "96.00.9F.00.01",
//!               "sources": ["driver rim <tagId>", "vbios rim <tagId>"],
//!               "measurements": { "7": ["80161aac…"], "35": ["909c…", "2611…"] } } ] }
//! ```
//! Measurement keys are NVIDIA's 0-based indices as in the RIMs (report block index − 1);
//! each maps to the SHA-384 values (hex) any of which is accepted. `cocoon-measure gpu refs`
//! builds a set from NVIDIA's RIMs.
//!
//! # What is not compared, and why (the same rules as NVIDIA's own verifier)
//! * Indices a RIM marks `active="False"`: NVIDIA publishes them as placeholders (all zeros)
//!   for measurements the firmware does not make for that product; they carry no reference.
//!   `gpu refs` omits them, so they are simply absent from a set.
//! * Index 35 when the report's NVDEC0 status is "disabled" (0x55): that block measures the
//!   NVDEC0 video-decoder engine's state, whose value differs when the engine is off; NVIDIA's
//!   verifier skips it in that case. The skip is reported in [`Comparison::skipped`].
//!
//! Every index present in a set must be present in the report; every report block whose index
//! is in the set must equal one of its values. Report blocks with no reference (inactive in
//! both RIMs) are not compared; for the real H100 vector they are all zero.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use super::report::GpuReport;

/// Format identifier of version 1 reference-value documents.
pub const GPU_REFS_FORMAT_V1: &str = "cocoon-gpu-refs/v1";
/// NVIDIA's index of the NVDEC0 measurement, skipped when NVDEC0 is disabled.
pub const NVDEC0_MEASUREMENT_INDEX: u16 = 35;

/// Reference values for GPUs, as carried by a signed manifest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GpuReferenceValues {
    pub format: String,
    pub sets: Vec<GpuReferenceSet>,
}

/// Reference values for one (driver, VBIOS) version pair.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GpuReferenceSet {
    /// GPU chip ("GH100").
    pub chip: String,
    pub driver_version: String,
    pub vbios_version: String,
    /// Where the values came from (e.g. RIM tag ids); informative.
    #[serde(default)]
    pub sources: Vec<String>,
    /// NVIDIA measurement index (0-based) → accepted values, lowercase hex SHA-384.
    pub measurements: BTreeMap<u16, Vec<String>>,
}

impl GpuReferenceValues {
    /// Parses and validates a reference document (format, hex values of 48 bytes).
    pub fn from_json(bytes: &[u8]) -> Result<Self, String> {
        let v: Self = serde_json::from_slice(bytes).map_err(|e| format!("gpu refs json: {e}"))?;
        v.validate()?;
        Ok(v)
    }

    /// Checks the format and that every value is 48 bytes of lowercase hex.
    pub fn validate(&self) -> Result<(), String> {
        let v = self;
        if v.format != GPU_REFS_FORMAT_V1 {
            return Err(format!(
                "gpu refs format {:?} not supported (expected {GPU_REFS_FORMAT_V1:?})",
                v.format
            ));
        }
        for s in &v.sets {
            for (i, vals) in &s.measurements {
                if vals.is_empty() {
                    return Err(format!("gpu refs: index {i} has no value"));
                }
                for h in vals {
                    if h.len() != 96 || hex::decode(h).is_err() || h.to_lowercase() != *h {
                        return Err(format!(
                            "gpu refs: index {i}: {h:?} is not 48 bytes of lowercase hex"
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    /// The set for a version pair, if any.
    pub fn find(&self, driver: &str, vbios: &str) -> Option<&GpuReferenceSet> {
        self.sets
            .iter()
            .find(|s| s.driver_version == driver && s.vbios_version.eq_ignore_ascii_case(vbios))
    }
}

/// Why a measurement was not compared.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SkipReason {
    /// NVDEC0 is disabled and this is its measurement (index 35).
    Nvdec0Disabled,
}

impl SkipReason {
    pub fn code(&self) -> &'static str {
        match self {
            Self::Nvdec0Disabled => "nvdec0_disabled",
        }
    }
}

/// One measurement that differs from its references.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mismatch {
    /// NVIDIA's 0-based index.
    pub index: u16,
    /// The report's value (hex), or `None` when the report has no such block.
    pub got: Option<String>,
    pub expected: Vec<String>,
}

/// The outcome of comparing a report with a reference set.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Comparison {
    /// Number of measurements compared.
    pub checked: usize,
    pub skipped: Vec<(u16, SkipReason)>,
    pub mismatches: Vec<Mismatch>,
}

/// Compares every referenced measurement of `report` with `set`.
pub fn compare(report: &GpuReport, set: &GpuReferenceSet) -> Comparison {
    let mut out = Comparison::default();
    let by_index: BTreeMap<u16, &[u8]> = report
        .blocks
        .iter()
        .map(|b| (b.rim_index(), b.value.as_slice()))
        .collect();
    for (&index, allowed) in &set.measurements {
        if index == NVDEC0_MEASUREMENT_INDEX && report.nvdec0_disabled() {
            out.skipped.push((index, SkipReason::Nvdec0Disabled));
            continue;
        }
        out.checked += 1;
        let got = by_index.get(&index).map(hex::encode);
        if !got.as_ref().is_some_and(|g| allowed.contains(g)) {
            out.mismatches.push(Mismatch {
                index,
                got,
                expected: allowed.clone(),
            });
        }
    }
    out
}

/// A dotted version compared numerically component by component (550.90.07 < 550.127.05).
#[derive(Clone, Debug)]
pub struct DriverVersion(Vec<u64>);

impl PartialEq for DriverVersion {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for DriverVersion {}

impl DriverVersion {
    pub fn parse(s: &str) -> Result<Self, String> {
        let parts = s
            .trim()
            .split('.')
            .map(|p| {
                if p.is_empty() || p.len() > 9 || !p.bytes().all(|b| b.is_ascii_digit()) {
                    None
                } else {
                    p.parse::<u64>().ok()
                }
            })
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| format!("driver version {s:?} is not dotted decimal"))?;
        Ok(Self(parts))
    }
}

impl Ord for DriverVersion {
    fn cmp(&self, other: &Self) -> Ordering {
        let n = self.0.len().max(other.0.len());
        (0..n)
            .map(|i| {
                let a = self.0.get(i).copied().unwrap_or(0);
                let b = other.0.get(i).copied().unwrap_or(0);
                a.cmp(&b)
            })
            .find(|o| *o != Ordering::Equal)
            .unwrap_or(Ordering::Equal)
    }
}

impl PartialOrd for DriverVersion {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for DriverVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.0.iter().map(|p| format!("{p:02}")).collect();
        f.write_str(&parts.join("."))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_compare_numerically() {
        let v = |s| DriverVersion::parse(s).unwrap();
        assert!(v("550.90.07") < v("550.127.05"));
        assert!(v("550.127.05") < v("555.42.02"));
        assert_eq!(v("550.90.07"), v("550.90.7"));
        assert!(DriverVersion::parse("550.x").is_err());
        assert!(DriverVersion::parse("").is_err());
    }
}

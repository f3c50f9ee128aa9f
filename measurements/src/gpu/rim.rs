//! NVIDIA reference integrity manifests (RIMs) → cocoon GPU reference values.
//!
//! A RIM is an ISO/IEC 19770-2 SWID tag (TCG "Reference Integrity Manifest Information Model"
//! binding) that NVIDIA publishes per driver version and per VBIOS version. Its `Payload`
//! lists one `Resource type="Measurement"` per measurement index (0-based, = SPDM block index
//! − 1) with `active`, `alternatives` and `Hash0..Hash{alternatives-1}` (SHA-384, in the
//! `http://www.w3.org/2001/04/xmlenc#sha384` namespace). The driver RIM covers the indices the
//! driver's firmware measures, the VBIOS RIM the others; an index active in both is an error.
//!
//! # Trust
//! RIMs are signed with XML-DSig (enveloped, C14N 1.1, ecdsa-sha384) under NVIDIA's CoRIM
//! signing root. [`Rim::parse`] only parses; [`super::xmldsig::verify_rim_signature`] checks
//! the signature and signer chain at a given time (and [`super::ocsp::check_rim_chain_ocsp`]
//! the chain's revocation status). `cocoon-measure gpu refs` does both before it writes
//! reference values; the publisher runs it at publication time and signs the result inside the
//! cocoon manifest, so verifiers trust the manifest signature, never a RIM file.
//!
//! Parsing is strict: one `Meta` and one `Payload`, unique indices, exactly `alternatives`
//! hashes of 48 bytes each, `size="48"`.

use std::collections::BTreeMap;

use super::refs::GpuReferenceSet;
use super::xml::{self, Element};

const SWID_NS: &str = "http://standards.iso.org/iso/19770/-2/2015/schema.xsd";
const SHA384_NS: &str = "http://www.w3.org/2001/04/xmlenc#sha384";
/// Upper bound on alternatives per index (NVIDIA's have at most 4).
const MAX_ALTERNATIVES: usize = 64;

/// A RIM that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RimError {
    #[error("rim xml: {0}")]
    Xml(#[from] xml::XmlError),
    #[error("rim: {0}")]
    Structure(String),
    #[error("rim measurement index {index}: {detail}")]
    Measurement { index: u16, detail: String },
    #[error("rims: {0}")]
    Combination(String),
}

/// Which component a RIM describes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RimKind {
    Driver,
    Vbios,
}

/// One measurement entry of a RIM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RimMeasurement {
    pub index: u16,
    pub active: bool,
    /// Lowercase hex SHA-384 values.
    pub alternatives: Vec<String>,
}

/// A parsed RIM (signature not verified, see the module documentation).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rim {
    pub kind: RimKind,
    /// Chip, from `SoftwareIdentity name` ("GH100").
    pub chip: String,
    pub tag_id: String,
    /// `Meta colloquialVersion`: the driver version or the VBIOS version.
    pub version: String,
    pub measurements: Vec<RimMeasurement>,
}

fn structure(s: impl Into<String>) -> RimError {
    RimError::Structure(s.into())
}

fn one<'a>(parent: &'a Element, local: &'a str) -> Result<&'a Element, RimError> {
    let mut it = parent.children_named(SWID_NS, local);
    match (it.next(), it.next()) {
        (Some(e), None) => Ok(e),
        (None, _) => Err(structure(format!("no {local} element"))),
        _ => Err(structure(format!("more than one {local} element"))),
    }
}

/// Whether a version string has the VBIOS form: five dot-separated pairs of hex digits.
pub fn is_vbios_version(v: &str) -> bool {
    let parts: Vec<&str> = v.split('.').collect();
    parts.len() == 5
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()))
}

impl Rim {
    /// Parses a RIM document.
    pub fn parse(text: &str) -> Result<Self, RimError> {
        let root = xml::parse(text)?;
        if root.ns != SWID_NS || root.local != "SoftwareIdentity" {
            return Err(structure(format!(
                "root element {{{}}}{} is not a swid SoftwareIdentity",
                root.ns, root.local
            )));
        }
        let chip = root
            .attr("name")
            .ok_or_else(|| structure("SoftwareIdentity without name"))?
            .to_string();
        let tag_id = root
            .attr("tagId")
            .ok_or_else(|| structure("SoftwareIdentity without tagId"))?
            .to_string();
        let meta = one(&root, "Meta")?;
        let version = meta
            .attr("colloquialVersion")
            .ok_or_else(|| structure("Meta without colloquialVersion"))?
            .to_string();
        let kind = if is_vbios_version(&version) {
            RimKind::Vbios
        } else if super::refs::DriverVersion::parse(&version).is_ok() {
            RimKind::Driver
        } else {
            return Err(structure(format!(
                "colloquialVersion {version:?} is neither a driver nor a vbios version"
            )));
        };
        if let Some(product) = meta.attr("product") {
            if product != chip {
                return Err(structure(format!(
                    "Meta product {product:?} differs from SoftwareIdentity name {chip:?}"
                )));
            }
        }
        let payload = one(&root, "Payload")?;
        let mut measurements: Vec<RimMeasurement> = Vec::new();
        for r in payload.children_named(SWID_NS, "Resource") {
            let m = parse_resource(r)?;
            if measurements.iter().any(|x| x.index == m.index) {
                return Err(RimError::Measurement {
                    index: m.index,
                    detail: "appears twice".into(),
                });
            }
            measurements.push(m);
        }
        if measurements.is_empty() {
            return Err(structure("payload has no measurement"));
        }
        Ok(Self {
            kind,
            chip,
            tag_id,
            version,
            measurements,
        })
    }
}

fn parse_resource(r: &Element) -> Result<RimMeasurement, RimError> {
    if r.attr("type") != Some("Measurement") {
        return Err(structure(format!(
            "Resource of type {:?}, expected Measurement",
            r.attr("type")
        )));
    }
    let index: u16 = r
        .attr("index")
        .and_then(|i| i.parse().ok())
        .ok_or_else(|| structure(format!("Resource index {:?}", r.attr("index"))))?;
    let bad = |detail: String| RimError::Measurement { index, detail };
    let active = match r.attr("active") {
        Some("True") | Some("true") => true,
        Some("False") | Some("false") => false,
        other => return Err(bad(format!("active {other:?}"))),
    };
    if r.attr("size") != Some("48") {
        return Err(bad(format!("size {:?}, expected 48", r.attr("size"))));
    }
    let n: usize = r
        .attr("alternatives")
        .and_then(|a| a.parse().ok())
        .filter(|n| (1..=MAX_ALTERNATIVES).contains(n))
        .ok_or_else(|| bad(format!("alternatives {:?}", r.attr("alternatives"))))?;
    let hashes: BTreeMap<&str, &str> = r
        .attrs
        .iter()
        .filter(|((ns, _), _)| ns == SHA384_NS)
        .map(|((_, local), v)| (local.as_str(), v.as_str()))
        .collect();
    if hashes.len() != n {
        return Err(bad(format!(
            "{} sha384 hashes for {n} alternatives",
            hashes.len()
        )));
    }
    let mut alternatives = Vec::with_capacity(n);
    for i in 0..n {
        let name = format!("Hash{i}");
        let h = hashes
            .get(name.as_str())
            .ok_or_else(|| bad(format!("{name} missing")))?;
        if h.len() != 96 || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad(format!("{name} is not 48 bytes of hex")));
        }
        let h = h.to_ascii_lowercase();
        if !alternatives.contains(&h) {
            alternatives.push(h);
        }
    }
    Ok(RimMeasurement {
        index,
        active,
        alternatives,
    })
}

/// Combines one driver RIM and one VBIOS RIM of the same chip into a reference set: every
/// active measurement of either (inactive ones are placeholders and are left out), an index
/// active in both is refused.
pub fn reference_set(rims: &[Rim]) -> Result<GpuReferenceSet, RimError> {
    let pick = |kind: RimKind| -> Result<&Rim, RimError> {
        let mut it = rims.iter().filter(|r| r.kind == kind);
        match (it.next(), it.next()) {
            (Some(r), None) => Ok(r),
            (None, _) => Err(RimError::Combination(format!("no {kind:?} rim given"))),
            _ => Err(RimError::Combination(format!(
                "more than one {kind:?} rim given"
            ))),
        }
    };
    let driver = pick(RimKind::Driver)?;
    let vbios = pick(RimKind::Vbios)?;
    if driver.chip != vbios.chip {
        return Err(RimError::Combination(format!(
            "driver rim is for {}, vbios rim for {}",
            driver.chip, vbios.chip
        )));
    }
    let mut measurements = BTreeMap::new();
    for m in driver
        .measurements
        .iter()
        .chain(&vbios.measurements)
        .filter(|m| m.active)
    {
        if measurements
            .insert(m.index, m.alternatives.clone())
            .is_some()
        {
            return Err(RimError::Combination(format!(
                "measurement index {} is active in both the driver and the vbios rim",
                m.index
            )));
        }
    }
    Ok(GpuReferenceSet {
        chip: driver.chip.clone(),
        driver_version: driver.version.clone(),
        vbios_version: vbios.version.to_ascii_uppercase(),
        sources: vec![
            format!("nvidia driver rim {}", driver.tag_id),
            format!("nvidia vbios rim {}", vbios.tag_id),
        ],
        measurements,
    })
}

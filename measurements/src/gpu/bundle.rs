//! The GPU evidence bundle a worker puts in its RA-TLS certificate, and its verification.
//!
//! # Binding
//!
//! The evidence answers a nonce derived from the certificate's own key
//! ([`evidence_nonce`]: SHA-256 of [`NONCE_TAG`] ‖ DER SubjectPublicKeyInfo), and the
//! certificate's quoted claims carry the SHA-256 of the bundle bytes. A bundle cut from one
//! certificate and put in another fails on the nonce; a bundle edited in place fails on the
//! claims hash, which the TDX quote covers.
//!
//! # Encoding
//!
//! Binary, big-endian lengths, every byte accounted for. Version 1 (no OCSP):
//!
//! ```text
//! magic       "cocoon-gpu/v1\0"                       (14 bytes)
//! certs       u16 n, then n × (u16 len, DER certificate)
//! gpus        u8 m (1..=MAX_GPUS), then m × (u16 len, report bytes,
//!                                             u8 k, k × u16 index into certs)   chain, leaf first
//! ```
//!
//! Version 2 (magic `"cocoon-gpu/v2\0"`) is version 1 followed by the chains' OCSP responses:
//!
//! ```text
//! ocsp        u16 r (1..), then r × (u16 len, DER OCSPResponse)
//!             then m × (u8 j, j × u16 index into ocsp)       per GPU, in GPU order
//! ```
//!
//! GPUs of one machine share the three CA certificates of their chains (and the OCSP answers
//! for the two shared CAs), so each certificate and response is stored once and GPUs refer to
//! it by index. The encoding is canonical: certificates and responses appear in the order GPUs
//! first refer to them, none twice, none unreferenced, and version 2 only when some GPU has a
//! response; [`GpuBundle::parse`] accepts only bytes that re-encode to themselves, so one
//! bundle has one digest.
//!
//! # OCSP at the RA-TLS hop
//!
//! The responses are what the worker fetched from NVIDIA's OCSP service (through its host)
//! at issuance. A verifier judges them at its own time, like the chain: each must be good and
//! inside its thisUpdate..nextUpdate window, and not older than the policy's maximum age.
//! NVIDIA's answers live a day, so a worker's certificate must be renewed within that window
//! (the default certificate lifetime is 6 h).

use der::{Decode, Encode};
use sha2::{Digest, Sha256};
use x509_cert::Certificate;

use super::{chain, GpuEvidence, GpuPolicy, GpuRejection, OcspEvidence, VerifiedGpu};

/// The bundle's leading bytes (format version 1, no OCSP).
pub const MAGIC: &[u8] = b"cocoon-gpu/v1\0";
/// The leading bytes of a bundle with OCSP responses (format version 2).
pub const MAGIC_V2: &[u8] = b"cocoon-gpu/v2\0";
/// Largest OCSP response (NVIDIA's are about 1 KB; one with an embedded responder certificate
/// twice that).
pub const MAX_OCSP_LEN: usize = 4096;
/// Domain tag of the nonce derivation.
pub const NONCE_TAG: &[u8] = b"cocoon gpu evidence v1\0";
/// Most GPUs in one bundle.
pub const MAX_GPUS: usize = 8;
/// Largest report (NVML's attestation report buffer is 0x2000 bytes).
pub const MAX_REPORT_LEN: usize = 0x2000;
/// Largest certificate.
pub const MAX_CERT_LEN: usize = 4096;
/// Most certificates in one chain.
pub const MAX_CHAIN_LEN: usize = 8;
/// Largest bundle: it rides in a certificate that must fit one TLS handshake message
/// (64 KiB) together with the quote and collateral.
pub const MAX_BUNDLE_LEN: usize = 48 * 1024;

/// The nonce GPU evidence for a certificate with key `spki_der` must answer.
pub fn evidence_nonce(spki_der: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(NONCE_TAG);
    h.update(spki_der);
    h.finalize().into()
}

/// SHA-256 of the bundle bytes, as the claims carry it (hex).
pub fn digest_hex(bundle: &[u8]) -> String {
    hex::encode(Sha256::digest(bundle))
}

/// One GPU's evidence in a bundle: the report, its chain (DER, leaf first) and the chain's
/// OCSP responses (DER, empty if none were collected).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BundledGpu {
    pub report: Vec<u8>,
    pub chain: Vec<Vec<u8>>,
    pub ocsp: Vec<Vec<u8>>,
}

/// The evidence of every GPU of a machine (see the module docs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GpuBundle {
    pub gpus: Vec<BundledGpu>,
}

fn malformed(detail: impl Into<String>) -> GpuRejection {
    GpuRejection::MalformedBundle(detail.into())
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], GpuRejection> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|e| *e <= self.bytes.len())
            .ok_or_else(|| malformed(format!("truncated at byte {}: {what}", self.pos)))?;
        let out = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    fn u8(&mut self, what: &str) -> Result<u8, GpuRejection> {
        Ok(self.take(1, what)?[0])
    }

    fn u16(&mut self, what: &str) -> Result<u16, GpuRejection> {
        let b = self.take(2, what)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    /// A table: `u16 count, count × (u16 len, bytes)` ([`put_table`]).
    fn table(&mut self, kind: &Kind) -> Result<Vec<&'a [u8]>, GpuRejection> {
        let n = usize::from(self.u16(&format!("{} count", kind.item))?);
        let mut items = Vec::with_capacity(n.min(64));
        for i in 0..n {
            let len = usize::from(self.u16(&format!("{} length", kind.item))?);
            items.push(self.take(len, &format!("{} {i}", kind.item))?);
        }
        Ok(items)
    }

    /// GPU `gpu`'s references into `table`: `u8 count, count × u16 index` ([`put_refs`]).
    fn refs(
        &mut self,
        table: &[&[u8]],
        gpu: usize,
        kind: &Kind,
    ) -> Result<Vec<Vec<u8>>, GpuRejection> {
        let k = usize::from(self.u8(kind.refs)?);
        let index_of = format!("{} index", kind.index);
        (0..k)
            .map(|_| {
                let index = usize::from(self.u16(&index_of)?);
                table.get(index).map(|item| item.to_vec()).ok_or_else(|| {
                    malformed(format!(
                        "gpu {gpu}: {index_of} {index} out of range ({} {})",
                        table.len(),
                        kind.plural
                    ))
                })
            })
            .collect()
    }
}

/// The names of one of the bundle's tables, for its errors.
struct Kind {
    /// One entry ("certificate").
    item: &'static str,
    /// Its plural.
    plural: &'static str,
    /// A GPU's reference count.
    refs: &'static str,
    /// A reference.
    index: &'static str,
}

const CERTS: Kind = Kind {
    item: "certificate",
    plural: "certificates",
    refs: "chain length",
    index: "certificate",
};

const OCSP: Kind = Kind {
    item: "ocsp response",
    plural: "ocsp responses",
    refs: "ocsp reference count",
    index: "ocsp",
};

/// Appends a table: `u16 count, count × (u16 len, bytes)` (entries' lengths checked by the
/// caller).
fn put_table(out: &mut Vec<u8>, items: &[&[u8]], kind: &Kind) -> Result<(), GpuRejection> {
    let n =
        u16::try_from(items.len()).map_err(|_| malformed(format!("too many {}", kind.plural)))?;
    out.extend_from_slice(&n.to_be_bytes());
    for item in items {
        out.extend_from_slice(&(item.len() as u16).to_be_bytes());
        out.extend_from_slice(item);
    }
    Ok(())
}

/// Appends references into a table: `u8 count, count × u16 index` (count checked by the
/// caller).
fn put_refs(out: &mut Vec<u8>, refs: &[u16]) {
    out.push(refs.len() as u8);
    for i in refs {
        out.extend_from_slice(&i.to_be_bytes());
    }
}

/// Interns each of `items` (each `1..=max` bytes) in `table`: their indices.
fn intern_all<'a>(
    table: &mut Vec<&'a [u8]>,
    items: &'a [Vec<u8>],
    max: usize,
    kind: &Kind,
    at: impl Fn(&str) -> String,
) -> Result<Vec<u16>, GpuRejection> {
    items
        .iter()
        .map(|item| {
            within(item.len(), 1, max, || at(&format!("{} bytes", kind.item)))?;
            intern(table, item, kind.plural)
        })
        .collect()
}

/// `n` within `min..=max`, else a malformed-bundle error naming `what` (`"gpu 0: report
/// bytes"`).
fn within(n: usize, min: usize, max: usize, what: impl Fn() -> String) -> Result<(), GpuRejection> {
    if (min..=max).contains(&n) {
        Ok(())
    } else {
        Err(malformed(format!(
            "{}: {n} ({min} to {max} allowed)",
            what()
        )))
    }
}

/// The index of `item` in `table`, appending it if new.
fn intern<'a>(table: &mut Vec<&'a [u8]>, item: &'a [u8], what: &str) -> Result<u16, GpuRejection> {
    let index = match table.iter().position(|c| *c == item) {
        Some(p) => p,
        None => {
            table.push(item);
            table.len() - 1
        }
    };
    u16::try_from(index).map_err(|_| malformed(format!("too many {what}")))
}

impl GpuBundle {
    /// The bundle of `evidence` (PEM chains decoded to DER, OCSP responses carried; their
    /// check time is not: verifiers judge them at their own time).
    pub fn from_evidence(evidence: &[GpuEvidence]) -> Result<Self, GpuRejection> {
        let gpus = evidence
            .iter()
            .map(|ev| {
                let chain = chain::parse_pem_chain(&ev.chain_pem)?
                    .iter()
                    .map(|c| {
                        c.to_der()
                            .map_err(|e| GpuRejection::MalformedChain(e.to_string()))
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(BundledGpu {
                    report: ev.report.clone(),
                    chain,
                    ocsp: ev
                        .ocsp
                        .as_ref()
                        .map(|o| o.responses.clone())
                        .unwrap_or_default(),
                })
            })
            .collect::<Result<Vec<_>, GpuRejection>>()?;
        Ok(Self { gpus })
    }

    /// The canonical encoding (see the module docs).
    pub fn encode(&self) -> Result<Vec<u8>, GpuRejection> {
        if self.gpus.is_empty() || self.gpus.len() > MAX_GPUS {
            return Err(malformed(format!(
                "{} gpus (1 to {MAX_GPUS} allowed)",
                self.gpus.len()
            )));
        }
        let mut certs: Vec<&[u8]> = Vec::new();
        let mut chains: Vec<Vec<u16>> = Vec::new();
        let mut responses: Vec<&[u8]> = Vec::new();
        let mut ocsp_refs: Vec<Vec<u16>> = Vec::new();
        for (i, gpu) in self.gpus.iter().enumerate() {
            let at = |what: &str| format!("gpu {i}: {what}");
            within(gpu.report.len(), 1, MAX_REPORT_LEN, || at("report bytes"))?;
            within(gpu.chain.len(), 1, MAX_CHAIN_LEN, || {
                at("chain certificates")
            })?;
            within(gpu.ocsp.len(), 0, MAX_CHAIN_LEN, || at("ocsp responses"))?;
            chains.push(intern_all(
                &mut certs,
                &gpu.chain,
                MAX_CERT_LEN,
                &CERTS,
                at,
            )?);
            ocsp_refs.push(intern_all(
                &mut responses,
                &gpu.ocsp,
                MAX_OCSP_LEN,
                &OCSP,
                at,
            )?);
        }
        let mut out = if responses.is_empty() {
            MAGIC.to_vec()
        } else {
            MAGIC_V2.to_vec()
        };
        put_table(&mut out, &certs, &CERTS)?;
        out.push(self.gpus.len() as u8);
        for (gpu, indices) in self.gpus.iter().zip(&chains) {
            out.extend_from_slice(&(gpu.report.len() as u16).to_be_bytes());
            out.extend_from_slice(&gpu.report);
            put_refs(&mut out, indices);
        }
        if !responses.is_empty() {
            put_table(&mut out, &responses, &OCSP)?;
            for refs in &ocsp_refs {
                put_refs(&mut out, refs);
            }
        }
        if out.len() > MAX_BUNDLE_LEN {
            return Err(malformed(format!(
                "{} bytes, more than the maximum {MAX_BUNDLE_LEN}",
                out.len()
            )));
        }
        Ok(out)
    }

    /// Decodes a bundle, accepting only its canonical encoding. Untrusted bytes: never panics.
    pub fn parse(bytes: &[u8]) -> Result<Self, GpuRejection> {
        if bytes.len() > MAX_BUNDLE_LEN {
            return Err(malformed(format!(
                "{} bytes, more than the maximum {MAX_BUNDLE_LEN}",
                bytes.len()
            )));
        }
        let mut r = Reader { bytes, pos: 0 };
        let v2 = match r.take(MAGIC.len(), "magic")? {
            m if m == MAGIC => false,
            m if m == MAGIC_V2 => true,
            _ => return Err(malformed("not a cocoon gpu evidence bundle (bad magic)")),
        };
        let certs = r.table(&CERTS)?;
        let m = usize::from(r.u8("gpu count")?);
        let mut gpus = Vec::with_capacity(m.min(MAX_GPUS));
        for g in 0..m {
            let len = usize::from(r.u16("report length")?);
            let report = r.take(len, &format!("gpu {g} report"))?.to_vec();
            gpus.push(BundledGpu {
                report,
                chain: r.refs(&certs, g, &CERTS)?,
                ocsp: Vec::new(),
            });
        }
        if v2 {
            let responses = r.table(&OCSP)?;
            for (g, gpu) in gpus.iter_mut().enumerate() {
                gpu.ocsp = r.refs(&responses, g, &OCSP)?;
            }
        }
        if r.pos != bytes.len() {
            return Err(malformed(format!("{} trailing bytes", bytes.len() - r.pos)));
        }
        let bundle = Self { gpus };
        if bundle.encode()? != bytes {
            return Err(malformed(
                "not in canonical form (certificates or ocsp responses repeated, unreferenced or \
                 out of order, or version 2 without responses)",
            ));
        }
        Ok(bundle)
    }

    /// Verifies every GPU's evidence against `nonce` at `at` under `policy`
    /// ([`super::verify_gpus`] rules: each GPU as [`super::verify_gpu`], no device twice, the
    /// policy's GPU count). OCSP responses are judged at `at` too.
    pub fn verify(
        &self,
        nonce: &[u8; 32],
        at: u64,
        policy: &GpuPolicy,
    ) -> Result<Vec<VerifiedGpu>, GpuRejection> {
        let evidence = self
            .gpus
            .iter()
            .map(|g| {
                let certs = g
                    .chain
                    .iter()
                    .map(|der| {
                        Certificate::from_der(der)
                            .map_err(|e| GpuRejection::MalformedChain(e.to_string()))
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                let ocsp = (!g.ocsp.is_empty()).then(|| OcspEvidence {
                    responses: g.ocsp.clone(),
                    at,
                });
                Ok((g.report.as_slice(), certs, ocsp))
            })
            .collect::<Result<Vec<_>, GpuRejection>>()?;
        super::verify_machine(
            evidence
                .iter()
                .map(|(r, c, o)| (*r, c.as_slice(), o.as_ref())),
            evidence.len(),
            nonce,
            at,
            policy,
        )
    }
}

/// Verifies a certificate's GPU evidence: `bundle` (the extension's bytes) must hash to
/// `claimed_hex` (the claims' `gpu_evidence` entry), parse, and pass [`GpuBundle::verify`]
/// for the nonce of `spki_der`.
pub fn verify_certificate_bundle(
    bundle: Option<&[u8]>,
    claimed_hex: Option<&str>,
    spki_der: &[u8],
    at: u64,
    policy: &GpuPolicy,
) -> Result<Vec<VerifiedGpu>, GpuRejection> {
    let (bundle, claimed) = match (bundle, claimed_hex) {
        (Some(b), Some(c)) => (b, c),
        (None, None) => return Err(GpuRejection::EvidenceMissing),
        (Some(_), None) => {
            return Err(GpuRejection::EvidenceUnclaimed);
        }
        (None, Some(_)) => return Err(GpuRejection::EvidenceMissing),
    };
    let got = digest_hex(bundle);
    if got != claimed {
        return Err(GpuRejection::EvidenceHashMismatch {
            claimed: claimed.to_string(),
            got,
        });
    }
    GpuBundle::parse(bundle)?.verify(&evidence_nonce(spki_der), at, policy)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::refs::GpuReferenceValues;
    use crate::gpu::sim::{SimGpu, SimNvidiaRoot, SIM_GPU_CERT_NOT_BEFORE};

    const AT: u64 = SIM_GPU_CERT_NOT_BEFORE + 86_400;

    fn gpus() -> Vec<SimGpu> {
        SimGpu::machine(2, "550.127.05", "96.00.9F.00.01", "bundle-test")
    }

    fn setup() -> (SimNvidiaRoot, GpuPolicy) {
        let root = SimNvidiaRoot::from_seed([9; 32]).unwrap();
        let refs: GpuReferenceValues = gpus()[0].reference_values();
        let policy = GpuPolicy::new(vec![root.trust_root().unwrap()], refs);
        (root, policy)
    }

    fn bundle_for(root: &SimNvidiaRoot, spki: &[u8]) -> Vec<u8> {
        let evidence = root
            .machine_evidence(&gpus(), &evidence_nonce(spki))
            .unwrap();
        GpuBundle::from_evidence(&evidence)
            .unwrap()
            .encode()
            .unwrap()
    }

    #[test]
    fn a_bundle_round_trips_shares_ca_certificates_and_verifies_for_its_key() {
        let (root, policy) = setup();
        let bytes = bundle_for(&root, b"spki-a");
        let parsed = GpuBundle::parse(&bytes).unwrap();
        assert_eq!(parsed.gpus.len(), 2);
        // 5 + 2 certificates: the three CA certificates are stored once.
        assert_eq!(u16::from_be_bytes([bytes[14], bytes[15]]), 7);
        let v = verify_certificate_bundle(
            Some(&bytes),
            Some(&digest_hex(&bytes)),
            b"spki-a",
            AT,
            &policy,
        )
        .unwrap();
        assert_eq!(v.len(), 2);
        assert_eq!(v[0].measurements_checked, 64);
        assert_ne!(v[0].device_serial, v[1].device_serial);
    }

    #[test]
    fn certificate_bundle_rejections_are_named() {
        let (root, policy) = setup();
        let bytes = bundle_for(&root, b"spki-a");
        let hash = digest_hex(&bytes);
        let check = |b: Option<&[u8]>, h: Option<&str>, spki: &[u8]| {
            verify_certificate_bundle(b, h, spki, AT, &policy)
                .unwrap_err()
                .code()
        };
        // Lifted into a certificate with another key: the nonce does not match.
        assert_eq!(
            check(Some(&bytes), Some(&hash), b"spki-b"),
            "nonce_mismatch"
        );
        assert_eq!(
            check(Some(&bytes), Some(&"00".repeat(32)), b"spki-a"),
            "gpu_evidence_hash_mismatch"
        );
        assert_eq!(check(None, None, b"spki-a"), "gpu_evidence_missing");
        assert_eq!(check(None, Some(&hash), b"spki-a"), "gpu_evidence_missing");
        assert_eq!(
            check(Some(&bytes), None, b"spki-a"),
            "gpu_evidence_unclaimed"
        );
        // Edited in place and re-hashed (as a lying worker would): the report signature.
        let mut edited = bytes.clone();
        let n = edited.len();
        edited[n - 40] ^= 1;
        let code = check(Some(&edited), Some(&digest_hex(&edited)), b"spki-a");
        assert!(
            ["report_signature", "malformed_report", "malformed_bundle"].contains(&code),
            "{code}"
        );
        // A policy that pins another root.
        let other = SimNvidiaRoot::from_seed([1; 32]).unwrap();
        let foreign = GpuPolicy::new(
            vec![other.trust_root().unwrap()],
            gpus()[0].reference_values(),
        );
        assert_eq!(
            verify_certificate_bundle(Some(&bytes), Some(&hash), b"spki-a", AT, &foreign)
                .unwrap_err()
                .code(),
            "untrusted_root"
        );
        // A policy requiring more GPUs than the machine presents.
        let mut three = policy.clone();
        three.gpu_count = Some(3);
        assert_eq!(
            verify_certificate_bundle(Some(&bytes), Some(&hash), b"spki-a", AT, &three)
                .unwrap_err()
                .code(),
            "gpu_count"
        );
    }

    #[test]
    fn only_canonical_well_formed_bytes_parse() {
        let (root, _) = setup();
        let bytes = bundle_for(&root, b"spki-a");
        let code = |b: &[u8]| GpuBundle::parse(b).unwrap_err().code();
        for cut in [0, 5, 14, 15, 100, bytes.len() - 1] {
            assert_eq!(code(&bytes[..cut]), "malformed_bundle", "cut at {cut}");
        }
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert_eq!(code(&trailing), "malformed_bundle");
        let mut magic = bytes.clone();
        magic[0] ^= 1;
        assert_eq!(code(&magic), "malformed_bundle");

        // The same evidence with every chain stored in full (certificates repeated).
        let parsed = GpuBundle::parse(&bytes).unwrap();
        let mut expanded = MAGIC.to_vec();
        let all: Vec<&Vec<u8>> = parsed.gpus.iter().flat_map(|g| &g.chain).collect();
        expanded.extend_from_slice(&(all.len() as u16).to_be_bytes());
        for c in &all {
            expanded.extend_from_slice(&(c.len() as u16).to_be_bytes());
            expanded.extend_from_slice(c);
        }
        expanded.push(parsed.gpus.len() as u8);
        let mut next = 0u16;
        for g in &parsed.gpus {
            expanded.extend_from_slice(&(g.report.len() as u16).to_be_bytes());
            expanded.extend_from_slice(&g.report);
            expanded.push(g.chain.len() as u8);
            for _ in &g.chain {
                expanded.extend_from_slice(&next.to_be_bytes());
                next += 1;
            }
        }
        assert_eq!(code(&expanded), "malformed_bundle", "not canonical");

        // An index beyond the table.
        let mut bad_index = bytes.clone();
        let n = bad_index.len();
        bad_index[n - 1] = 0xff;
        assert_eq!(code(&bad_index), "malformed_bundle");

        // Limits on the encoder.
        let none = GpuBundle { gpus: vec![] };
        assert_eq!(none.encode().unwrap_err().code(), "malformed_bundle");
        let nine = GpuBundle {
            gpus: vec![parsed.gpus[0].clone(); MAX_GPUS + 1],
        };
        assert_eq!(nine.encode().unwrap_err().code(), "malformed_bundle");
        let mut huge = parsed.gpus[0].clone();
        huge.report = vec![0; MAX_REPORT_LEN + 1];
        assert!(GpuBundle { gpus: vec![huge] }.encode().is_err());
    }

    const DAY: u64 = 86_400;

    /// A bundle for `spki` whose GPUs carry OCSP valid from `AT - 3600` for a day.
    fn bundle_with_ocsp(root: &SimNvidiaRoot, spki: &[u8]) -> Vec<u8> {
        let mut evidence = root
            .machine_evidence(&gpus(), &evidence_nonce(spki))
            .unwrap();
        for ev in &mut evidence {
            ev.ocsp = Some(
                root.ocsp_evidence(&ev.chain_pem, AT - 3600, AT - 3600 + DAY)
                    .unwrap(),
            );
        }
        GpuBundle::from_evidence(&evidence)
            .unwrap()
            .encode()
            .unwrap()
    }

    #[test]
    fn ocsp_rides_in_a_version_2_bundle_and_is_judged_at_the_verifiers_time() {
        let (root, mut policy) = setup();
        let bytes = bundle_with_ocsp(&root, b"spki-a");
        assert_eq!(&bytes[..MAGIC_V2.len()], MAGIC_V2);
        let parsed = GpuBundle::parse(&bytes).unwrap();
        assert_eq!(parsed.gpus[0].ocsp.len(), 3);
        assert_eq!(parsed.gpus[1].ocsp.len(), 3);
        // The two shared CAs' answers are stored once: 2 + 2 device answers.
        assert_eq!(parsed.gpus[0].ocsp[1..], parsed.gpus[1].ocsp[1..]);
        let tail = &bytes[bytes.len() - 2 * (1 + 3 * 2)..];
        assert_eq!(tail, [3, 0, 0, 0, 1, 0, 2, 3, 0, 3, 0, 1, 0, 2]);
        let hash = digest_hex(&bytes);
        let verify = |at: u64, policy: &GpuPolicy| {
            verify_certificate_bundle(Some(&bytes), Some(&hash), b"spki-a", at, policy)
        };
        policy.require_ocsp = true;
        let v = verify(AT, &policy).unwrap();
        assert_eq!(v[0].ocsp.len(), 3);
        assert_eq!(v[0].ocsp_valid, (AT - 3600, AT - 3600 + DAY));
        // A maximum age shortens the window the verdict holds for.
        policy.ocsp_max_age_secs = Some(7200);
        let v = verify(AT, &policy).unwrap();
        assert_eq!(v[0].ocsp_valid, (AT - 3600, AT + 3600));
        assert_eq!(verify(AT + 3601, &policy).unwrap_err().code(), "ocsp_stale");
        policy.ocsp_max_age_secs = None;
        // Past nextUpdate (a week later), and before thisUpdate.
        assert_eq!(
            verify(AT + 7 * DAY, &policy).unwrap_err().code(),
            "ocsp_stale"
        );
        assert_eq!(
            verify(AT - 7200, &policy).unwrap_err().code(),
            "ocsp_not_yet_valid"
        );
        // A policy that requires OCSP refuses a bundle without it.
        let plain = bundle_for(&root, b"spki-a");
        assert_eq!(
            verify_certificate_bundle(
                Some(&plain),
                Some(&digest_hex(&plain)),
                b"spki-a",
                AT,
                &policy
            )
            .unwrap_err()
            .code(),
            "ocsp_required"
        );
    }

    #[test]
    fn bundled_ocsp_that_lies_is_refused_by_name() {
        let (root, mut policy) = setup();
        policy.require_ocsp = true;
        let nonce = evidence_nonce(b"spki-a");
        let check = |evidence: &[GpuEvidence]| {
            let bytes = GpuBundle::from_evidence(evidence)
                .unwrap()
                .encode()
                .unwrap();
            verify_certificate_bundle(
                Some(&bytes),
                Some(&digest_hex(&bytes)),
                b"spki-a",
                AT,
                &policy,
            )
            .map(|_| ())
            .map_err(|e| e.code())
        };
        let good = || {
            let mut ev = root.machine_evidence(&gpus(), &nonce).unwrap();
            for e in &mut ev {
                e.ocsp = Some(root.ocsp_evidence(&e.chain_pem, AT - 60, AT + DAY).unwrap());
            }
            ev
        };
        assert_eq!(check(&good()), Ok(()));

        // A signature bit flipped (the last byte of the DER is in the signature).
        let mut ev = good();
        let r = &mut ev[0].ocsp.as_mut().unwrap().responses[0];
        let n = r.len();
        r[n - 1] ^= 1;
        assert!(matches!(
            check(&ev),
            Err("ocsp_signature" | "malformed_ocsp")
        ));

        // One answer missing (the device certificate's).
        let mut ev = good();
        ev[1].ocsp.as_mut().unwrap().responses.remove(0);
        assert_eq!(check(&ev), Err("ocsp_missing"));

        // Another GPU's device answer in its place.
        let mut ev = good();
        let other = ev[0].ocsp.as_ref().unwrap().responses[0].clone();
        ev[1].ocsp.as_mut().unwrap().responses[0] = other;
        assert!(matches!(check(&ev), Err("ocsp_missing" | "ocsp_unmatched")));

        // Answers from a look-alike hierarchy (same names, other keys): its responder does not
        // know these issuers and says so; a signed answer from it would fail the signature.
        let other_root = SimNvidiaRoot::from_seed([1; 32]).unwrap();
        let mut ev = good();
        let certs = chain::parse_pem_chain(&ev[0].chain_pem).unwrap();
        let (_, cert, issuer) = crate::gpu::ocsp::covered(&certs).next().unwrap();
        let req = crate::gpu::ocsp::request_der(cert, issuer).unwrap();
        ev[0].ocsp.as_mut().unwrap().responses[0] = other_root
            .ocsp_response(&req, AT - 60, AT + DAY, &[])
            .unwrap();
        assert_eq!(check(&ev), Err("malformed_ocsp"));

        // Revoked device certificate.
        let mut ev = good();
        let serial = cert.tbs_certificate.serial_number.as_bytes().to_vec();
        ev[0].ocsp.as_mut().unwrap().responses[0] = root
            .ocsp_response(&req, AT - 60, AT + DAY, &[serial])
            .unwrap();
        assert_eq!(check(&ev), Err("ocsp_revoked"));
    }

    #[test]
    fn a_version_2_bundle_without_responses_is_not_canonical() {
        let (root, _) = setup();
        let plain = bundle_for(&root, b"spki-a");
        let mut v2 = MAGIC_V2.to_vec();
        v2.extend_from_slice(&plain[MAGIC.len()..]);
        v2.extend_from_slice(&[0, 0, 0, 0]);
        assert_eq!(
            GpuBundle::parse(&v2).unwrap_err().code(),
            "malformed_bundle"
        );
        // And a response index beyond the table.
        let mut bad = bundle_with_ocsp(&root, b"spki-a");
        let n = bad.len();
        bad[n - 1] = 9;
        assert_eq!(
            GpuBundle::parse(&bad).unwrap_err().code(),
            "malformed_bundle"
        );
    }

    #[test]
    fn a_bundle_of_eight_gpus_fits_the_limit() {
        let root = SimNvidiaRoot::from_seed([9; 32]).unwrap();
        let eight = SimGpu::machine(8, "550.127.05", "96.00.9F.00.01", "eight");
        let evidence = root
            .machine_evidence(&eight, &evidence_nonce(b"k"))
            .unwrap();
        let bytes = GpuBundle::from_evidence(&evidence)
            .unwrap()
            .encode()
            .unwrap();
        assert!(bytes.len() < MAX_BUNDLE_LEN, "{}", bytes.len());
        // With OCSP: 8 device answers and the 2 shared CA answers, each stored once.
        let mut with_ocsp = evidence.clone();
        for ev in &mut with_ocsp {
            ev.ocsp = Some(root.ocsp_evidence(&ev.chain_pem, AT, AT + 86_400).unwrap());
        }
        let b = GpuBundle::from_evidence(&with_ocsp).unwrap();
        let stored: usize = b.gpus.iter().flat_map(|g| &g.ocsp).map(Vec::len).sum();
        let bytes2 = b.encode().unwrap();
        eprintln!(
            "8 gpus: {} bytes, with ocsp {} bytes ({} of responses referenced)",
            bytes.len(),
            bytes2.len(),
            stored
        );
        assert!(bytes2.len() < bytes.len() + stored / 2);
    }
}

/// The committed fuzz seeds (`fuzz/seeds/gpu_bundle_parse/`): two simulated GPUs answering
/// the nonce of the key `b"fuzz spki"` under the fuzz target's root, without OCSP
/// (`two_gpus.bin`, version 1) and with OCSP fresh at the target's time (`two_gpus_ocsp.bin`,
/// version 2). Written with `COCOON_WRITE_FUZZ_SEEDS=1`; otherwise the test checks the
/// committed files are current and pass the fuzz target's policy.
#[cfg(test)]
mod fuzz_seed {
    use super::*;
    use crate::gpu::sim::{SimGpu, SimNvidiaRoot};

    const FUZZ_AT: u64 = 1_800_000_000;

    #[test]
    fn the_committed_fuzz_seeds_are_current_and_verify() {
        let sim = SimNvidiaRoot::from_seed([9; 32]).unwrap();
        let two = SimGpu::machine(2, "550.127.05", "96.00.9F.00.01", "fuzz-bundle");
        let plain = sim
            .machine_evidence(&two, &evidence_nonce(b"fuzz spki"))
            .unwrap();
        let mut with_ocsp = plain.clone();
        for ev in &mut with_ocsp {
            ev.ocsp = Some(
                sim.ocsp_evidence(&ev.chain_pem, FUZZ_AT - 3600, FUZZ_AT + 86_400)
                    .unwrap(),
            );
        }
        let policy = GpuPolicy::new(
            vec![sim.trust_root().unwrap()],
            SimGpu::new("550.127.05", "96.00.9F.00.01", "fuzz-bundle").reference_values(),
        );
        for (file, evidence, ocsp) in [
            ("two_gpus.bin", plain, 0),
            ("two_gpus_ocsp.bin", with_ocsp, 3),
        ] {
            let bytes = GpuBundle::from_evidence(&evidence)
                .unwrap()
                .encode()
                .unwrap();
            let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../fuzz/seeds/gpu_bundle_parse")
                .join(file);
            if std::env::var_os("COCOON_WRITE_FUZZ_SEEDS").is_some() {
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                std::fs::write(&path, &bytes).unwrap();
            }
            assert_eq!(std::fs::read(&path).unwrap(), bytes, "regenerate {file}");
            let v = verify_certificate_bundle(
                Some(&bytes),
                Some(&digest_hex(&bytes)),
                b"fuzz spki",
                FUZZ_AT,
                &policy,
            )
            .unwrap();
            assert_eq!(v.len(), 2);
            assert_eq!(v[0].ocsp.len(), ocsp, "{file}");
        }
    }
}

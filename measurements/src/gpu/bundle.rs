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
//! # Encoding, version 1
//!
//! Binary, big-endian lengths, every byte accounted for:
//!
//! ```text
//! magic       "cocoon-gpu/v1\0"                       (14 bytes)
//! certs       u16 n, then n × (u16 len, DER certificate)
//! gpus        u8 m (1..=MAX_GPUS), then m × (u16 len, report bytes,
//!                                             u8 k, k × u16 index into certs)   chain, leaf first
//! ```
//!
//! GPUs of one machine share the three CA certificates of their chains, so each certificate is
//! stored once and chains refer to it by index. The encoding is canonical: certificates appear
//! in the order chains first refer to them, none twice, none unreferenced; [`GpuBundle::parse`]
//! accepts only bytes that re-encode to themselves, so one bundle has one digest.

use der::{Decode, Encode};
use sha2::{Digest, Sha256};
use x509_cert::Certificate;

use super::{chain, GpuEvidence, GpuPolicy, GpuRejection, VerifiedGpu};

/// The bundle's leading bytes (format version 1).
pub const MAGIC: &[u8] = b"cocoon-gpu/v1\0";
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

/// One GPU's evidence in a bundle: the report and its chain (DER, leaf first).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BundledGpu {
    pub report: Vec<u8>,
    pub chain: Vec<Vec<u8>>,
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
}

impl GpuBundle {
    /// The bundle of `evidence` (PEM chains decoded to DER). OCSP responses are not carried.
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
        for (i, gpu) in self.gpus.iter().enumerate() {
            if gpu.report.is_empty() || gpu.report.len() > MAX_REPORT_LEN {
                return Err(malformed(format!(
                    "gpu {i}: report of {} bytes (1 to {MAX_REPORT_LEN} allowed)",
                    gpu.report.len()
                )));
            }
            if gpu.chain.is_empty() || gpu.chain.len() > MAX_CHAIN_LEN {
                return Err(malformed(format!(
                    "gpu {i}: chain of {} certificates (1 to {MAX_CHAIN_LEN} allowed)",
                    gpu.chain.len()
                )));
            }
            let mut indices = Vec::with_capacity(gpu.chain.len());
            for cert in &gpu.chain {
                if cert.is_empty() || cert.len() > MAX_CERT_LEN {
                    return Err(malformed(format!(
                        "gpu {i}: certificate of {} bytes (1 to {MAX_CERT_LEN} allowed)",
                        cert.len()
                    )));
                }
                let index = match certs.iter().position(|c| *c == cert.as_slice()) {
                    Some(p) => p,
                    None => {
                        certs.push(cert);
                        certs.len() - 1
                    }
                };
                indices.push(u16::try_from(index).map_err(|_| malformed("too many certificates"))?);
            }
            chains.push(indices);
        }
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(
            &u16::try_from(certs.len())
                .map_err(|_| malformed("too many certificates"))?
                .to_be_bytes(),
        );
        for c in &certs {
            out.extend_from_slice(&(c.len() as u16).to_be_bytes());
            out.extend_from_slice(c);
        }
        out.push(self.gpus.len() as u8);
        for (gpu, indices) in self.gpus.iter().zip(&chains) {
            out.extend_from_slice(&(gpu.report.len() as u16).to_be_bytes());
            out.extend_from_slice(&gpu.report);
            out.push(indices.len() as u8);
            for i in indices {
                out.extend_from_slice(&i.to_be_bytes());
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
        if r.take(MAGIC.len(), "magic")? != MAGIC {
            return Err(malformed("not a cocoon gpu evidence bundle (bad magic)"));
        }
        let n = usize::from(r.u16("certificate count")?);
        let mut certs = Vec::with_capacity(n.min(64));
        for i in 0..n {
            let len = usize::from(r.u16("certificate length")?);
            certs.push(r.take(len, &format!("certificate {i}"))?.to_vec());
        }
        let m = usize::from(r.u8("gpu count")?);
        let mut gpus = Vec::with_capacity(m.min(MAX_GPUS));
        for g in 0..m {
            let len = usize::from(r.u16("report length")?);
            let report = r.take(len, &format!("gpu {g} report"))?.to_vec();
            let k = usize::from(r.u8("chain length")?);
            let mut chain = Vec::with_capacity(k.min(MAX_CHAIN_LEN));
            for _ in 0..k {
                let index = usize::from(r.u16("certificate index")?);
                let cert = certs.get(index).ok_or_else(|| {
                    malformed(format!(
                        "gpu {g}: certificate index {index} out of range ({n} certificates)"
                    ))
                })?;
                chain.push(cert.clone());
            }
            gpus.push(BundledGpu { report, chain });
        }
        if r.pos != bytes.len() {
            return Err(malformed(format!("{} trailing bytes", bytes.len() - r.pos)));
        }
        let bundle = Self { gpus };
        if bundle.encode()? != bytes {
            return Err(malformed(
                "not in canonical form (certificates repeated, unreferenced or out of order)",
            ));
        }
        Ok(bundle)
    }

    /// Verifies every GPU's evidence against `nonce` at `at` under `policy`
    /// ([`super::verify_gpus`] rules: each GPU as [`super::verify_gpu`], no device twice, the
    /// policy's GPU count).
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
                Ok((g.report.as_slice(), certs))
            })
            .collect::<Result<Vec<_>, GpuRejection>>()?;
        super::verify_machine(
            evidence.iter().map(|(r, c)| (*r, c.as_slice(), None)),
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
    }
}

/// The committed fuzz seed (`fuzz/seeds/gpu_bundle_parse/two_gpus.bin`): two simulated GPUs
/// answering the nonce of the key `b"fuzz spki"` under the fuzz target's root. Written with
/// `COCOON_WRITE_FUZZ_SEEDS=1`; otherwise the test checks the committed file is current and
/// passes the fuzz target's policy.
#[cfg(test)]
mod fuzz_seed {
    use super::*;
    use crate::gpu::sim::{SimGpu, SimNvidiaRoot};

    #[test]
    fn the_committed_fuzz_seed_is_current_and_verifies() {
        let sim = SimNvidiaRoot::from_seed([9; 32]).unwrap();
        let two = SimGpu::machine(2, "550.127.05", "96.00.9F.00.01", "fuzz-bundle");
        let evidence = sim
            .machine_evidence(&two, &evidence_nonce(b"fuzz spki"))
            .unwrap();
        let bytes = GpuBundle::from_evidence(&evidence)
            .unwrap()
            .encode()
            .unwrap();
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../fuzz/seeds/gpu_bundle_parse/two_gpus.bin");
        if std::env::var_os("COCOON_WRITE_FUZZ_SEEDS").is_some() {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &bytes).unwrap();
        }
        assert_eq!(std::fs::read(&path).unwrap(), bytes, "regenerate the seed");
        let policy = GpuPolicy::new(
            vec![sim.trust_root().unwrap()],
            SimGpu::new("550.127.05", "96.00.9F.00.01", "fuzz-bundle").reference_values(),
        );
        let v = verify_certificate_bundle(
            Some(&bytes),
            Some(&digest_hex(&bytes)),
            b"fuzz spki",
            1_800_000_000,
            &policy,
        )
        .unwrap();
        assert_eq!(v.len(), 2);
    }
}

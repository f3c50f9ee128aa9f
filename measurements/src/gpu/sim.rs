//! The simulated NVIDIA device PKI, for development and CI where no H100 exists.
//!
//! [`SimNvidiaRoot`] plays NVIDIA's device identity hierarchy in miniature, in the same shape
//! as Hopper's (five P-384 certificates, ecdsa-with-SHA384, leaf first):
//!
//! ```text
//! "Cocoon Simulated NVIDIA Device Identity CA (NOT NVIDIA)"  self-signed root
//!  └── "Cocoon Simulated GH100 Identity (NOT NVIDIA)"
//!       └── "Cocoon Simulated GH100 Provisioner ICA (NOT NVIDIA)"
//!            └── "Cocoon Simulated GH100 GSP BROM (NOT NVIDIA)"      per-device identity
//!                 └── "Cocoon Simulated GH100 GSP FMC LF (NOT NVIDIA)"  attestation key, FWID
//! ```
//!
//! [`SimNvidiaRoot::evidence`] signs a synthetic report in the real Hopper layout (SPDM 1.1
//! GET_MEASUREMENTS request + MEASUREMENTS response with NVIDIA opaque fields) with the leaf
//! key. [`super::verify_gpu`] verifies it through the same code path as real evidence; it
//! passes only under a policy whose roots contain [`SimNvidiaRoot::trust_root`] and fails
//! with `untrusted_root` under [`super::GpuPolicy::production`].
//!
//! Everything derives from a 32-byte seed, so output is reproducible. Trust boundary: none.
//! Whoever holds the seed can sign any measurements; that is why only a policy that names the
//! simulated root accepts its reports.

use std::str::FromStr;
use std::time::Duration;

use der::asn1::{Any, BitString, OctetString, UtcTime};
use der::Encode;
use p384::ecdsa::signature::Signer;
use p384::ecdsa::{Signature, SigningKey};
use sha2::{Digest, Sha384};
use spki::{AlgorithmIdentifierOwned, SubjectPublicKeyInfoOwned};
use x509_cert::certificate::{Certificate, TbsCertificate, Version};
use x509_cert::ext::pkix::{BasicConstraints, KeyUsage, KeyUsages};
use x509_cert::ext::Extension;
use x509_cert::name::Name;
use x509_cert::serial_number::SerialNumber;
use x509_cert::time::{Time, Validity};

use super::chain::{self, ECDSA_WITH_SHA384, ID_EC_PUBLIC_KEY, SECP384R1};
use super::refs::{GpuReferenceSet, GpuReferenceValues, GPU_REFS_FORMAT_V1};
use super::report::{self, opaque_type};
use crate::policy::TrustRoot;

/// Start of validity of every simulated certificate: 2024-01-01T00:00:00Z.
pub const SIM_GPU_CERT_NOT_BEFORE: u64 = 1_704_067_200;
/// End of validity of every simulated certificate: 2049-12-31T23:59:59Z.
pub const SIM_GPU_CERT_NOT_AFTER: u64 = 2_524_607_999;
/// Name of the simulated root in policies and verdicts.
pub const SIM_NVIDIA_ROOT_NAME: &str = "cocoon-simulated-nvidia-root";

const DERIVE_TAG: &[u8] = b"cocoon/sim-nvidia-gpu/derive/v1\0";
const ORG: &str = "Cocoon simulated NVIDIA PKI (NOT NVIDIA)";
const NAMES: [&str; 5] = [
    "Cocoon Simulated GH100 GSP FMC LF (NOT NVIDIA)",
    "Cocoon Simulated GH100 GSP BROM (NOT NVIDIA)",
    "Cocoon Simulated GH100 Provisioner ICA (NOT NVIDIA)",
    "Cocoon Simulated GH100 Identity (NOT NVIDIA)",
    "Cocoon Simulated NVIDIA Device Identity CA (NOT NVIDIA)",
];

/// Failures of the generator (bad parameters or an encoding error).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SimGpuError {
    #[error("simulated gpu: {0}")]
    Encoding(String),
    #[error("simulated gpu parameter {field}: {detail}")]
    Param { field: &'static str, detail: String },
}

fn enc<E: std::fmt::Display>(e: E) -> SimGpuError {
    SimGpuError::Encoding(e.to_string())
}

/// What a simulated GPU reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimGpu {
    pub driver_version: String,
    /// VBIOS version as NVIDIA prints it ("96.00.9F.00.01").
    pub vbios_version: String,
    /// 64 SHA-384 measurement values (block index i+1 carries `measurements[i]`).
    pub measurements: Vec<[u8; 48]>,
    pub nvdec0_disabled: bool,
    /// Distinguishes devices under one root (goes into the BROM certificate's serial).
    pub device_id: u32,
}

impl SimGpu {
    /// A Hopper-like GPU: the given versions, measurements derived from `label`.
    pub fn new(driver_version: &str, vbios_version: &str, label: &str) -> Self {
        let measurements = (0..64u8)
            .map(|i| {
                let mut h = Sha384::new();
                h.update(b"cocoon/sim-nvidia-gpu/measurement/v1\0");
                h.update(label.as_bytes());
                h.update([i]);
                h.finalize().into()
            })
            .collect();
        Self {
            driver_version: driver_version.into(),
            vbios_version: vbios_version.into(),
            measurements,
            nvdec0_disabled: false,
            device_id: 1,
        }
    }

    /// The `count` GPUs of one machine: device ids 1 to `count`, otherwise as [`SimGpu::new`].
    pub fn machine(
        count: u32,
        driver_version: &str,
        vbios_version: &str,
        label: &str,
    ) -> Vec<Self> {
        (1..=count)
            .map(|device_id| Self {
                device_id,
                ..Self::new(driver_version, vbios_version, label)
            })
            .collect()
    }

    /// FWID of the simulated firmware (derived from the versions).
    pub fn fwid(&self) -> [u8; 48] {
        let mut h = Sha384::new();
        h.update(b"cocoon/sim-nvidia-gpu/fwid/v1\0");
        h.update(self.driver_version.as_bytes());
        h.update([0]);
        h.update(self.vbios_version.as_bytes());
        h.finalize().into()
    }

    /// Reference values that accept exactly this GPU's measurements (all 64 indices).
    pub fn reference_values(&self) -> GpuReferenceValues {
        GpuReferenceValues {
            format: GPU_REFS_FORMAT_V1.into(),
            sets: vec![GpuReferenceSet {
                chip: "GH100".into(),
                driver_version: self.driver_version.clone(),
                vbios_version: self.vbios_version.clone(),
                sources: vec!["cocoon simulated gpu (NOT NVIDIA)".into()],
                measurements: self
                    .measurements
                    .iter()
                    .enumerate()
                    .map(|(i, m)| (i as u16, vec![hex::encode(m)]))
                    .collect(),
            }],
        }
    }
}

/// The simulated root and its issuing CAs (the two lowest certificates are made per GPU).
pub struct SimNvidiaRoot {
    seed: [u8; 32],
    keys: Vec<SigningKey>,
    /// Root, GH100 identity, provisioner ICA (indices 4, 3, 2 of a chain), DER.
    ca_certs: Vec<Certificate>,
}

impl std::fmt::Debug for SimNvidiaRoot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimNvidiaRoot").finish_non_exhaustive()
    }
}

fn derive_key(seed: &[u8; 32], label: &str) -> Result<SigningKey, SimGpuError> {
    for counter in 0..=u8::MAX {
        let mut h = Sha384::new();
        h.update(DERIVE_TAG);
        h.update(seed);
        h.update((label.len() as u64).to_be_bytes());
        h.update(label.as_bytes());
        h.update([counter]);
        let bytes = h.finalize();
        if let Ok(k) = SigningKey::from_slice(&bytes) {
            return Ok(k);
        }
    }
    Err(SimGpuError::Encoding(format!("no key for {label}")))
}

fn spki(key: &SigningKey) -> Result<SubjectPublicKeyInfoOwned, SimGpuError> {
    let point = key.verifying_key().to_encoded_point(false);
    Ok(SubjectPublicKeyInfoOwned {
        algorithm: AlgorithmIdentifierOwned {
            oid: ID_EC_PUBLIC_KEY,
            parameters: Some(Any::encode_from(&SECP384R1).map_err(enc)?),
        },
        subject_public_key: BitString::from_bytes(point.as_bytes()).map_err(enc)?,
    })
}

fn name(cn: &str) -> Result<Name, SimGpuError> {
    Name::from_str(&format!("CN={cn},O={ORG}")).map_err(enc)
}

fn ext(
    oid: der::asn1::ObjectIdentifier,
    critical: bool,
    value: Vec<u8>,
) -> Result<Extension, SimGpuError> {
    Ok(Extension {
        extn_id: oid,
        critical,
        extn_value: OctetString::new(value).map_err(enc)?,
    })
}

struct CertSpec<'a> {
    subject: &'a str,
    issuer: &'a str,
    serial: &'a [u8],
    key: &'a SigningKey,
    issuer_key: &'a SigningKey,
    ca: bool,
    fwid: Option<&'a [u8]>,
}

fn make_cert(spec: &CertSpec<'_>) -> Result<Certificate, SimGpuError> {
    let alg = AlgorithmIdentifierOwned {
        oid: ECDSA_WITH_SHA384,
        parameters: None,
    };
    let time = |t: u64| -> Result<Time, SimGpuError> {
        Ok(Time::UtcTime(
            UtcTime::from_unix_duration(Duration::from_secs(t)).map_err(enc)?,
        ))
    };
    let public = spki(spec.key)?;
    let mut extensions = Vec::new();
    let bc = BasicConstraints {
        ca: spec.ca,
        path_len_constraint: None,
    };
    extensions.push(ext(
        der::asn1::ObjectIdentifier::new_unwrap("2.5.29.19"),
        true,
        bc.to_der().map_err(enc)?,
    )?);
    let ku = if spec.ca {
        KeyUsage(KeyUsages::KeyCertSign | KeyUsages::CRLSign)
    } else {
        KeyUsage(KeyUsages::DigitalSignature.into())
    };
    extensions.push(ext(
        der::asn1::ObjectIdentifier::new_unwrap("2.5.29.15"),
        true,
        ku.to_der().map_err(enc)?,
    )?);
    if let Some(fwid) = spec.fwid {
        let v = chain::encode_fwid_extension(public.clone(), fwid).map_err(enc)?;
        extensions.push(ext(chain::NVIDIA_FWID_EXT, false, v)?);
    }
    let tbs = TbsCertificate {
        version: Version::V3,
        serial_number: SerialNumber::new(spec.serial).map_err(enc)?,
        signature: alg.clone(),
        issuer: name(spec.issuer)?,
        validity: Validity {
            not_before: time(SIM_GPU_CERT_NOT_BEFORE)?,
            not_after: time(SIM_GPU_CERT_NOT_AFTER)?,
        },
        subject: name(spec.subject)?,
        subject_public_key_info: public,
        issuer_unique_id: None,
        subject_unique_id: None,
        extensions: Some(extensions),
    };
    let sig: Signature = spec.issuer_key.sign(&tbs.to_der().map_err(enc)?);
    Ok(Certificate {
        tbs_certificate: tbs,
        signature_algorithm: alg,
        signature: BitString::from_bytes(sig.to_der().as_bytes()).map_err(enc)?,
    })
}

impl SimNvidiaRoot {
    /// Builds the simulated hierarchy from a seed.
    pub fn from_seed(seed: [u8; 32]) -> Result<Self, SimGpuError> {
        let keys = ["root", "identity", "provisioner"]
            .iter()
            .map(|l| derive_key(&seed, l))
            .collect::<Result<Vec<_>, _>>()?;
        let root = make_cert(&CertSpec {
            subject: NAMES[4],
            issuer: NAMES[4],
            serial: &[0x01],
            key: &keys[0],
            issuer_key: &keys[0],
            ca: true,
            fwid: None,
        })?;
        let identity = make_cert(&CertSpec {
            subject: NAMES[3],
            issuer: NAMES[4],
            serial: &[0x02],
            key: &keys[1],
            issuer_key: &keys[0],
            ca: true,
            fwid: None,
        })?;
        let provisioner = make_cert(&CertSpec {
            subject: NAMES[2],
            issuer: NAMES[3],
            serial: &[0x03],
            key: &keys[2],
            issuer_key: &keys[1],
            ca: true,
            fwid: None,
        })?;
        Ok(Self {
            seed,
            keys,
            ca_certs: vec![root, identity, provisioner],
        })
    }

    /// The simulated root certificate, DER.
    pub fn root_der(&self) -> Result<Vec<u8>, SimGpuError> {
        self.ca_certs[0].to_der().map_err(enc)
    }

    /// The simulated root as a policy root (named [`SIM_NVIDIA_ROOT_NAME`]).
    pub fn trust_root(&self) -> Result<TrustRoot, SimGpuError> {
        Ok(TrustRoot::new(SIM_NVIDIA_ROOT_NAME, self.root_der()?))
    }

    /// The PEM chain (leaf first) for `gpu`, and the leaf key that signs its reports.
    fn chain(&self, gpu: &SimGpu) -> Result<(String, SigningKey), SimGpuError> {
        let label = format!("device-{}", gpu.device_id);
        let brom_key = derive_key(&self.seed, &format!("{label}/brom"))?;
        let leaf_key = derive_key(&self.seed, &format!("{label}/fmc"))?;
        let id = gpu.device_id.to_be_bytes();
        let brom = make_cert(&CertSpec {
            subject: NAMES[1],
            issuer: NAMES[2],
            serial: &[0x41, id[0], id[1], id[2], id[3]],
            key: &brom_key,
            issuer_key: &self.keys[2],
            ca: true,
            fwid: None,
        })?;
        let leaf = make_cert(&CertSpec {
            subject: NAMES[0],
            issuer: NAMES[1],
            serial: &[0x53, id[0], id[1], id[2], id[3]],
            key: &leaf_key,
            issuer_key: &brom_key,
            ca: false,
            fwid: Some(&gpu.fwid()),
        })?;
        let mut pem = String::new();
        for cert in [
            &leaf,
            &brom,
            &self.ca_certs[2],
            &self.ca_certs[1],
            &self.ca_certs[0],
        ] {
            let der = cert.to_der().map_err(enc)?;
            pem.push_str(
                &der::pem::encode_string("CERTIFICATE", der::pem::LineEnding::LF, &der)
                    .map_err(enc)?,
            );
        }
        Ok((pem, leaf_key))
    }

    /// The simulated OCSP responder's answer to `request` (a DER OCSPRequest, as
    /// [`super::ocsp::request_der`] builds): one BasicOCSPResponse over every certificate the
    /// request names, signed directly by their issuer (which must be the root, the identity CA
    /// or the provisioner ICA of this hierarchy, and the same for all), valid from
    /// `this_update` to `next_update`, `revoked` for serials in `revoked` (revoked at
    /// `this_update`), good otherwise. A request this responder cannot answer gets an
    /// unsigned `malformedRequest` or `unauthorized` response, as a real responder's.
    pub fn ocsp_response(
        &self,
        request: &[u8],
        this_update: u64,
        next_update: u64,
        revoked: &[Vec<u8>],
    ) -> Result<Vec<u8>, SimGpuError> {
        use der::Decode;
        use x509_ocsp::{
            BasicOcspResponse, CertStatus, OcspGeneralizedTime, OcspRequest, OcspResponse,
            OcspResponseStatus, ResponderId, ResponseBytes, ResponseData, RevokedInfo,
            SingleResponse,
        };
        let refuse = |status| {
            OcspResponse {
                response_status: status,
                response_bytes: None,
            }
            .to_der()
            .map_err(enc)
        };
        let Ok(req) = OcspRequest::from_der(request) else {
            return refuse(OcspResponseStatus::MalformedRequest);
        };
        let list = &req.tbs_request.request_list;
        // The issuer of every requested certificate: one of the three CA keys.
        let issuer_of = |id: &x509_ocsp::CertId| {
            self.keys.iter().position(|k| {
                let point = k.verifying_key().to_encoded_point(false);
                id.hash_algorithm.oid == chain::ID_SHA384
                    && Sha384::digest(point.as_bytes()).as_slice() == id.issuer_key_hash.as_bytes()
            })
        };
        let issuers: Vec<Option<usize>> = list.iter().map(|r| issuer_of(&r.req_cert)).collect();
        let issuer = match issuers.first() {
            Some(Some(i)) if issuers.iter().all(|j| *j == Some(*i)) => *i,
            Some(_) => return refuse(OcspResponseStatus::Unauthorized),
            None => return refuse(OcspResponseStatus::MalformedRequest),
        };
        let gtime = |t: u64| -> Result<OcspGeneralizedTime, SimGpuError> {
            Ok(OcspGeneralizedTime(
                der::asn1::GeneralizedTime::from_unix_duration(Duration::from_secs(t))
                    .map_err(enc)?,
            ))
        };
        let responses = list
            .iter()
            .map(|r| {
                let serial = r.req_cert.serial_number.as_bytes().to_vec();
                let cert_status = if revoked.contains(&serial) {
                    CertStatus::Revoked(RevokedInfo {
                        revocation_time: gtime(this_update)?,
                        revocation_reason: None,
                    })
                } else {
                    CertStatus::Good(der::asn1::Null)
                };
                Ok(SingleResponse {
                    cert_id: r.req_cert.clone(),
                    cert_status,
                    this_update: gtime(this_update)?,
                    next_update: Some(gtime(next_update)?),
                    single_extensions: None,
                })
            })
            .collect::<Result<Vec<_>, SimGpuError>>()?;
        // keys[i] is the key of NAMES[4 - i] (root, identity, provisioner).
        let tbs = ResponseData {
            version: x509_ocsp::Version::V1,
            responder_id: ResponderId::ByName(name(NAMES[4 - issuer])?),
            produced_at: gtime(this_update)?,
            responses,
            response_extensions: None,
        };
        let sig: Signature = self.keys[issuer].sign(&tbs.to_der().map_err(enc)?);
        let basic = BasicOcspResponse {
            tbs_response_data: tbs,
            signature_algorithm: AlgorithmIdentifierOwned {
                oid: ECDSA_WITH_SHA384,
                parameters: None,
            },
            signature: BitString::from_bytes(sig.to_der().as_bytes()).map_err(enc)?,
            certs: None,
        };
        OcspResponse {
            response_status: OcspResponseStatus::Successful,
            response_bytes: Some(ResponseBytes {
                response_type: super::ocsp::ID_PKIX_OCSP_BASIC,
                response: OctetString::new(basic.to_der().map_err(enc)?).map_err(enc)?,
            }),
        }
        .to_der()
        .map_err(enc)
    }

    /// OCSP evidence for a chain (PEM, leaf first) of this hierarchy: one request per covered
    /// certificate ([`super::ocsp::request_der`]) answered by [`SimNvidiaRoot::ocsp_response`],
    /// judged at `this_update`.
    pub fn ocsp_evidence(
        &self,
        chain_pem: &[u8],
        this_update: u64,
        next_update: u64,
    ) -> Result<super::OcspEvidence, SimGpuError> {
        let certs = chain::parse_pem_chain(chain_pem).map_err(enc)?;
        let responses = super::ocsp::covered(&certs)
            .map(|(_, cert, issuer)| {
                let req = super::ocsp::request_der(cert, issuer).map_err(enc)?;
                self.ocsp_response(&req, this_update, next_update, &[])
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(super::OcspEvidence {
            responses,
            at: this_update,
        })
    }

    /// [`SimNvidiaRoot::evidence`] of each GPU, as the verifier takes it (no OCSP).
    pub fn machine_evidence(
        &self,
        gpus: &[SimGpu],
        nonce: &[u8; 32],
    ) -> Result<Vec<super::GpuEvidence>, SimGpuError> {
        gpus.iter()
            .map(|gpu| {
                let (report, pem) = self.evidence(gpu, nonce)?;
                Ok(super::GpuEvidence {
                    report,
                    chain_pem: pem.into_bytes(),
                    ocsp: None,
                })
            })
            .collect()
    }

    /// A signed Hopper-format report answering `nonce`, and its PEM chain (leaf first).
    pub fn evidence(
        &self,
        gpu: &SimGpu,
        nonce: &[u8; 32],
    ) -> Result<(Vec<u8>, String), SimGpuError> {
        let (pem, leaf_key) = self.chain(gpu)?;
        let vbios =
            report::encode_vbios_version(&gpu.vbios_version).ok_or_else(|| SimGpuError::Param {
                field: "vbios_version",
                detail: format!("{:?} is not five hex pairs", gpu.vbios_version),
            })?;
        if gpu.measurements.len() > 255 {
            return Err(SimGpuError::Param {
                field: "measurements",
                detail: "more than 255 blocks".into(),
            });
        }
        let mut record = Vec::new();
        for (i, m) in gpu.measurements.iter().enumerate() {
            record.push(i as u8 + 1);
            record.push(report::DMTF_MEASUREMENT_SPEC);
            record.extend_from_slice(&51u16.to_le_bytes());
            record.push(0x01);
            record.extend_from_slice(&48u16.to_le_bytes());
            record.extend_from_slice(m);
        }
        let mut driver = gpu.driver_version.as_bytes().to_vec();
        driver.push(0);
        let nvdec = if gpu.nvdec0_disabled {
            report::NVDEC_DISABLED
        } else {
            report::NVDEC_ENABLED
        };
        let fields: Vec<(u16, Vec<u8>)> = vec![
            (opaque_type::VBIOS_VERSION, vbios.to_vec()),
            (opaque_type::CHIP_SKU, b"882\0\0\0\0\0\0".to_vec()),
            (opaque_type::PROJECT, b"1010\0".to_vec()),
            (opaque_type::PROJECT_SKU, b"0200\0".to_vec()),
            (opaque_type::DRIVER_VERSION, driver),
            (opaque_type::NVDEC0_STATUS, vec![nvdec]),
            (opaque_type::FWID, gpu.fwid().to_vec()),
        ];
        let mut opaque = Vec::new();
        for (ty, v) in fields {
            opaque.extend_from_slice(&ty.to_le_bytes());
            opaque.extend_from_slice(&(v.len() as u16).to_le_bytes());
            opaque.extend_from_slice(&v);
        }
        let mut out = vec![
            report::SPDM_VERSION_11,
            report::GET_MEASUREMENTS,
            0x01,
            0xFF,
        ];
        out.extend_from_slice(nonce);
        out.push(0x00);
        out.extend_from_slice(&[report::SPDM_VERSION_11, report::MEASUREMENTS, 0x00, 0x00]);
        out.push(gpu.measurements.len() as u8);
        out.extend_from_slice(&(record.len() as u32).to_le_bytes()[..3]);
        out.extend_from_slice(&record);
        let response_nonce: [u8; 32] = Sha384::digest([&self.seed[..], nonce].concat())[..32]
            .try_into()
            .map_err(enc)?;
        out.extend_from_slice(&response_nonce);
        out.extend_from_slice(&(opaque.len() as u16).to_le_bytes());
        out.extend_from_slice(&opaque);
        let sig: Signature = leaf_key.sign(&out);
        out.extend_from_slice(&sig.to_bytes());
        Ok((out, pem))
    }
}

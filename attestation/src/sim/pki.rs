//! The simulated PCK/TCB certificate hierarchy, modelled on Intel's SGX/TDX PKI.
//!
//! Shapes follow Intel's certificates (see `shared/testdata/tdx`): ECDSA P-256 / SHA-256
//! throughout; CAs with critical KeyUsage keyCertSign|cRLSign and critical BasicConstraints
//! (root pathlen 1, platform CA pathlen 0); end entities with critical KeyUsage
//! digitalSignature|nonRepudiation and BasicConstraints CA:FALSE; no extended key usage (webpki,
//! as dcap-qvl uses it, then accepts them for its `server_auth` usage check); the PCK leaf
//! carries Intel's non-critical SGX extension (OID 1.2.840.113741.1.13.1). Names say
//! "(NOT INTEL)" so that no one mistakes them for Intel's.
//!
//! Trust boundary: this builds evidence infrastructure for a simulation; it validates
//! nothing. Whatever these certificates say, only a policy naming the simulated root trusts it.

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName,
    DnType, IsCa, Issuer, KeyIdMethod, KeyUsagePurpose, SerialNumber,
};
use time::OffsetDateTime;

use super::keys::{derive_bytes, SimKey};
use super::{SimError, SimPlatformParams, SIM_CERT_NOT_AFTER, SIM_CERT_NOT_BEFORE};

/// Common name of the simulated root CA.
pub(crate) const ROOT_CN: &str = "Cocoon Simulated TDX Root CA (NOT INTEL)";
/// Common name of the simulated PCK platform CA. It contains "Platform", which dcap-qvl uses to
/// classify the PCK leaf as issued by a Platform CA.
pub(crate) const PLATFORM_CA_CN: &str = "Cocoon Simulated PCK Platform CA (NOT INTEL)";
pub(crate) const PCK_CN: &str = "Cocoon Simulated PCK Certificate (NOT INTEL)";
pub(crate) const TCB_SIGNING_CN: &str = "Cocoon Simulated TCB Signing (NOT INTEL)";
const ORGANIZATION: &str = "Cocoon simulated TDX platform (NOT INTEL)";

/// Intel SGX extension OID arcs: 1.2.840.113741.1.13.1.
const SGX_EXT: &[u64] = &[1, 2, 840, 113_741, 1, 13, 1];

/// A certificate with its encodings.
#[derive(Clone, Debug)]
pub(crate) struct SimCert {
    der: Vec<u8>,
    pem: String,
}

impl SimCert {
    pub(crate) fn der(&self) -> &[u8] {
        &self.der
    }

    pub(crate) fn pem(&self) -> &str {
        &self.pem
    }

    fn from_rcgen(cert: &rcgen::Certificate) -> Self {
        Self {
            der: cert.der().to_vec(),
            pem: cert.pem(),
        }
    }
}

/// Keys and certificates of the simulated hierarchy.
#[derive(Debug)]
pub(crate) struct SimPki {
    root_key: SimKey,
    root_params: CertificateParams,
    platform_ca_key: SimKey,
    platform_ca_params: CertificateParams,
    pub(crate) pck_key: SimKey,
    pub(crate) tcb_key: SimKey,
    pub(crate) root: SimCert,
    pub(crate) platform_ca: SimCert,
    pub(crate) pck: SimCert,
    pub(crate) tcb_signing: SimCert,
}

/// Which CA signs a CRL.
#[derive(Clone, Copy, Debug)]
pub(crate) enum CrlIssuer {
    Root,
    PlatformCa,
}

impl SimPki {
    pub(crate) fn build(seed: &[u8; 32], params: &SimPlatformParams) -> Result<Self, SimError> {
        let root_key = SimKey::derive(seed, "root ca key")?;
        let platform_ca_key = SimKey::derive(seed, "pck platform ca key")?;
        let pck_key = SimKey::derive(seed, "pck key")?;
        let tcb_key = SimKey::derive(seed, "tcb signing key")?;

        let root_params = ca_params(seed, ROOT_CN, "root ca", 1)?;
        let root_cert =
            root_params
                .self_signed(&root_key)
                .map_err(|source| SimError::Certificate {
                    what: "root ca certificate",
                    source,
                })?;
        let root_issuer = Issuer::from_params(&root_params, &root_key);

        let platform_ca_params = ca_params(seed, PLATFORM_CA_CN, "pck platform ca", 0)?;
        let platform_ca_cert = platform_ca_params
            .signed_by(&platform_ca_key, &root_issuer)
            .map_err(|source| SimError::Certificate {
                what: "pck platform ca certificate",
                source,
            })?;

        let tcb_params = end_entity_params(seed, TCB_SIGNING_CN, "tcb signing", Vec::new())?;
        let tcb_cert = tcb_params
            .signed_by(&tcb_key, &root_issuer)
            .map_err(|source| SimError::Certificate {
                what: "tcb signing certificate",
                source,
            })?;

        let sgx_ext =
            rcgen::CustomExtension::from_oid_content(SGX_EXT, sgx_extension(seed, params));
        let pck_params = end_entity_params(seed, PCK_CN, "pck", vec![sgx_ext])?;
        let platform_issuer = Issuer::from_params(&platform_ca_params, &platform_ca_key);
        let pck_cert = pck_params
            .signed_by(&pck_key, &platform_issuer)
            .map_err(|source| SimError::Certificate {
                what: "pck certificate",
                source,
            })?;

        Ok(Self {
            root: SimCert::from_rcgen(&root_cert),
            platform_ca: SimCert::from_rcgen(&platform_ca_cert),
            pck: SimCert::from_rcgen(&pck_cert),
            tcb_signing: SimCert::from_rcgen(&tcb_cert),
            root_key,
            root_params,
            platform_ca_key,
            platform_ca_params,
            pck_key,
            tcb_key,
        })
    }

    /// PEM chain leaf → platform CA → root, as carried in certification data type 5.
    pub(crate) fn pck_chain_pem(&self) -> String {
        [self.pck.pem(), self.platform_ca.pem(), self.root.pem()].concat()
    }

    /// PEM chain platform CA → root (the PCK CRL issuer chain).
    pub(crate) fn pck_crl_issuer_chain_pem(&self) -> String {
        [self.platform_ca.pem(), self.root.pem()].concat()
    }

    /// PEM chain TCB signing → root (TCB info and QE identity issuer chain).
    pub(crate) fn tcb_issuer_chain_pem(&self) -> String {
        [self.tcb_signing.pem(), self.root.pem()].concat()
    }

    /// An empty CRL (DER) signed by `issuer`, valid from `this_update` to `next_update`.
    pub(crate) fn crl(
        &self,
        issuer: CrlIssuer,
        this_update: u64,
        next_update: u64,
    ) -> Result<Vec<u8>, SimError> {
        let params = CertificateRevocationListParams {
            this_update: datetime(this_update, "crl thisUpdate")?,
            next_update: datetime(next_update, "crl nextUpdate")?,
            crl_number: SerialNumber::from_slice(&[1]),
            issuing_distribution_point: None,
            revoked_certs: Vec::new(),
            key_identifier_method: KeyIdMethod::Sha256,
        };
        let (what, crl) = match issuer {
            CrlIssuer::Root => (
                "root ca crl",
                params.signed_by(&Issuer::from_params(&self.root_params, &self.root_key)),
            ),
            CrlIssuer::PlatformCa => (
                "pck crl",
                params.signed_by(&Issuer::from_params(
                    &self.platform_ca_params,
                    &self.platform_ca_key,
                )),
            ),
        };
        let crl = crl.map_err(|source| SimError::Certificate { what, source })?;
        Ok(crl.der().to_vec())
    }
}

/// Converts Unix seconds into the `time` type rcgen takes.
pub(crate) fn datetime(secs: u64, what: &'static str) -> Result<OffsetDateTime, SimError> {
    i64::try_from(secs)
        .ok()
        .and_then(|s| OffsetDateTime::from_unix_timestamp(s).ok())
        .ok_or(SimError::TimeOutOfRange { what, secs })
}

fn distinguished_name(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn.push(DnType::OrganizationName, ORGANIZATION);
    dn
}

/// A positive 16-byte serial number derived from the seed.
fn serial(seed: &[u8; 32], label: &str) -> SerialNumber {
    let mut bytes: [u8; 16] = derive_bytes(seed, &format!("serial/{label}"));
    bytes[0] = (bytes[0] & 0x7f) | 0x01;
    SerialNumber::from_slice(&bytes)
}

fn base_params(seed: &[u8; 32], cn: &str, label: &str) -> Result<CertificateParams, SimError> {
    let mut params = CertificateParams::default();
    params.not_before = datetime(SIM_CERT_NOT_BEFORE, "certificate notBefore")?;
    params.not_after = datetime(SIM_CERT_NOT_AFTER, "certificate notAfter")?;
    params.serial_number = Some(serial(seed, label));
    params.distinguished_name = distinguished_name(cn);
    params.use_authority_key_identifier_extension = true;
    params.key_identifier_method = KeyIdMethod::Sha256;
    Ok(params)
}

fn ca_params(
    seed: &[u8; 32],
    cn: &str,
    label: &str,
    path_len: u8,
) -> Result<CertificateParams, SimError> {
    let mut params = base_params(seed, cn, label)?;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(path_len));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    Ok(params)
}

fn end_entity_params(
    seed: &[u8; 32],
    cn: &str,
    label: &str,
    custom_extensions: Vec<rcgen::CustomExtension>,
) -> Result<CertificateParams, SimError> {
    let mut params = base_params(seed, cn, label)?;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::ContentCommitment,
    ];
    params.custom_extensions = custom_extensions;
    Ok(params)
}

/// The value (DER) of Intel's SGX extension in a PCK certificate issued by a Platform CA:
/// PPID, TCB (16 component SVNs, PCESVN, CPUSVN), PCE-ID, FMSPC, SGX type (Scalable),
/// PlatformInstanceID and Configuration (dynamic platform, cached keys, SMT: all false, so
/// that the strictest dcap-qvl policy accepts the platform).
fn sgx_extension(seed: &[u8; 32], params: &SimPlatformParams) -> Vec<u8> {
    let ppid: [u8; 16] = derive_bytes(seed, "ppid");
    let platform_instance_id: [u8; 16] = derive_bytes(seed, "platform instance id");

    let mut tcb = Vec::new();
    for (i, svn) in (1u64..).zip(params.cpu_svn.iter()) {
        tcb.extend(entry(&[2, i], &der::integer(u64::from(*svn))));
    }
    tcb.extend(entry(&[2, 17], &der::integer(u64::from(params.pce_svn))));
    tcb.extend(entry(&[2, 18], &der::octet_string(&params.cpu_svn)));

    let mut configuration = Vec::new();
    for arc in 1..=3 {
        configuration.extend(entry(&[7, arc], &der::boolean(false)));
    }

    let mut body = Vec::new();
    body.extend(entry(&[1], &der::octet_string(&ppid)));
    body.extend(entry(&[2], &der::sequence(&tcb)));
    body.extend(entry(&[3], &der::octet_string(&params.pce_id)));
    body.extend(entry(&[4], &der::octet_string(&params.fmspc)));
    body.extend(entry(&[5], &der::enumerated(1)));
    body.extend(entry(&[6], &der::octet_string(&platform_instance_id)));
    body.extend(entry(&[7], &der::sequence(&configuration)));
    der::sequence(&body)
}

/// `SEQUENCE { OID 1.2.840.113741.1.13.1.<sub>, value }`.
fn entry(sub: &[u64], value: &[u8]) -> Vec<u8> {
    let arcs: Vec<u64> = SGX_EXT.iter().chain(sub).copied().collect();
    der::sequence(&[der::oid(&arcs), value.to_vec()].concat())
}

/// Just enough DER encoding for the SGX extension.
mod der {
    pub(super) fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        let len = content.len();
        if len < 0x80 {
            out.push(len as u8);
        } else {
            let bytes = len.to_be_bytes();
            let skip = bytes.iter().take_while(|b| **b == 0).count();
            let significant = &bytes[skip..];
            out.push(0x80 | significant.len() as u8);
            out.extend_from_slice(significant);
        }
        out.extend_from_slice(content);
        out
    }

    pub(super) fn sequence(content: &[u8]) -> Vec<u8> {
        tlv(0x30, content)
    }

    pub(super) fn octet_string(content: &[u8]) -> Vec<u8> {
        tlv(0x04, content)
    }

    pub(super) fn boolean(value: bool) -> Vec<u8> {
        tlv(0x01, &[if value { 0xff } else { 0x00 }])
    }

    /// Minimal two's-complement content of a non-negative integer.
    fn unsigned_content(value: u64) -> Vec<u8> {
        let bytes = value.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count().min(7);
        let mut content = bytes[skip..].to_vec();
        if content.first().is_some_and(|b| b & 0x80 != 0) {
            content.insert(0, 0);
        }
        content
    }

    pub(super) fn integer(value: u64) -> Vec<u8> {
        tlv(0x02, &unsigned_content(value))
    }

    pub(super) fn enumerated(value: u64) -> Vec<u8> {
        tlv(0x0a, &unsigned_content(value))
    }

    /// OBJECT IDENTIFIER from its arcs (the first two arcs must be 0..=2 and 0..=39).
    pub(super) fn oid(arcs: &[u64]) -> Vec<u8> {
        let mut content = Vec::new();
        let (first, second) = match arcs {
            [a, b, ..] => (*a, *b),
            [a] => (*a, 0),
            [] => (0, 0),
        };
        base128(first * 40 + second, &mut content);
        for arc in arcs.iter().skip(2) {
            base128(*arc, &mut content);
        }
        tlv(0x06, &content)
    }

    fn base128(mut value: u64, out: &mut Vec<u8>) {
        let mut groups = vec![(value & 0x7f) as u8];
        value >>= 7;
        while value > 0 {
            groups.push((value & 0x7f) as u8 | 0x80);
            value >>= 7;
        }
        out.extend(groups.iter().rev());
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn encodes_known_values() {
            assert_eq!(
                oid(&[1, 2, 840, 113_741, 1, 13, 1]),
                [0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf8, 0x4d, 0x01, 0x0d, 0x01]
            );
            assert_eq!(integer(0), [0x02, 0x01, 0x00]);
            assert_eq!(integer(0x0b), [0x02, 0x01, 0x0b]);
            assert_eq!(integer(0x80), [0x02, 0x02, 0x00, 0x80]);
            assert_eq!(integer(0x7fff), [0x02, 0x02, 0x7f, 0xff]);
            assert_eq!(enumerated(1), [0x0a, 0x01, 0x01]);
            let long = tlv(0x04, &[0u8; 300]);
            assert_eq!(&long[..4], &[0x04, 0x82, 0x01, 0x2c]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dcap_qvl_parses_the_sgx_extension() {
        let params = SimPlatformParams::default();
        let pki = SimPki::build(&[5u8; 32], &params).unwrap();
        let ext = dcap_qvl::intel::parse_pck_extension(pki.pck.der()).unwrap();
        assert_eq!(ext.fmspc, params.fmspc);
        assert_eq!(ext.cpu_svn, params.cpu_svn);
        assert_eq!(ext.pce_svn, params.pce_svn);
        assert_eq!(ext.pce_id, params.pce_id);
        assert_eq!(ext.sgx_type, 1);
        assert_eq!(ext.ppid.len(), 16);
        assert_eq!(ext.platform_instance_id.map(|v| v.len()), Some(16));
        assert_eq!(ext.smt_enabled, Some(false));
        assert_eq!(ext.cached_keys, Some(false));
        assert_eq!(ext.dynamic_platform, Some(false));
        assert_eq!(
            dcap_qvl::intel::pck_ca(pki.pck.der()).unwrap(),
            dcap_qvl::config::PckCa::Platform
        );
    }

    #[test]
    fn out_of_range_times_are_errors() {
        assert!(datetime(u64::MAX, "t").is_err());
        assert!(datetime(1 << 40, "t").is_err());
        assert!(datetime(0, "t").is_ok());
    }
}

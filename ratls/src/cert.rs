//! Issuing RA-TLS certificates, and serving them to rustls.
//!
//! [`issue`] generates an Ed25519 key, asks the TEE for a quote over the report_data that
//! binds the key and the claims ([`crate::claims::report_data`]), and self-signs a short-lived
//! X.509 certificate carrying quote, claims and optionally collateral in critical extensions
//! ([`crate::oids`]). [`CertResolver`] hands the current certificate to rustls on both sides of
//! a connection and can be renewed in place before the certificate expires.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use attestation::{GpuSource, TeeDevice};
use measurements::gpu::bundle;
use measurements::Collateral;
use rcgen::{CertificateParams, CustomExtension, DnType, KeyPair, PublicKeyData};
use rustls::pki_types::{CertificateDer, PrivatePkcs8KeyDer};
use rustls::sign::CertifiedKey;

use crate::claims::{report_data, Claims};
use crate::evidence::{
    der_octet_string, MAX_CERT_LEN, MAX_CLAIMS_EXT_LEN, MAX_COLLATERAL_LEN, MAX_GPU_EVIDENCE_LEN,
    MAX_QUOTE_LEN,
};
use crate::{oids, RatlsError};

/// Default certificate lifetime: 6 hours.
pub const DEFAULT_LIFETIME: Duration = Duration::from_secs(6 * 3600);

/// notBefore is set this many seconds before `now`, so peers whose clocks run slightly behind
/// accept a fresh certificate.
pub const CLOCK_SKEW_ALLOWANCE_SECS: u64 = 300;

/// A freshly issued certificate and its key.
#[derive(Clone)]
pub struct IssuedCert {
    /// The certificate (DER).
    pub cert_der: Vec<u8>,
    /// The Ed25519 private key, PKCS#8 DER. Never logged; overwritten with zeros on drop
    /// (copies that rustls and ring make inside their own key types are theirs to manage).
    pub key_pkcs8_der: zeroize::Zeroizing<Vec<u8>>,
    /// DER SubjectPublicKeyInfo of the key.
    pub spki_der: Vec<u8>,
    /// The report_data the quote carries.
    pub report_data: [u8; 64],
    /// The claims the certificate carries (with the GPU evidence hash, if any); `None` for a
    /// certificate without claims (an account certificate) or [`assemble`]d from bytes that
    /// are not canonical claims (tests).
    pub claims: Option<Claims>,
    /// Validity, Unix seconds.
    pub not_before: u64,
    pub not_after: u64,
}

/// The private key field zeroizes itself on drop.
impl zeroize::ZeroizeOnDrop for IssuedCert {}

impl std::fmt::Debug for IssuedCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedCert")
            .field("cert_len", &self.cert_der.len())
            .field("spki", &hex::encode(&self.spki_der))
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl IssuedCert {
    /// The certificate and a rustls signing key for it.
    pub fn certified_key(&self) -> Result<Arc<CertifiedKey>, RatlsError> {
        let der = PrivatePkcs8KeyDer::from(self.key_pkcs8_der.to_vec());
        let key = rustls::crypto::ring::sign::any_eddsa_type(&der)
            .map_err(|e| RatlsError::Key(e.to_string()))?;
        Ok(Arc::new(CertifiedKey::new(
            vec![CertificateDer::from(self.cert_der.clone())],
            key,
        )))
    }
}

/// A fresh Ed25519 key for one certificate.
#[derive(Debug)]
pub struct CertKey {
    key: KeyPair,
}

impl CertKey {
    /// Generates a key (ring's system RNG).
    pub fn generate() -> Result<Self, RatlsError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ED25519)
            .map_err(|e| RatlsError::Issue(format!("ed25519 key generation: {e}")))?;
        Ok(Self { key })
    }

    /// The key's DER SubjectPublicKeyInfo, as the certificate will carry it.
    pub fn spki_der(&self) -> Vec<u8> {
        self.key.subject_public_key_info()
    }

    /// The report_data binding this key to `claims_bytes`.
    pub fn report_data(&self, claims_bytes: &[u8]) -> [u8; 64] {
        report_data(&self.spki_der(), claims_bytes)
    }
}

/// Issues a certificate: fresh key, quote from `tee` over the binding report_data, claims and
/// (optionally) collateral in critical extensions. Valid from `now - CLOCK_SKEW_ALLOWANCE_SECS`
/// to `now + lifetime`.
pub fn issue(
    tee: &dyn TeeDevice,
    claims: &Claims,
    collateral: Option<&Collateral>,
    now: u64,
    lifetime: Duration,
) -> Result<IssuedCert, RatlsError> {
    issue_with_gpu(tee, claims, collateral, None, now, lifetime)
}

/// [`issue`], with the evidence of `gpu`'s GPUs bound to the certificate (crate docs):
/// after the key is generated, `gpu` answers the nonce derived from its SPKI; the bundle's
/// SHA-256 goes into the claims ([`crate::claims::GPU_EVIDENCE_CLAIM`], replacing any entry of
/// that name) before the quote is taken, and the bundle into its own extension.
pub fn issue_with_gpu(
    tee: &dyn TeeDevice,
    claims: &Claims,
    collateral: Option<&Collateral>,
    gpu: Option<&dyn GpuSource>,
    now: u64,
    lifetime: Duration,
) -> Result<IssuedCert, RatlsError> {
    let key = CertKey::generate()?;
    let mut claims = claims.clone();
    claims.extra.remove(crate::claims::GPU_EVIDENCE_CLAIM);
    let bundle = match gpu {
        Some(source) => {
            let evidence = source.evidence(&bundle::evidence_nonce(&key.spki_der()))?;
            let bytes = bundle::GpuBundle::from_evidence(&evidence)
                .and_then(|b| b.encode())
                .map_err(|e| RatlsError::Issue(format!("gpu evidence bundle: {e}")))?;
            claims.extra.insert(
                crate::claims::GPU_EVIDENCE_CLAIM.into(),
                bundle::digest_hex(&bytes),
            );
            Some(bytes)
        }
        None => None,
    };
    let claims_bytes = claims
        .to_canonical_json()
        .map_err(|e| RatlsError::Issue(e.to_string()))?;
    let quote = tee.quote(&key.report_data(&claims_bytes))?;
    let collateral_json = match collateral {
        Some(c) => {
            let json = c.to_json();
            if json.is_empty() {
                return Err(RatlsError::Issue("collateral json encoding failed".into()));
            }
            Some(json)
        }
        None => None,
    };
    assemble_with_gpu(
        &key,
        &quote,
        &claims_bytes,
        collateral_json.as_deref(),
        bundle.as_deref(),
        now,
        lifetime,
    )
}

/// Builds and self-signs a certificate from parts that were already obtained. The claims bytes
/// are taken as given; [`issue`] is the normal entry point. Exposed for services that obtain
/// quotes asynchronously, and for tests that build deliberately wrong certificates. A key
/// should back one certificate only (renewal generates a new one).
pub fn assemble(
    key: &CertKey,
    quote: &[u8],
    claims_bytes: &[u8],
    collateral_json: Option<&[u8]>,
    now: u64,
    lifetime: Duration,
) -> Result<IssuedCert, RatlsError> {
    assemble_with_gpu(
        key,
        quote,
        claims_bytes,
        collateral_json,
        None,
        now,
        lifetime,
    )
}

/// [`assemble`] with a GPU evidence bundle in its extension (taken as given: the claims must
/// already name its hash, see [`issue_with_gpu`]).
pub fn assemble_with_gpu(
    key: &CertKey,
    quote: &[u8],
    claims_bytes: &[u8],
    collateral_json: Option<&[u8]>,
    gpu_bundle: Option<&[u8]>,
    now: u64,
    lifetime: Duration,
) -> Result<IssuedCert, RatlsError> {
    let too_large = |what: &str, len: usize, max: usize| {
        RatlsError::Issue(format!(
            "{what} is {len} bytes, more than the maximum {max}"
        ))
    };
    if quote.len() > MAX_QUOTE_LEN {
        return Err(too_large("quote", quote.len(), MAX_QUOTE_LEN));
    }
    if claims_bytes.len() > MAX_CLAIMS_EXT_LEN {
        return Err(too_large("claims", claims_bytes.len(), MAX_CLAIMS_EXT_LEN));
    }
    if lifetime.as_secs() == 0 {
        return Err(RatlsError::Issue(
            "lifetime must be at least one second".into(),
        ));
    }
    let not_before = now.saturating_sub(CLOCK_SKEW_ALLOWANCE_SECS);
    let not_after = now
        .checked_add(lifetime.as_secs())
        .ok_or_else(|| RatlsError::Issue(format!("lifetime {lifetime:?} overflows")))?;

    let mut params = CertificateParams::default();
    params.not_before = datetime(not_before)?;
    params.not_after = datetime(not_after)?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, "cocoon ra-tls");
    let mut ext = |oid: &[u64], content: &[u8]| {
        let mut e = CustomExtension::from_oid_content(oid, der_octet_string(content));
        e.set_criticality(true);
        params.custom_extensions.push(e);
    };
    ext(oids::QUOTE, quote);
    ext(oids::CLAIMS, claims_bytes);
    if let Some(json) = collateral_json {
        if json.len() > MAX_COLLATERAL_LEN {
            return Err(too_large("collateral", json.len(), MAX_COLLATERAL_LEN));
        }
        ext(oids::COLLATERAL, json);
    }
    if let Some(b) = gpu_bundle {
        if b.len() > MAX_GPU_EVIDENCE_LEN {
            return Err(too_large("gpu evidence", b.len(), MAX_GPU_EVIDENCE_LEN));
        }
        ext(oids::GPU_EVIDENCE, b);
    }
    let cert = params
        .self_signed(&key.key)
        .map_err(|e| RatlsError::Issue(e.to_string()))?;
    let cert_der = cert.der().to_vec();
    if cert_der.len() > MAX_CERT_LEN {
        return Err(too_large("certificate", cert_der.len(), MAX_CERT_LEN));
    }
    let spki_der = key.spki_der();
    Ok(IssuedCert {
        cert_der,
        key_pkcs8_der: zeroize::Zeroizing::new(key.key.serialize_der()),
        report_data: report_data(&spki_der, claims_bytes),
        claims: Claims::from_canonical_json(claims_bytes).ok(),
        spki_der,
        not_before,
        not_after,
    })
}

fn datetime(secs: u64) -> Result<time::OffsetDateTime, RatlsError> {
    i64::try_from(secs)
        .ok()
        .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
        .ok_or_else(|| RatlsError::Issue(format!("unix time {secs} is out of range")))
}

/// Serves the current certificate to rustls (server and client side) and lets the owner swap
/// in a renewed one; connections already established keep the certificate they used.
#[derive(Debug)]
pub struct CertResolver {
    current: RwLock<Current>,
}

#[derive(Debug, Clone)]
struct Current {
    key: Arc<CertifiedKey>,
    not_after: u64,
}

impl CertResolver {
    /// A resolver serving `issued`.
    pub fn new(issued: &IssuedCert) -> Result<Self, RatlsError> {
        Ok(Self {
            current: RwLock::new(Current {
                key: issued.certified_key()?,
                not_after: issued.not_after,
            }),
        })
    }

    /// Replaces the served certificate.
    pub fn renew(&self, issued: &IssuedCert) -> Result<(), RatlsError> {
        let next = Current {
            key: issued.certified_key()?,
            not_after: issued.not_after,
        };
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = next;
        Ok(())
    }

    fn get(&self) -> Current {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The certificate currently served.
    pub fn current(&self) -> Arc<CertifiedKey> {
        self.get().key
    }

    /// notAfter of the certificate currently served.
    pub fn not_after(&self) -> u64 {
        self.get().not_after
    }

    /// Whether the served certificate expires within `margin` seconds of `now`.
    pub fn needs_renewal(&self, now: u64, margin: u64) -> bool {
        now.saturating_add(margin) >= self.not_after()
    }
}

impl rustls::server::ResolvesServerCert for CertResolver {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

impl rustls::client::ResolvesClientCert for CertResolver {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

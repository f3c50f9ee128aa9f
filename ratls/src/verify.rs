//! Verifying a peer's RA-TLS certificate: structure, channel binding, evidence, policy.
//!
//! [`verify_peer`] is the whole check, with `now` passed in:
//!
//! 1. [`crate::evidence::parse_cert_at`]: well-formed, self-signed Ed25519, valid at `now`.
//! 2. The report_data binding: the quote must carry
//!    `SHA-512("cocoon/ratls/v1\0" || SPKI || SHA-256(claims))` of *this* certificate
//!    ([`measurements::Rejection::ReportDataMismatch`] otherwise). Checked on the parsed quote
//!    before any signature work (cheap rejection), and again on the verified evidence.
//! 3. Collateral: the certificate's embedded collateral or the caller's [`CollateralSource`],
//!    whichever was issued later (untrusted bytes are fine: all of it chains to a root the
//!    policy pins; the policy's maximum collateral age bounds how old it may be).
//! 4. [`measurements::verify::verify_evidence`] (PCK chain, CRLs, TCB info, QE identity,
//!    signatures) — skipped on an [`AttestationCache`] hit — then
//!    [`measurements::Policy::check`] on every use.
//!
//! 5. When the policy requires GPU evidence (`policy.gpu`): the certificate's GPU bundle,
//!    named by its quoted claims and answering the nonce of its key, verified under that
//!    policy ([`measurements::gpu::bundle`]); a failure is [`measurements::Rejection::Gpu`]
//!    naming the GPU reason.
//!
//! Every rejection of the evidence is a [`RatlsError::Attestation`] carrying the named
//! [`measurements::Rejection`].

use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, RwLock};

use measurements::verify::{verify_evidence, Evidence};
use measurements::{Collateral, ImageHash, ParsedQuote, Policy, Rejection};

use crate::cache::{sha256, AttestationCache};
use crate::clock::Clock;
use crate::evidence::{parse_cert_at, PeerEvidence};
use crate::{Claims, RatlsError, Role};

pub use attestation::{CollateralSource, StaticCollateral};

/// A peer whose certificate and evidence passed.
#[derive(Clone, Debug)]
pub struct VerifiedPeer {
    /// What the certificate carried.
    pub evidence: Arc<PeerEvidence>,
    /// The verified quote (registers, TCB status, root, validity).
    pub attestation: Evidence,
    /// Whether the evidence came from the attestation cache.
    pub cache_hit: bool,
    /// The peer's GPUs, verified when the policy requires GPU evidence (else empty).
    pub gpus: Vec<measurements::gpu::VerifiedGpu>,
}

impl VerifiedPeer {
    /// The peer's image hash.
    pub fn image_hash(&self) -> ImageHash {
        self.attestation.image_hash()
    }

    /// The peer's claims (bound into its quote).
    pub fn claims(&self) -> &Claims {
        &self.evidence.claims
    }
}

/// Verifies a peer certificate at `now` against `policy` (see the module docs).
pub fn verify_peer(
    cert_der: &[u8],
    now: u64,
    policy: &Policy,
    collateral_source: Option<&dyn CollateralSource>,
    cache: Option<&AttestationCache>,
) -> Result<VerifiedPeer, RatlsError> {
    let peer = parse_cert_at(cert_der, now)?;
    verify_parsed(peer, now, policy, collateral_source, cache)
}

/// [`verify_peer`] for an already parsed certificate (the validity window is not rechecked).
pub fn verify_parsed(
    peer: PeerEvidence,
    now: u64,
    policy: &Policy,
    collateral_source: Option<&dyn CollateralSource>,
    cache: Option<&AttestationCache>,
) -> Result<VerifiedPeer, RatlsError> {
    let digests = CertDigests::of(&peer, [0; 32])?;
    verify_with_digests(
        Arc::new(peer),
        &digests,
        now,
        policy,
        collateral_source,
        cache,
        None,
    )
}

/// What verification derives from a certificate's bytes alone, computed once per certificate.
#[derive(Debug)]
struct CertDigests {
    /// The report_data this certificate's key and claims require.
    expected_report_data: [u8; 64],
    /// SHA-256 of the quote (the attestation cache key).
    quote: [u8; 32],
    /// SHA-256 of the embedded collateral JSON, if any.
    collateral: Option<[u8; 32]>,
    /// SHA-256 of the certificate's bytes (the GPU memo key).
    cert: [u8; 32],
}

impl CertDigests {
    fn of(peer: &PeerEvidence, cert: [u8; 32]) -> Result<Self, RatlsError> {
        let expected_report_data = peer.expected_report_data();
        // Cheap rejection before signature work; the unverified value is only used to reject.
        let parsed = ParsedQuote::parse(&peer.quote).map_err(Rejection::from)?;
        check_binding(&parsed.report.report_data, &expected_report_data)?;
        Ok(Self {
            expected_report_data,
            quote: sha256(&peer.quote),
            collateral: peer.collateral.as_ref().map(|(json, _)| sha256(json)),
            cert,
        })
    }
}

fn verify_with_digests(
    peer: Arc<PeerEvidence>,
    digests: &CertDigests,
    now: u64,
    policy: &Policy,
    collateral_source: Option<&dyn CollateralSource>,
    cache: Option<&AttestationCache>,
    gpu_memo: Option<(&GpuMemo, &Arc<Policy>)>,
) -> Result<VerifiedPeer, RatlsError> {
    let expected = &digests.expected_report_data;
    let (attestation, cache_hit) = {
        let (collateral, collateral_hash) = choose_collateral(&peer, digests, collateral_source)?;
        match cache.and_then(|c| c.get(&digests.quote, Some(&collateral_hash), now)) {
            Some(ev) => (ev, true),
            None => {
                let ev = verify_evidence(&peer.quote, &collateral, now, &policy.roots)?;
                if let Some(c) = cache {
                    c.insert(digests.quote, collateral_hash, ev.clone(), now);
                }
                (ev, false)
            }
        }
    };
    check_binding(&attestation.report.report_data, expected)?;
    apply_policy(policy, &attestation, expected, now)?;
    let gpus = match (&policy.gpu, gpu_memo) {
        (Some(gpu_policy), Some((memo, arc))) => {
            memo.check(&peer, digests.cert, now, arc, gpu_policy)?
        }
        (Some(gpu_policy), None) => check_gpu(&peer, now, gpu_policy)?,
        (None, _) => Vec::new(),
    };
    Ok(VerifiedPeer {
        evidence: peer,
        attestation,
        cache_hit,
        gpus,
    })
}

/// The collateral to verify a peer's quote against, and its hash (the cache key's second
/// half): the certificate's embedded collateral or the verifier's own source, whichever was
/// issued later. A peer cannot keep a verifier on old collateral that its own source has
/// superseded (a TCB recovery shows up there first); a source that fails is not fatal while the
/// certificate embeds collateral.
fn choose_collateral<'a>(
    peer: &'a PeerEvidence,
    digests: &CertDigests,
    source: Option<&dyn CollateralSource>,
) -> Result<(Cow<'a, Collateral>, [u8; 32]), RatlsError> {
    let embedded = match (&peer.collateral, digests.collateral) {
        (Some((_, c)), Some(h)) => Some((c, h)),
        _ => None,
    };
    let from_source = match source.map(|s| s.collateral_for(&peer.quote)) {
        Some(Ok(c)) => Some(c),
        Some(Err(e)) if embedded.is_none() => return Err(RatlsError::CollateralUnavailable(e)),
        Some(Err(_)) | None => None,
    };
    match (embedded, from_source) {
        (Some((e, _)), Some(s)) if s.issued_at() > e.issued_at() => {
            let h = sha256(&s.to_json());
            Ok((Cow::Owned(s), h))
        }
        (Some((e, h)), _) => Ok((Cow::Borrowed(e), h)),
        (None, Some(s)) => {
            let h = sha256(&s.to_json());
            Ok((Cow::Owned(s), h))
        }
        (None, None) => Err(RatlsError::CollateralUnavailable(
            "certificate embeds none and no collateral source is configured".into(),
        )),
    }
}

/// The GPU evidence the certificate carries, bound to its key and claims, verified under
/// `policy` at `now` ([`measurements::gpu::bundle::verify_certificate_bundle`]); a
/// [`PeerVerifier`] with a cache memoizes the verdict ([`GpuMemo`]).
fn check_gpu(
    peer: &PeerEvidence,
    now: u64,
    policy: &measurements::gpu::GpuPolicy,
) -> Result<Vec<measurements::gpu::VerifiedGpu>, Rejection> {
    measurements::gpu::bundle::verify_certificate_bundle(
        peer.gpu_evidence.as_deref(),
        peer.claims
            .extra
            .get(crate::claims::GPU_EVIDENCE_CLAIM)
            .map(String::as_str),
        &peer.spki_der,
        now,
        policy,
    )
    .map_err(Rejection::Gpu)
}

fn check_binding(got: &[u8; 64], expected: &[u8; 64]) -> Result<(), Rejection> {
    if got != expected {
        return Err(Rejection::ReportDataMismatch {
            expected: hex::encode(expected),
            got: hex::encode(got),
        });
    }
    Ok(())
}

/// `policy.check`, with the policy's `required_report_data` (if it names one) replaced by the
/// certificate's binding: for RA-TLS the binding is the only meaningful value.
fn apply_policy(
    policy: &Policy,
    ev: &Evidence,
    expected: &[u8; 64],
    now: u64,
) -> Result<(), Rejection> {
    match policy.required_report_data {
        Some(r) if &r != expected => {
            let mut p = policy.clone();
            p.required_report_data = Some(*expected);
            p.check(ev, now)
        }
        _ => policy.check(ev, now),
    }
}

/// A verifier with its policy, clock, collateral source and cache; shared by the rustls
/// verifiers in [`crate::tls`], and usable directly after a handshake to read the peer's
/// verified evidence ([`PeerVerifier::peer_of`]).
#[derive(Debug)]
pub struct PeerVerifier {
    policy: RwLock<Arc<Policy>>,
    clock: Arc<dyn Clock>,
    source: Option<Arc<dyn CollateralSource>>,
    cache: Option<Arc<AttestationCache>>,
    allowed_roles: Option<BTreeSet<Role>>,
    /// Parsed certificates by SHA-256 of their DER, kept while a cache is in use: the same
    /// bytes always parse to the same result, so a repeat only rechecks what depends on time
    /// (validity window, collateral expiry, policy). Cleared when it reaches its capacity.
    parsed: Mutex<HashMap<[u8; 32], ParsedCert>>,
    /// GPU verdicts by certificate, kept while a cache is in use ([`GpuMemo`]).
    gpu_memo: GpuMemo,
}

/// GPU verdicts of certificates (SHA-256 of the DER), each with the policy it was reached
/// under and the window in which every chain certificate is valid. A repeat under the same
/// policy inside that window reuses the verdict: the GPU check costs five P-384 verifications
/// and five certificate decodings per GPU (about 6 ms per GPU here, docs/performance.md), and a
/// proxy re-verifies its peer after every handshake. Cleared when it reaches its capacity.
#[derive(Debug, Default)]
struct GpuMemo {
    entries: Mutex<HashMap<[u8; 32], GpuVerdict>>,
}

#[derive(Debug)]
struct GpuVerdict {
    policy: Arc<Policy>,
    gpus: Vec<measurements::gpu::VerifiedGpu>,
    valid: (u64, u64),
}

impl GpuMemo {
    fn check(
        &self,
        peer: &PeerEvidence,
        cert: [u8; 32],
        now: u64,
        policy: &Arc<Policy>,
        gpu_policy: &measurements::gpu::GpuPolicy,
    ) -> Result<Vec<measurements::gpu::VerifiedGpu>, Rejection> {
        let hit = self
            .entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&cert)
            .filter(|v| Arc::ptr_eq(&v.policy, policy) && (v.valid.0..=v.valid.1).contains(&now))
            .map(|v| v.gpus.clone());
        if let Some(gpus) = hit {
            return Ok(gpus);
        }
        let gpus = check_gpu(peer, now, gpu_policy)?;
        let valid = gpus.iter().fold((0u64, u64::MAX), |(from, until), g| {
            (
                from.max(g.chain_valid.0).max(g.ocsp_valid.0),
                until.min(g.chain_valid.1).min(g.ocsp_valid.1),
            )
        });
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= PARSED_CERTS_CAPACITY {
            entries.clear();
        }
        entries.insert(
            cert,
            GpuVerdict {
                policy: policy.clone(),
                gpus: gpus.clone(),
                valid,
            },
        );
        Ok(gpus)
    }
}

/// Capacity of the parsed-certificate memo.
const PARSED_CERTS_CAPACITY: usize = 1024;

type ParsedCert = (Arc<PeerEvidence>, Arc<CertDigests>);

impl PeerVerifier {
    /// A verifier with a default [`AttestationCache`] and no collateral source (peers must
    /// embed collateral).
    pub fn new(policy: Policy, clock: Arc<dyn Clock>) -> Self {
        Self {
            policy: RwLock::new(Arc::new(policy)),
            clock,
            source: None,
            cache: Some(Arc::new(AttestationCache::default())),
            allowed_roles: None,
            parsed: Mutex::new(HashMap::new()),
            gpu_memo: GpuMemo::default(),
        }
    }

    /// Uses `source` for certificates that embed no collateral.
    pub fn with_collateral_source(mut self, source: Arc<dyn CollateralSource>) -> Self {
        self.source = Some(source);
        self
    }

    /// Uses `cache` (which may be shared with other verifiers).
    pub fn with_cache(mut self, cache: Arc<AttestationCache>) -> Self {
        self.cache = Some(cache);
        self
    }

    /// Verifies every certificate fully, without a cache.
    pub fn without_cache(mut self) -> Self {
        self.cache = None;
        self
    }

    /// Accepts only peers claiming one of `roles`.
    pub fn with_roles(mut self, roles: impl IntoIterator<Item = Role>) -> Self {
        self.allowed_roles = Some(roles.into_iter().collect());
        self
    }

    /// Replaces the policy; applies to the next verification (also on cache hits).
    pub fn set_policy(&self, policy: Policy) {
        *self.policy.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(policy);
    }

    /// The current policy.
    pub fn policy(&self) -> Arc<Policy> {
        self.policy
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The cache, if any.
    pub fn cache(&self) -> Option<&Arc<AttestationCache>> {
        self.cache.as_ref()
    }

    /// The clock's current time.
    pub fn now(&self) -> u64 {
        self.clock.now()
    }

    /// Verifies `cert_der` at the clock's current time.
    pub fn verify(&self, cert_der: &[u8]) -> Result<VerifiedPeer, RatlsError> {
        self.verify_at(cert_der, self.clock.now())
    }

    /// Verifies `cert_der` at `now`.
    pub fn verify_at(&self, cert_der: &[u8], now: u64) -> Result<VerifiedPeer, RatlsError> {
        let (peer, digests) = self.parse_memoized(cert_der, now)?;
        if let Some(allowed) = &self.allowed_roles {
            if !allowed.contains(&peer.claims.role) {
                return Err(RatlsError::RoleNotAllowed {
                    got: peer.claims.role,
                    allowed: allowed
                        .iter()
                        .map(|r| r.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                });
            }
        }
        let policy = self.policy();
        let result = verify_with_digests(
            peer,
            &digests,
            now,
            &policy,
            self.source.as_deref(),
            self.cache.as_deref(),
            self.cache.is_some().then_some((&self.gpu_memo, &policy)),
        );
        if let Err(e) = &result {
            tracing::debug!(reason = %e, "ra-tls peer rejected");
        }
        result
    }

    /// Parses `cert_der` (valid at `now`), reusing an earlier parse of the same bytes when a
    /// cache is in use.
    fn parse_memoized(&self, cert_der: &[u8], now: u64) -> Result<ParsedCert, RatlsError> {
        let key = sha256(cert_der);
        if self.cache.is_none() {
            let peer = parse_cert_at(cert_der, now)?;
            let digests = CertDigests::of(&peer, key)?;
            return Ok((Arc::new(peer), Arc::new(digests)));
        }
        let memo = self
            .parsed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            .cloned();
        if let Some((peer, digests)) = memo {
            peer.check_validity(now)?;
            return Ok((peer, digests));
        }
        let peer = parse_cert_at(cert_der, now)?;
        let digests = CertDigests::of(&peer, key)?;
        let entry = (Arc::new(peer), Arc::new(digests));
        let mut parsed = self.parsed.lock().unwrap_or_else(|e| e.into_inner());
        if parsed.len() >= PARSED_CERTS_CAPACITY {
            parsed.clear();
        }
        parsed.insert(key, entry.clone());
        Ok(entry)
    }

    /// The verified evidence of the peer of an established connection (its end-entity
    /// certificate, verified again at the clock's time; normally a cache hit).
    pub fn peer_of(&self, conn: &rustls::CommonState) -> Result<VerifiedPeer, RatlsError> {
        let cert = conn
            .peer_certificates()
            .and_then(|c| c.first())
            .ok_or(RatlsError::NoPeerCertificate)?;
        self.verify(cert.as_ref())
    }
}

//! The `ratls_verify` fuzz target's input format and harness: a well-formed, correctly
//! self-signed RA-TLS certificate (issued by `ratls::cert::assemble`, the project's own
//! issuing code) around fuzzer-chosen claims, collateral JSON and quote bytes, verified by the
//! same [`PeerVerifier`] the rustls verifiers call, under a policy that trusts the simulated
//! root, at the fixed time [`NOW`].
//!
//! The self-signature is the only check an attacker cannot skip, and anyone can make it with
//! their own key, so everything after it must survive arbitrary bytes: that is what this
//! target exercises (claims parsing, collateral parsing, the report_data binding, dcap-qvl's
//! quote and collateral verification, the policy, the attestation cache).
//!
//! # Input format
//!
//! ```text
//! flags: u8          bits 0-1: quote mode (see QuoteMode), bit 2: embed collateral
//! claims_len: u16 LE, claims bytes
//! collateral_len: u16 LE, collateral JSON bytes
//! quote bytes: the rest
//! ```
//! A length larger than what remains takes what remains; missing bytes read as zero-length
//! parts. [`Input::encode`] writes the same format.

use std::sync::Arc;
use std::time::Duration;

use attestation::sim::{default_registers, SimPlatform};
use measurements::quote::{HEADER_LEN, V4_REPORT_DATA_OFFSET};
use measurements::{Policy, TdRegisters, TrustRoot};
use ratls::cert::{assemble, CertKey};
use ratls::{FixedClock, PeerVerifier, RatlsError, VerifiedPeer};

/// The fixed verification time: 2025-06-15T15:06:40Z.
pub const NOW: u64 = 1_750_000_000;
/// Lifetime of the certificates the harness issues.
pub const LIFETIME: Duration = Duration::from_secs(6 * 3600);
/// Seed of the simulated platform (the same as ratls's tests).
pub const PLATFORM_SEED: [u8; 32] = [42u8; 32];

/// How the harness turns the input's quote bytes into the certificate's quote.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuoteMode {
    /// The bytes as given. The report_data binding fails unless the fuzzer finds a SHA-512
    /// preimage, so this mostly reaches the quote parser before the binding check.
    Verbatim = 0,
    /// The bytes with report_data (v4 or v5 offset, by the version field) overwritten by the
    /// binding of this certificate: a fuzzed quote reaches dcap-qvl, whose quote signature
    /// check then fails (the quote's other steps, its PCK chain and the collateral run first).
    Bind = 1,
    /// A fresh valid v4 quote from the simulated platform over this certificate's binding; the
    /// input's quote bytes are ignored. Fuzzed claims and collateral reach full verification.
    Requote = 2,
    /// [`QuoteMode::Requote`] with a v5 quote.
    RequoteV5 = 3,
}

/// A decoded fuzz input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Input {
    pub mode: QuoteMode,
    pub claims: Vec<u8>,
    /// Collateral JSON to embed, if any.
    pub collateral: Option<Vec<u8>>,
    pub quote: Vec<u8>,
}

const COLLATERAL_FLAG: u8 = 0b100;

impl Input {
    /// Splits fuzz bytes into the parts (never fails; see the module docs).
    pub fn parse(data: &[u8]) -> Self {
        let (&flags, mut rest) = data.split_first().unwrap_or((&0, &[]));
        let mut part = || {
            let len = match rest {
                [a, b, tail @ ..] => {
                    rest = tail;
                    usize::from(u16::from_le_bytes([*a, *b]))
                }
                _ => {
                    rest = &[];
                    0
                }
            };
            let (head, tail) = rest.split_at(len.min(rest.len()));
            rest = tail;
            head.to_vec()
        };
        let claims = part();
        let collateral = part();
        let mode = match flags & 0b11 {
            0 => QuoteMode::Verbatim,
            1 => QuoteMode::Bind,
            2 => QuoteMode::Requote,
            _ => QuoteMode::RequoteV5,
        };
        Self {
            mode,
            claims,
            collateral: (flags & COLLATERAL_FLAG != 0).then_some(collateral),
            quote: rest.to_vec(),
        }
    }

    /// The fuzz bytes for this input; `None` if a part does not fit a u16 length.
    pub fn encode(&self) -> Option<Vec<u8>> {
        let collateral = self.collateral.as_deref().unwrap_or_default();
        let mut out = vec![
            self.mode as u8
                | if self.collateral.is_some() {
                    COLLATERAL_FLAG
                } else {
                    0
                },
        ];
        for part in [&self.claims[..], collateral] {
            out.extend_from_slice(&u16::try_from(part.len()).ok()?.to_le_bytes());
            out.extend_from_slice(part);
        }
        out.extend_from_slice(&self.quote);
        Some(out)
    }
}

/// The simulated platform, the certificate key and the policy, made once per process.
pub struct Harness {
    pub platform: Arc<SimPlatform>,
    /// One Ed25519 key for every certificate (generated per process: bindings are computed
    /// from it, so nothing in the input depends on it).
    pub key: CertKey,
    pub registers: TdRegisters,
    pub policy: Policy,
}

impl Default for Harness {
    fn default() -> Self {
        Self::new()
    }
}

impl Harness {
    pub fn new() -> Self {
        let platform = Arc::new(SimPlatform::from_seed(PLATFORM_SEED).expect("sim platform"));
        let registers = registers();
        let root = TrustRoot::new("sim", platform.root_ca_der().to_vec());
        let policy = Policy::simulated(root).with_images([registers.image_hash()]);
        Self {
            platform,
            key: CertKey::generate().expect("ed25519 key"),
            registers,
            policy,
        }
    }

    /// The quote the certificate for `input` carries (see [`QuoteMode`]).
    pub fn quote(&self, input: &Input) -> Vec<u8> {
        let binding = self.key.report_data(&input.claims);
        match input.mode {
            QuoteMode::Verbatim => input.quote.clone(),
            QuoteMode::Bind => {
                let mut quote = input.quote.clone();
                let offset = match quote.get(..2) {
                    Some([5, 0]) => HEADER_LEN + 6 + (V4_REPORT_DATA_OFFSET - HEADER_LEN),
                    _ => V4_REPORT_DATA_OFFSET,
                };
                if let Some(rd) = quote.get_mut(offset..offset + 64) {
                    rd.copy_from_slice(&binding);
                }
                quote
            }
            QuoteMode::Requote => self
                .platform
                .quote(&self.registers, &binding)
                .expect("quote"),
            QuoteMode::RequoteV5 => self
                .platform
                .quote_v5(&self.registers, &binding)
                .expect("quote"),
        }
    }

    /// A correctly self-signed RA-TLS certificate carrying the input's parts, issued with
    /// `ratls::cert::assemble`; `None` when the issuing code refuses them (a part over its
    /// size limit), as it would for a legitimate peer.
    pub fn certificate(&self, input: &Input) -> Option<Vec<u8>> {
        let quote = self.quote(input);
        assemble(
            &self.key,
            &quote,
            &input.claims,
            input.collateral.as_deref(),
            NOW,
            LIFETIME,
        )
        .ok()
        .map(|issued| issued.cert_der.clone())
    }

    /// A verifier as the TLS stack holds one: the policy, a clock fixed at [`NOW`], the
    /// default attestation cache, no collateral source (peers must embed collateral).
    pub fn verifier(&self) -> PeerVerifier {
        PeerVerifier::new(self.policy.clone(), Arc::new(FixedClock::new(NOW)))
    }

    /// Issues the certificate for `input` and verifies it through [`PeerVerifier::verify`]
    /// (what `RaTlsServerVerifier` / `RaTlsClientVerifier` call). `None` if it was not issued.
    pub fn run(&self, input: &Input) -> Option<(Vec<u8>, Result<VerifiedPeer, RatlsError>)> {
        let der = self.certificate(input)?;
        let result = self.verifier().verify(&der);
        Some((der, result))
    }
}

/// The TD the policy accepts (as in ratls's tests).
pub fn registers() -> TdRegisters {
    let mut r = default_registers();
    r.mrtd = [0x11; 48];
    r.rtmr[0] = [0x22; 48];
    r.rtmr[1] = [0x33; 48];
    r.rtmr[2] = [0x44; 48];
    r
}

#[cfg(test)]
mod tests;

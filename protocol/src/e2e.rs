//! End-to-end encryption between the client and the worker, and the receipts a worker signs.
//!
//! The proxy routes ciphertext: it reads the routing metadata in headers (bound into the
//! encryption's associated data, so it cannot change them), relays the encrypted response
//! chunks, and bills on a receipt the worker signed inside its TEE. Everything here is pure:
//! randomness is a parameter, time is a parameter.
//!
//! # Suite
//! HPKE (RFC 9180) base mode with DHKEM(X25519, HKDF-SHA256) `0x0020`, HKDF-SHA256 `0x0001`,
//! ChaCha20-Poly1305 `0x0003`; the body and the response chunks use ChaCha20-Poly1305 directly.
//!
//! # Worker keys (in the worker's attested claims)
//! | claim | value |
//! |---|---|
//! | [`CLAIM_KEY_CONFIG`] | hex of the HPKE key config, RFC 9458 §3 encoding ([`KeyConfig`]) |
//! | [`CLAIM_RECEIPT_KEY`] | hex of the Ed25519 receipt public key (32 bytes) |
//!
//! The claims are bound into the quote's report_data, so a proxy can hide a worker but cannot
//! substitute a key. A recipient is named by its [`KeyHash`]: the first 8 bytes of
//! `SHA-256("cocoon/e2e/v1 key\0" ‖ key config)`, in hex in headers.
//!
//! # Request
//! Headers (in addition to [`crate::meta`]'s): `content-type: application/cocoon-e2e`,
//! [`H_RECIPIENTS`] (1–3 comma-separated key hashes), [`H_TIME`] (Unix seconds). The proxy's
//! own completion budget travels in [`H_BUDGET_TOKENS`] (not bound); the client's
//! `cocoon-max-tokens` is bound and left alone.
//!
//! The [`Binding`] — endpoint path, request id, model, the client's max tokens, price cap,
//! time, recipients — is encoded canonically ([`Binding::encode`]) and used as associated data
//! everywhere. The body ([`seal_request`]):
//!
//! ```text
//! envelope   = version:u8 (=1) ‖ n:u8 (1..=3) ‖ n × recipient ‖ ciphertext
//! recipient  = key_hash[8] ‖ enc[32] ‖ wrapped_key[48]
//! wrapped_key = HPKE-Seal(pk, info="cocoon/e2e/v1 key", aad=binding, content_key[32])
//! ciphertext = ChaCha20-Poly1305(content_key, nonce=0¹², aad=binding,
//!                                body ‖ 0x80 ‖ 0x00…  (padded to padded_len))
//! ```
//!
//! [`padded_len`]: 512 bytes at least, then the next power of two up to 64 KiB, then the
//! next multiple of 64 KiB. The content key is random and used for one request.
//!
//! `request_hash = SHA-256("cocoon/e2e/v1 request-hash\0" ‖ binding ‖ envelope)` names the
//! request in its receipt; the proxy and the client compute it from bytes they hold.
//!
//! # Response
//! `HKDF-SHA256(salt=request_hash, ikm=content_key, info="cocoon/e2e/v1 response")` gives a
//! 32-byte key and a 12-byte nonce base. The worker's event stream (the plaintext SSE bytes it
//! would otherwise send) is cut into chunks; chunk *i* (from 0) is
//!
//! ```text
//! chunk = flags:u8 ‖ ChaCha20-Poly1305(key, nonce = base XOR i (big-endian, last 8 bytes),
//!                                       aad = "cocoon/e2e/v1 chunk" ‖ flags, plaintext)
//! ```
//!
//! with `flags` bit 0 set on the last chunk and no other bit set. Each chunk travels as one SSE
//! event `event: cocoon-e2e` whose data is the chunk in standard base64. Keepalive comments stay
//! in the clear. The last chunk carries the receipt event; the worker also sends the receipt in
//! the clear (`event: cocoon-receipt`, base64) for the proxy.
//!
//! # Receipt
//! See [`Receipt`]: a canonical binary encoding signed with the worker's receipt key.
//!
//! Test vectors: `tests` below pins every encoding on fixed keys and randomness.

use std::collections::BTreeMap;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::ChaCha20Poly1305;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use hpke::kem::X25519HkdfSha256;
use hpke::{Deserializable, Kem as _, OpModeR, OpModeS, Serializable};
use rand_core::CryptoRng;
use sha2::{Digest, Sha256};

use crate::{ApiError, Endpoint, ErrorKind, RequestMeta, Usage};

/// HPKE KEM id of DHKEM(X25519, HKDF-SHA256).
pub const KEM_X25519_SHA256: u16 = 0x0020;
/// HPKE KDF id of HKDF-SHA256.
pub const KDF_HKDF_SHA256: u16 = 0x0001;
/// HPKE AEAD id of ChaCha20-Poly1305.
pub const AEAD_CHACHA20POLY1305: u16 = 0x0003;

/// Claim carrying the hex key config.
pub const CLAIM_KEY_CONFIG: &str = "e2e_key_config";
/// Claim carrying the hex Ed25519 receipt key.
pub const CLAIM_RECEIPT_KEY: &str = "receipt_key";

/// Content type of an encrypted request body.
pub const CONTENT_TYPE: &str = "application/cocoon-e2e";
/// Recipients of an encrypted request: comma-separated [`KeyHash`]es.
pub const H_RECIPIENTS: &str = "cocoon-e2e-recipients";
/// When the client sealed the request, Unix seconds.
pub const H_TIME: &str = "cocoon-e2e-time";
/// Completion tokens the proxy reserved (proxy → worker; not bound, the worker takes the
/// minimum of this and the bound limits).
pub const H_BUDGET_TOKENS: &str = "cocoon-budget-tokens";
/// Most recipients one request names.
pub const MAX_RECIPIENTS: usize = 3;
/// How far a request's time may be from the worker's clock, seconds.
pub const MAX_SKEW_SECS: u64 = 300;

const KEY_TAG: &[u8] = b"cocoon/e2e/v1 key\0";
const WRAP_INFO: &[u8] = b"cocoon/e2e/v1 key";
const BINDING_TAG: &[u8] = b"cocoon/e2e/v1 request\0";
const REQUEST_HASH_TAG: &[u8] = b"cocoon/e2e/v1 request-hash\0";
const RESPONSE_INFO: &[u8] = b"cocoon/e2e/v1 response";
const CHUNK_TAG: &[u8] = b"cocoon/e2e/v1 chunk";
const RECEIPT_TAG: &[u8] = b"cocoon/e2e/v1 receipt\0";

const ENVELOPE_VERSION: u8 = 1;
const RECEIPT_VERSION: u8 = 1;
const ENC_LEN: usize = 32;
const WRAPPED_LEN: usize = 32 + 16;
const RECIPIENT_LEN: usize = 8 + ENC_LEN + WRAPPED_LEN;
const TAG_LEN: usize = 16;
const FLAG_FINAL: u8 = 1;
/// Longest string field in a binding or receipt.
const MAX_FIELD: usize = 1024;

/// Largest envelope for a body of at most [`crate::MAX_REQUEST_BODY`] bytes.
pub const MAX_ENVELOPE: usize =
    2 + MAX_RECIPIENTS * RECIPIENT_LEN + padded_len(crate::MAX_REQUEST_BODY + 1) + TAG_LEN;

type Kem = X25519HkdfSha256;
type HpkeAead = hpke::aead::ChaCha20Poly1305;
type HpkeKdf = hpke::kdf::HkdfSha256;

/// Why encrypted bytes were refused. The worker answers every request-side variant with one
/// generic error; the variants exist for tests, logs of the client's own side, and fuzzing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum E2eError {
    #[error("key config: {0}")]
    KeyConfig(&'static str),
    #[error("recipients: {0}")]
    Recipients(&'static str),
    #[error("binding: {0}")]
    Binding(&'static str),
    #[error("envelope: {0}")]
    Envelope(&'static str),
    #[error("this worker is not a recipient of the request")]
    NotRecipient,
    #[error("the request does not decrypt")]
    Decrypt,
    #[error("padding is malformed")]
    Padding,
    #[error("response chunk {index}: {what}")]
    Chunk { index: u64, what: &'static str },
    #[error("response ended before its final chunk ({received} chunks received)")]
    Truncated { received: u64 },
    #[error("receipt: {0}")]
    Receipt(&'static str),
    #[error("receipt signature does not verify")]
    ReceiptSignature,
    #[error("worker claims: {0}")]
    Claims(&'static str),
}

fn sha256(parts: &[&[u8]]) -> [u8; 32] {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

/// A short name of a worker's HPKE key config, used to address recipients.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyHash(pub [u8; 8]);

impl KeyHash {
    pub fn parse(s: &str) -> Result<Self, E2eError> {
        let mut out = [0u8; 8];
        if s.len() != 16 || hex::decode_to_slice(s, &mut out).is_err() {
            return Err(E2eError::Recipients("a key hash is 16 hex digits"));
        }
        if s.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(E2eError::Recipients("key hashes are lower-case hex"));
        }
        Ok(Self(out))
    }
}

impl std::fmt::Display for KeyHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

/// An HPKE key configuration (RFC 9458 §3): key id, KEM, public key, and the symmetric
/// algorithms the holder accepts. cocoon requires KEM `0x0020` and (HKDF-SHA256,
/// ChaCha20-Poly1305) among the algorithms; other listed pairs are kept and ignored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyConfig {
    pub key_id: u8,
    pub public_key: [u8; 32],
    /// (KDF id, AEAD id) pairs, in the order given.
    pub algorithms: Vec<(u16, u16)>,
}

impl KeyConfig {
    /// The encoding: `key_id:u8 ‖ kem_id:u16 ‖ pk[32] ‖ len:u16 ‖ (kdf:u16 ‖ aead:u16)*`.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(37 + 4 * self.algorithms.len());
        out.push(self.key_id);
        out.extend_from_slice(&KEM_X25519_SHA256.to_be_bytes());
        out.extend_from_slice(&self.public_key);
        out.extend_from_slice(&((4 * self.algorithms.len()) as u16).to_be_bytes());
        for (kdf, aead) in &self.algorithms {
            out.extend_from_slice(&kdf.to_be_bytes());
            out.extend_from_slice(&aead.to_be_bytes());
        }
        out
    }

    /// Parses one key config, strictly: no trailing bytes, a supported KEM and suite.
    pub fn parse(bytes: &[u8]) -> Result<Self, E2eError> {
        let err = E2eError::KeyConfig;
        let mut r = Reader::new(bytes);
        let key_id = r.u8().ok_or(err("truncated"))?;
        let kem = r.u16().ok_or(err("truncated"))?;
        if kem != KEM_X25519_SHA256 {
            return Err(err("KEM is not DHKEM(X25519, HKDF-SHA256)"));
        }
        let public_key: [u8; 32] = r.array().ok_or(err("truncated public key"))?;
        let len = r.u16().ok_or(err("truncated"))? as usize;
        if len == 0 || !len.is_multiple_of(4) {
            return Err(err(
                "symmetric algorithms length is not a non-zero multiple of 4",
            ));
        }
        let algs = r.take(len).ok_or(err("truncated symmetric algorithms"))?;
        if !r.is_empty() {
            return Err(err("trailing bytes"));
        }
        let algorithms: Vec<(u16, u16)> = algs
            .chunks_exact(4)
            .map(|c| {
                (
                    u16::from_be_bytes([c[0], c[1]]),
                    u16::from_be_bytes([c[2], c[3]]),
                )
            })
            .collect();
        if !algorithms.contains(&(KDF_HKDF_SHA256, AEAD_CHACHA20POLY1305)) {
            return Err(err("HKDF-SHA256 with ChaCha20-Poly1305 is not offered"));
        }
        if <Kem as hpke::Kem>::PublicKey::from_bytes(&public_key).is_err() {
            return Err(err("public key is not an X25519 point encoding"));
        }
        Ok(Self {
            key_id,
            public_key,
            algorithms,
        })
    }

    /// The hash recipients are addressed by.
    pub fn key_hash(&self) -> KeyHash {
        let d = sha256(&[KEY_TAG, &self.encode()]);
        let mut out = [0u8; 8];
        out.copy_from_slice(&d[..8]);
        KeyHash(out)
    }
}

/// A worker's HPKE private key with its config. Never printed.
pub struct RecipientKey {
    config: KeyConfig,
    secret: <Kem as hpke::Kem>::PrivateKey,
}

impl std::fmt::Debug for RecipientKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecipientKey")
            .field("key_hash", &self.config.key_hash().to_string())
            .finish_non_exhaustive()
    }
}

impl RecipientKey {
    /// A fresh key from `rng`.
    pub fn generate(key_id: u8, rng: &mut impl CryptoRng) -> Self {
        let (secret, public) = Kem::gen_keypair(rng);
        Self::from_parts(key_id, secret, public)
    }

    /// The key derived from input keying material (RFC 9180 DeriveKeyPair), for test vectors.
    pub fn derive(key_id: u8, ikm: &[u8]) -> Self {
        let (secret, public) = Kem::derive_keypair(ikm);
        Self::from_parts(key_id, secret, public)
    }

    fn from_parts(
        key_id: u8,
        secret: <Kem as hpke::Kem>::PrivateKey,
        public: <Kem as hpke::Kem>::PublicKey,
    ) -> Self {
        let mut public_key = [0u8; 32];
        public_key.copy_from_slice(&public.to_bytes());
        Self {
            config: KeyConfig {
                key_id,
                public_key,
                algorithms: vec![(KDF_HKDF_SHA256, AEAD_CHACHA20POLY1305)],
            },
            secret,
        }
    }

    pub fn config(&self) -> &KeyConfig {
        &self.config
    }
}

/// The keys a worker's claims carry (see the module docs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerKeys {
    pub key_config: KeyConfig,
    pub receipt_key: VerifyingKey,
}

impl WorkerKeys {
    /// The claim entries for these keys.
    pub fn claims(&self) -> [(&'static str, String); 2] {
        [
            (CLAIM_KEY_CONFIG, hex::encode(self.key_config.encode())),
            (CLAIM_RECEIPT_KEY, hex::encode(self.receipt_key.as_bytes())),
        ]
    }

    /// The keys in a worker's claims: `None` when it advertises none (a plaintext-only worker),
    /// an error when the entries are present but malformed or only one is present.
    pub fn from_claims(extra: &BTreeMap<String, String>) -> Result<Option<Self>, E2eError> {
        let (config, receipt) = match (extra.get(CLAIM_KEY_CONFIG), extra.get(CLAIM_RECEIPT_KEY)) {
            (None, None) => return Ok(None),
            (Some(c), Some(r)) => (c, r),
            _ => {
                return Err(E2eError::Claims(
                    "one of the key config and receipt key is missing",
                ))
            }
        };
        let config = hex::decode(config).map_err(|_| E2eError::Claims("key config is not hex"))?;
        let key_config = KeyConfig::parse(&config)?;
        let mut rk = [0u8; 32];
        hex::decode_to_slice(receipt, &mut rk)
            .map_err(|_| E2eError::Claims("receipt key is not 64 hex digits"))?;
        let receipt_key = VerifyingKey::from_bytes(&rk)
            .map_err(|_| E2eError::Claims("receipt key is not an Ed25519 point"))?;
        Ok(Some(Self {
            key_config,
            receipt_key,
        }))
    }
}

/// Parses the [`H_RECIPIENTS`] header value: 1..=3 distinct key hashes.
pub fn parse_recipients(value: &str) -> Result<Vec<KeyHash>, E2eError> {
    let mut out = Vec::new();
    for part in value.split(',') {
        if out.len() == MAX_RECIPIENTS {
            return Err(E2eError::Recipients("more than 3 recipients"));
        }
        let h = KeyHash::parse(part.trim())?;
        if out.contains(&h) {
            return Err(E2eError::Recipients("a recipient is named twice"));
        }
        out.push(h);
    }
    Ok(out)
}

/// Formats recipients for [`H_RECIPIENTS`].
pub fn format_recipients(recipients: &[KeyHash]) -> String {
    recipients
        .iter()
        .map(|h| h.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// The routing metadata a request binds into its encryption.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Binding {
    /// The endpoint path (`/v1/chat/completions` or `/v1/completions`).
    pub path: String,
    pub request_id: String,
    pub model: String,
    /// The client's `cocoon-max-tokens`.
    pub max_tokens: u32,
    pub price_cap: Option<u64>,
    /// [`H_TIME`].
    pub time: u64,
    pub recipients: Vec<KeyHash>,
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

impl Binding {
    /// The canonical encoding, used as associated data:
    /// `tag ‖ str(path) ‖ str(request_id) ‖ str(model) ‖ max_tokens:u32 ‖ cap_present:u8 ‖
    /// cap:u64 ‖ time:u64 ‖ n:u8 ‖ key_hash[8]×n`, where `str` is a u16 length and the bytes,
    /// integers are big-endian, and an absent cap is 0 with `cap_present` 0.
    pub fn encode(&self) -> Result<Vec<u8>, E2eError> {
        for s in [&self.path, &self.request_id, &self.model] {
            if s.len() > MAX_FIELD {
                return Err(E2eError::Binding("a field is longer than 1024 bytes"));
            }
        }
        if self.recipients.is_empty() || self.recipients.len() > MAX_RECIPIENTS {
            return Err(E2eError::Binding("1 to 3 recipients"));
        }
        let mut out = Vec::with_capacity(128);
        out.extend_from_slice(BINDING_TAG);
        put_str(&mut out, &self.path);
        put_str(&mut out, &self.request_id);
        put_str(&mut out, &self.model);
        out.extend_from_slice(&self.max_tokens.to_be_bytes());
        out.push(u8::from(self.price_cap.is_some()));
        out.extend_from_slice(&self.price_cap.unwrap_or(0).to_be_bytes());
        out.extend_from_slice(&self.time.to_be_bytes());
        out.push(self.recipients.len() as u8);
        for r in &self.recipients {
            out.extend_from_slice(&r.0);
        }
        Ok(out)
    }
}

/// The padded plaintext length for a body of `n` bytes plus the 0x80 marker.
pub const fn padded_len(n: usize) -> usize {
    const SMALL: usize = 512;
    const LARGE: usize = 64 << 10;
    if n <= SMALL {
        SMALL
    } else if n <= LARGE {
        n.next_power_of_two()
    } else {
        n.div_ceil(LARGE) * LARGE
    }
}

/// The per-request response keys (derived from the content key and the request hash).
#[derive(Clone)]
pub struct ResponseKeys {
    key: [u8; 32],
    base: [u8; 12],
}

impl std::fmt::Debug for ResponseKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ResponseKeys(..)")
    }
}

impl ResponseKeys {
    fn derive(content_key: &[u8; 32], request_hash: &[u8; 32]) -> Self {
        let hk = hkdf::Hkdf::<Sha256>::new(Some(request_hash), content_key);
        let mut okm = [0u8; 44];
        // 44 bytes is far below HKDF-SHA256's limit of 255 × 32.
        hk.expand(RESPONSE_INFO, &mut okm)
            .unwrap_or_else(|_| unreachable!("44-byte HKDF output"));
        let mut key = [0u8; 32];
        let mut base = [0u8; 12];
        key.copy_from_slice(&okm[..32]);
        base.copy_from_slice(&okm[32..]);
        Self { key, base }
    }

    /// The sealer for the worker's side.
    pub fn sealer(&self) -> ChunkSealer {
        ChunkSealer {
            keys: self.clone(),
            next: 0,
            finished: false,
        }
    }

    /// The opener for the client's side.
    pub fn opener(&self) -> ChunkOpener {
        ChunkOpener {
            keys: self.clone(),
            next: 0,
            finished: false,
        }
    }

    fn nonce(&self, index: u64) -> [u8; 12] {
        let mut n = self.base;
        for (b, c) in n[4..].iter_mut().zip(index.to_be_bytes()) {
            *b ^= c;
        }
        n
    }
}

/// A sealed request (client side).
#[derive(Debug)]
pub struct SealedRequest {
    /// The request body to send.
    pub envelope: Vec<u8>,
    /// Names the request in its receipt.
    pub request_hash: [u8; 32],
    /// Opens the response.
    pub response: ResponseKeys,
}

/// An opened request (worker side).
#[derive(Debug)]
pub struct OpenedRequest {
    /// The plaintext body.
    pub body: Vec<u8>,
    pub request_hash: [u8; 32],
    pub response: ResponseKeys,
}

/// `SHA-256("cocoon/e2e/v1 request-hash\0" ‖ binding ‖ envelope)`.
pub fn request_hash(binding: &[u8], envelope: &[u8]) -> [u8; 32] {
    sha256(&[REQUEST_HASH_TAG, binding, envelope])
}

/// Seals `body` for `recipients` (1..=3 key configs, in the binding's order).
pub fn seal_request(
    binding: &Binding,
    recipients: &[KeyConfig],
    body: &[u8],
    rng: &mut impl CryptoRng,
) -> Result<SealedRequest, E2eError> {
    if recipients.len() != binding.recipients.len()
        || recipients
            .iter()
            .zip(&binding.recipients)
            .any(|(c, h)| c.key_hash() != *h)
    {
        return Err(E2eError::Binding("recipients differ from the key configs"));
    }
    let aad = binding.encode()?;
    let mut content_key = [0u8; 32];
    rng.fill_bytes(&mut content_key);
    let mut envelope = Vec::with_capacity(2 + recipients.len() * RECIPIENT_LEN + body.len() + 600);
    envelope.push(ENVELOPE_VERSION);
    envelope.push(recipients.len() as u8);
    for config in recipients {
        let pk = <Kem as hpke::Kem>::PublicKey::from_bytes(&config.public_key)
            .map_err(|_| E2eError::KeyConfig("public key is not an X25519 point encoding"))?;
        let (enc, wrapped) = hpke::single_shot_seal::<HpkeAead, HpkeKdf, Kem, _>(
            &OpModeS::Base,
            &pk,
            WRAP_INFO,
            &content_key,
            &aad,
            rng,
        )
        .map_err(|_| E2eError::Envelope("HPKE seal failed"))?;
        envelope.extend_from_slice(&config.key_hash().0);
        envelope.extend_from_slice(&enc.to_bytes());
        envelope.extend_from_slice(&wrapped);
    }
    let mut padded = Vec::with_capacity(padded_len(body.len() + 1));
    padded.extend_from_slice(body);
    padded.push(0x80);
    padded.resize(padded_len(body.len() + 1), 0);
    let cipher = ChaCha20Poly1305::new((&content_key).into());
    let ct = cipher
        .encrypt(
            (&[0u8; 12]).into(),
            Payload {
                msg: &padded,
                aad: &aad,
            },
        )
        .map_err(|_| E2eError::Envelope("body encryption failed"))?;
    envelope.extend_from_slice(&ct);
    let request_hash = request_hash(&aad, &envelope);
    let response = ResponseKeys::derive(&content_key, &request_hash);
    Ok(SealedRequest {
        envelope,
        request_hash,
        response,
    })
}

/// The recipients an envelope names, in order (the proxy and worker compare them with
/// [`H_RECIPIENTS`]).
pub fn envelope_recipients(envelope: &[u8]) -> Result<Vec<KeyHash>, E2eError> {
    let mut r = Reader::new(envelope);
    if r.u8() != Some(ENVELOPE_VERSION) {
        return Err(E2eError::Envelope("unknown version"));
    }
    let n = r.u8().ok_or(E2eError::Envelope("truncated"))? as usize;
    if n == 0 || n > MAX_RECIPIENTS {
        return Err(E2eError::Envelope("1 to 3 recipients"));
    }
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let rec = r
            .take(RECIPIENT_LEN)
            .ok_or(E2eError::Envelope("truncated recipient"))?;
        let mut h = [0u8; 8];
        h.copy_from_slice(&rec[..8]);
        out.push(KeyHash(h));
    }
    if r.remaining() < TAG_LEN + 512 {
        return Err(E2eError::Envelope("ciphertext too short"));
    }
    Ok(out)
}

/// Opens an envelope with `key` (worker side). The binding's recipients must equal the
/// envelope's and include `key`.
pub fn open_request(
    binding: &Binding,
    envelope: &[u8],
    key: &RecipientKey,
) -> Result<OpenedRequest, E2eError> {
    if envelope.len() > MAX_ENVELOPE {
        return Err(E2eError::Envelope("larger than the largest envelope"));
    }
    let listed = envelope_recipients(envelope)?;
    if listed != binding.recipients {
        return Err(E2eError::Envelope("recipients differ from the header"));
    }
    let aad = binding.encode()?;
    let mine = key.config.key_hash();
    let slot = listed
        .iter()
        .position(|h| *h == mine)
        .ok_or(E2eError::NotRecipient)?;
    let start = 2 + slot * RECIPIENT_LEN + 8;
    let enc = <Kem as hpke::Kem>::EncappedKey::from_bytes(&envelope[start..start + ENC_LEN])
        .map_err(|_| E2eError::Decrypt)?;
    let wrapped = &envelope[start + ENC_LEN..start + ENC_LEN + WRAPPED_LEN];
    let content = hpke::single_shot_open::<HpkeAead, HpkeKdf, Kem>(
        &OpModeR::Base,
        &key.secret,
        &enc,
        WRAP_INFO,
        wrapped,
        &aad,
    )
    .map_err(|_| E2eError::Decrypt)?;
    let content_key: [u8; 32] = content
        .as_slice()
        .try_into()
        .map_err(|_| E2eError::Decrypt)?;
    let ct = &envelope[2 + listed.len() * RECIPIENT_LEN..];
    let cipher = ChaCha20Poly1305::new((&content_key).into());
    let mut padded = cipher
        .decrypt((&[0u8; 12]).into(), Payload { msg: ct, aad: &aad })
        .map_err(|_| E2eError::Decrypt)?;
    let end = padded
        .iter()
        .rposition(|&b| b != 0)
        .ok_or(E2eError::Padding)?;
    if padded[end] != 0x80 || padded.len() != padded_len(end + 1) {
        return Err(E2eError::Padding);
    }
    padded.truncate(end);
    let request_hash = request_hash(&aad, envelope);
    Ok(OpenedRequest {
        body: padded,
        request_hash,
        response: ResponseKeys::derive(&content_key, &request_hash),
    })
}

/// Encrypts the worker's response stream, chunk by chunk.
#[derive(Debug)]
pub struct ChunkSealer {
    keys: ResponseKeys,
    next: u64,
    finished: bool,
}

impl ChunkSealer {
    /// Seals the next chunk; `last` marks the final one. Sealing after the final chunk fails.
    pub fn seal(&mut self, plaintext: &[u8], last: bool) -> Result<Vec<u8>, E2eError> {
        let index = self.next;
        if self.finished {
            return Err(E2eError::Chunk {
                index,
                what: "after the final chunk",
            });
        }
        let flags = if last { FLAG_FINAL } else { 0 };
        let cipher = ChaCha20Poly1305::new((&self.keys.key).into());
        let aad = [CHUNK_TAG, &[flags]].concat();
        let ct = cipher
            .encrypt(
                (&self.keys.nonce(index)).into(),
                Payload {
                    msg: plaintext,
                    aad: &aad,
                },
            )
            .map_err(|_| E2eError::Chunk {
                index,
                what: "encryption failed",
            })?;
        self.next += 1;
        self.finished = last;
        let mut out = Vec::with_capacity(1 + ct.len());
        out.push(flags);
        out.extend_from_slice(&ct);
        Ok(out)
    }

    /// Chunks sealed so far.
    pub fn count(&self) -> u64 {
        self.next
    }
}

/// Decrypts the response stream in order; fails on any reordering, duplicate, edit or
/// chunk after the final one.
#[derive(Debug)]
pub struct ChunkOpener {
    keys: ResponseKeys,
    next: u64,
    finished: bool,
}

impl ChunkOpener {
    /// Opens the next chunk: its plaintext and whether it was the final one.
    pub fn open(&mut self, chunk: &[u8]) -> Result<(Vec<u8>, bool), E2eError> {
        let index = self.next;
        let bad = |what| E2eError::Chunk { index, what };
        if self.finished {
            return Err(bad("after the final chunk"));
        }
        let (&flags, ct) = chunk.split_first().ok_or(bad("empty"))?;
        if flags & !FLAG_FINAL != 0 {
            return Err(bad("unknown flags"));
        }
        if ct.len() < TAG_LEN {
            return Err(bad("shorter than its tag"));
        }
        let cipher = ChaCha20Poly1305::new((&self.keys.key).into());
        let aad = [CHUNK_TAG, &[flags]].concat();
        let pt = cipher
            .decrypt(
                (&self.keys.nonce(index)).into(),
                Payload { msg: ct, aad: &aad },
            )
            .map_err(|_| bad("does not authenticate (edited, reordered or duplicated)"))?;
        self.next += 1;
        self.finished = flags & FLAG_FINAL != 0;
        Ok((pt, self.finished))
    }

    /// Ok once the final chunk was opened; a named truncation error otherwise.
    pub fn finish(&self) -> Result<(), E2eError> {
        if self.finished {
            Ok(())
        } else {
            Err(E2eError::Truncated {
                received: self.next,
            })
        }
    }

    /// Chunks opened so far.
    pub fn count(&self) -> u64 {
        self.next
    }
}

/// What a worker signs at the end of a request.
///
/// Encoding (integers big-endian, `str` = u16 length ‖ bytes):
/// `version:u8 (=1) ‖ str(request_id) ‖ request_hash[32] ‖ claims_hash[32] ‖ str(model) ‖
/// str(model_digest) ‖ prompt:u64 ‖ cached:u64 ‖ completion:u64 ‖ reasoning:u64 ‖
/// price_coefficient_milli:u32 ‖ str(finish_reason) ‖ chunks:u32 ‖ time:u64 ‖ signature[64]`,
/// the signature being Ed25519 over `"cocoon/e2e/v1 receipt\0" ‖` everything before it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Receipt {
    pub request_id: String,
    pub request_hash: [u8; 32],
    /// SHA-256 of the worker's canonical claims bytes.
    pub claims_hash: [u8; 32],
    pub model: String,
    pub model_digest: String,
    pub usage: Usage,
    pub price_coefficient_milli: u32,
    pub finish_reason: String,
    /// Response chunks before the final one (which carries the receipt).
    pub chunks: u32,
    /// Unix seconds when signed.
    pub time: u64,
}

/// Longest receipt encoding accepted.
pub const MAX_RECEIPT: usize = 4 * 1024;

impl Receipt {
    fn body(&self) -> Result<Vec<u8>, E2eError> {
        for s in [
            &self.request_id,
            &self.model,
            &self.model_digest,
            &self.finish_reason,
        ] {
            if s.len() > MAX_FIELD / 2 {
                return Err(E2eError::Receipt("a field is longer than 512 bytes"));
            }
        }
        let mut out = Vec::with_capacity(256);
        out.push(RECEIPT_VERSION);
        put_str(&mut out, &self.request_id);
        out.extend_from_slice(&self.request_hash);
        out.extend_from_slice(&self.claims_hash);
        put_str(&mut out, &self.model);
        put_str(&mut out, &self.model_digest);
        for n in [
            self.usage.prompt_tokens,
            self.usage.cached_tokens,
            self.usage.completion_tokens,
            self.usage.reasoning_tokens,
        ] {
            out.extend_from_slice(&n.to_be_bytes());
        }
        out.extend_from_slice(&self.price_coefficient_milli.to_be_bytes());
        put_str(&mut out, &self.finish_reason);
        out.extend_from_slice(&self.chunks.to_be_bytes());
        out.extend_from_slice(&self.time.to_be_bytes());
        Ok(out)
    }

    /// The signed encoding.
    pub fn sign(&self, key: &SigningKey) -> Result<Vec<u8>, E2eError> {
        let mut out = self.body()?;
        let sig = key.sign(&[RECEIPT_TAG, &out].concat());
        out.extend_from_slice(&sig.to_bytes());
        Ok(out)
    }

    /// Parses a signed receipt without checking the signature (for fuzzing and display).
    pub fn parse_unverified(bytes: &[u8]) -> Result<(Self, Signature), E2eError> {
        let err = E2eError::Receipt;
        if bytes.len() > MAX_RECEIPT {
            return Err(err("longer than 4096 bytes"));
        }
        let mut r = Reader::new(bytes);
        if r.u8() != Some(RECEIPT_VERSION) {
            return Err(err("unknown version"));
        }
        let t = || err("truncated");
        let request_id = r.string().ok_or(err("request id"))?;
        let request_hash = r.array().ok_or_else(t)?;
        let claims_hash = r.array().ok_or_else(t)?;
        let model = r.string().ok_or(err("model"))?;
        let model_digest = r.string().ok_or(err("model digest"))?;
        let usage = Usage {
            prompt_tokens: r.u64().ok_or_else(t)?,
            cached_tokens: r.u64().ok_or_else(t)?,
            completion_tokens: r.u64().ok_or_else(t)?,
            reasoning_tokens: r.u64().ok_or_else(t)?,
        };
        let price_coefficient_milli = r.u32().ok_or_else(t)?;
        let finish_reason = r.string().ok_or(err("finish reason"))?;
        let chunks = r.u32().ok_or_else(t)?;
        let time = r.u64().ok_or_else(t)?;
        let sig: [u8; 64] = r.array().ok_or(err("truncated signature"))?;
        if !r.is_empty() {
            return Err(err("trailing bytes"));
        }
        let receipt = Self {
            request_id,
            request_hash,
            claims_hash,
            model,
            model_digest,
            usage,
            price_coefficient_milli,
            finish_reason,
            chunks,
            time,
        };
        // One value, one encoding: a re-encoding must give the same bytes.
        if receipt.body()?.len() + 64 != bytes.len() {
            return Err(err("not canonical"));
        }
        Ok((receipt, Signature::from_bytes(&sig)))
    }

    /// Parses a signed receipt and verifies it with `key` (strict Ed25519).
    pub fn verify(bytes: &[u8], key: &VerifyingKey) -> Result<Self, E2eError> {
        let (receipt, sig) = Self::parse_unverified(bytes)?;
        let signed = &bytes[..bytes.len() - 64];
        key.verify_strict(&[RECEIPT_TAG, signed].concat(), &sig)
            .map_err(|_| E2eError::ReceiptSignature)?;
        Ok(receipt)
    }
}

/// The answer of the proxy's discovery route ([`crate::paths::WORKERS`]): the RA-TLS
/// certificates of the live workers of one model that publish end-to-end keys. The client
/// verifies each certificate itself; the proxy can leave workers out but cannot add a key.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Directory {
    pub model: String,
    pub workers: Vec<DirectoryEntry>,
}

/// One worker in a [`Directory`].
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirectoryEntry {
    /// The [`KeyHash`] of its key config (a hint; the client recomputes it from the claims).
    pub key_hash: String,
    /// Its RA-TLS certificate, DER in standard base64.
    pub cert: String,
}

/// Most workers one directory lists.
pub const MAX_DIRECTORY: usize = 64;

/// Whether a request's body is an envelope (its content type is [`CONTENT_TYPE`]).
pub fn is_encrypted(h: &http::HeaderMap) -> bool {
    h.get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(';').next().unwrap_or("").trim() == CONTENT_TYPE)
}

fn one_header<'a>(h: &'a http::HeaderMap, name: &'static str) -> Result<&'a str, ApiError> {
    let mut all = h.get_all(name).iter();
    let (Some(v), None) = (all.next(), all.next()) else {
        return Err(ApiError::new(
            ErrorKind::InvalidRequest,
            format!("an encrypted request needs exactly one {name} header"),
        ));
    };
    v.to_str().map_err(|_| {
        ApiError::new(
            ErrorKind::InvalidRequest,
            format!("header {name} is not visible ascii"),
        )
    })
}

/// The binding of an encrypted request from its headers (`meta` already parsed from them).
pub fn binding_from_headers(
    endpoint: Endpoint,
    meta: &RequestMeta,
    h: &http::HeaderMap,
) -> Result<Binding, ApiError> {
    let recipients = parse_recipients(one_header(h, H_RECIPIENTS)?)
        .map_err(|e| ApiError::new(ErrorKind::InvalidRequest, format!("{H_RECIPIENTS}: {e}")))?;
    let time = one_header(h, H_TIME)?.parse::<u64>().map_err(|_| {
        ApiError::new(
            ErrorKind::InvalidRequest,
            format!("{H_TIME}: not a number of seconds"),
        )
    })?;
    Ok(Binding {
        path: endpoint.path().to_string(),
        request_id: meta.request_id.to_string(),
        model: meta.model.clone(),
        max_tokens: meta.max_tokens,
        price_cap: meta.price_cap,
        time,
        recipients,
    })
}

/// Writes the encrypted-request headers of `binding` (the [`RequestMeta`] headers are written
/// separately, from the same values).
pub fn write_headers(binding: &Binding, h: &mut http::HeaderMap) {
    let put = |h: &mut http::HeaderMap, name: &'static str, v: String| {
        if let Ok(v) = http::HeaderValue::try_from(v) {
            h.insert(name, v);
        }
    };
    put(h, H_RECIPIENTS, format_recipients(&binding.recipients));
    put(h, H_TIME, binding.time.to_string());
    h.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(CONTENT_TYPE),
    );
}

/// The proxy's completion budget ([`H_BUDGET_TOKENS`]), when present.
pub fn budget_tokens(h: &http::HeaderMap) -> Result<Option<u32>, ApiError> {
    if h.get(H_BUDGET_TOKENS).is_none() {
        return Ok(None);
    }
    one_header(h, H_BUDGET_TOKENS)?
        .parse::<u32>()
        .map(Some)
        .map_err(|_| {
            ApiError::new(
                ErrorKind::InvalidRequest,
                format!("{H_BUDGET_TOKENS}: not a number"),
            )
        })
}

/// A bounds-checked reader over bytes.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self { bytes }
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.bytes.len() < n {
            return None;
        }
        let (head, tail) = self.bytes.split_at(n);
        self.bytes = tail;
        Some(head)
    }

    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N).and_then(|b| b.try_into().ok())
    }

    fn u8(&mut self) -> Option<u8> {
        self.array::<1>().map(|b| b[0])
    }

    fn u16(&mut self) -> Option<u16> {
        self.array().map(u16::from_be_bytes)
    }

    fn u32(&mut self) -> Option<u32> {
        self.array().map(u32::from_be_bytes)
    }

    fn u64(&mut self) -> Option<u64> {
        self.array().map(u64::from_be_bytes)
    }

    fn string(&mut self) -> Option<String> {
        let n = self.u16()? as usize;
        if n > MAX_FIELD / 2 {
            return None;
        }
        String::from_utf8(self.take(n)?.to_vec()).ok()
    }

    fn remaining(&self) -> usize {
        self.bytes.len()
    }

    fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}

#[cfg(test)]
mod tests;

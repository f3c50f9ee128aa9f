//! Client accounts: clients are not TEEs. They authenticate to a proxy with an Ed25519
//! *account key* presented as a self-signed TLS client certificate (TLS 1.3 CertificateVerify
//! proves possession); the account id is the hex public key. The proxy still presents RA-TLS
//! evidence, which the client verifies with [`crate::RaTlsServerVerifier`].

use std::sync::Arc;
use std::time::Duration;

use rcgen::{CertificateParams, DnType, KeyPair};
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, PrivatePkcs8KeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::cert::{CertResolver, IssuedCert};
use crate::tls::{provider, server_config_with, tls12_rejected, to_rustls_error, verify_tls13};
use crate::RatlsError;

/// OID of Ed25519 public keys (RFC 8410).
const ED25519_OID: &str = "1.3.101.112";

/// An account key (Ed25519). The secret never leaves this type except as PKCS#8 for rustls.
/// The seed is overwritten with zeros when the key is dropped.
pub struct AccountKey {
    seed: [u8; 32],
}

impl Drop for AccountKey {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.seed);
    }
}

impl zeroize::ZeroizeOnDrop for AccountKey {}

impl std::fmt::Debug for AccountKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AccountKey({})", self.account_id())
    }
}

impl AccountKey {
    /// The key with this 32-byte secret seed.
    pub fn from_seed(seed: [u8; 32]) -> Self {
        Self { seed }
    }

    /// A new random key.
    pub fn generate() -> Result<Self, RatlsError> {
        let mut seed = [0u8; 32];
        getrandom_fill(&mut seed)?;
        Ok(Self { seed })
    }

    /// The secret seed (for storing the key; never log it).
    pub fn seed(&self) -> &[u8; 32] {
        &self.seed
    }

    fn pkcs8(&self) -> zeroize::Zeroizing<Vec<u8>> {
        // PKCS#8 v1 OneAsymmetricKey for Ed25519 (RFC 8410 section 7): fixed prefix + seed.
        let mut der = Vec::with_capacity(48);
        der.extend_from_slice(&[
            0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22,
            0x04, 0x20,
        ]);
        der.extend_from_slice(&self.seed);
        zeroize::Zeroizing::new(der)
    }

    /// The account id: the hex Ed25519 public key.
    pub fn account_id(&self) -> String {
        let kp = ring::signature::Ed25519KeyPair::from_seed_unchecked(&self.seed);
        match kp {
            Ok(kp) => hex::encode(ring::signature::KeyPair::public_key(&kp).as_ref()),
            Err(_) => String::from("invalid"),
        }
    }

    /// A self-signed certificate for this key, valid from `now` - 5 min for `lifetime`.
    pub fn certificate(&self, now: u64, lifetime: Duration) -> Result<IssuedCert, RatlsError> {
        let pkcs8 = self.pkcs8();
        let key = KeyPair::from_pkcs8_der_and_sign_algo(
            &PrivatePkcs8KeyDer::from(pkcs8.to_vec()),
            &rcgen::PKCS_ED25519,
        )
        .map_err(|e| RatlsError::Key(e.to_string()))?;
        let mut params = CertificateParams::default();
        params.distinguished_name.push(
            DnType::CommonName,
            format!("cocoon account {}", self.account_id()),
        );
        let not_before = now.saturating_sub(crate::cert::CLOCK_SKEW_ALLOWANCE_SECS);
        let not_after = now.saturating_add(lifetime.as_secs());
        params.not_before = time_of(not_before)?;
        params.not_after = time_of(not_after)?;
        let cert = params
            .self_signed(&key)
            .map_err(|e| RatlsError::Issue(e.to_string()))?;
        Ok(IssuedCert {
            cert_der: cert.der().to_vec(),
            key_pkcs8_der: pkcs8,
            spki_der: rcgen::PublicKeyData::subject_public_key_info(&key),
            report_data: [0; 64],
            claims: None,
            not_before,
            not_after,
        })
    }

    /// A resolver serving [`AccountKey::certificate`] (for client configs).
    pub fn resolver(&self, now: u64) -> Result<Arc<CertResolver>, RatlsError> {
        Ok(Arc::new(CertResolver::new(
            &self.certificate(now, Duration::from_secs(24 * 3600))?,
        )?))
    }
}

fn time_of(secs: u64) -> Result<time::OffsetDateTime, RatlsError> {
    i64::try_from(secs)
        .ok()
        .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
        .ok_or_else(|| RatlsError::Issue(format!("time {secs} out of range")))
}

fn getrandom_fill(buf: &mut [u8]) -> Result<(), RatlsError> {
    use ring::rand::SecureRandom;
    ring::rand::SystemRandom::new()
        .fill(buf)
        .map_err(|_| RatlsError::Key("system randomness unavailable".into()))
}

/// The account id (hex Ed25519 public key) of a client certificate, if it carries an Ed25519
/// key.
pub fn account_id_of(cert_der: &[u8]) -> Result<String, RatlsError> {
    let (_, cert) = X509Certificate::from_der(cert_der)
        .map_err(|e| RatlsError::Cert(crate::CertError::Der(e.to_string())))?;
    let spki = cert.public_key();
    if spki.algorithm.algorithm.to_id_string() != ED25519_OID {
        return Err(RatlsError::Cert(crate::CertError::Der(
            "account certificate key is not ed25519".into(),
        )));
    }
    let key: &[u8] = &spki.subject_public_key.data;
    if key.len() != 32 {
        return Err(RatlsError::Cert(crate::CertError::Der(format!(
            "ed25519 key of {} bytes",
            key.len()
        ))));
    }
    Ok(hex::encode(key))
}

/// The account id of the client of an established server connection.
pub fn peer_account(conn: &rustls::CommonState) -> Option<String> {
    let cert = conn.peer_certificates()?.first()?;
    account_id_of(cert.as_ref()).ok()
}

/// A server-side verifier for account certificates: any self-signed Ed25519 certificate,
/// possession proven by the TLS 1.3 CertificateVerify. Identity only; authorization (balances,
/// allow-lists) is the service's business.
#[derive(Debug, Default)]
pub struct AccountClientVerifier;

impl ClientCertVerifier for AccountClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        if !intermediates.is_empty() {
            return Err(to_rustls_error(RatlsError::UnexpectedChain(
                intermediates.len(),
            )));
        }
        account_id_of(end_entity.as_ref()).map_err(to_rustls_error)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        tls12_rejected()
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13(
            &provider().signature_verification_algorithms,
            message,
            cert,
            dss,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
}

/// A server config for client-facing listeners: RA-TLS certificate from `resolver`, account
/// certificates required from clients.
pub fn account_server_config(
    resolver: Arc<CertResolver>,
    alpn: &[&[u8]],
) -> Result<rustls::ServerConfig, RatlsError> {
    server_config_with(resolver, Some(Arc::new(AccountClientVerifier)), alpn)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn account_certificate_carries_the_account_id() {
        let k = AccountKey::from_seed([9; 32]);
        let c = k
            .certificate(1_750_000_000, Duration::from_secs(3600))
            .unwrap();
        assert_eq!(account_id_of(&c.cert_der).unwrap(), k.account_id());
        assert_eq!(k.account_id().len(), 64);
        assert!(!format!("{k:?}").contains(&hex::encode([9u8; 32])));
        assert!(account_id_of(b"junk").is_err());
    }
}

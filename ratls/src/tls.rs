//! rustls integration: certificate verifiers that check RA-TLS evidence, and config builders.
//!
//! * [`RaTlsServerVerifier`]: a client verifying a server.
//! * [`RaTlsClientVerifier`]: a server verifying clients (mutual TLS; a client certificate is
//!   mandatory).
//!
//! Both delegate to a shared [`PeerVerifier`] (policy, [`crate::Clock`], collateral source,
//! cache) and ignore rustls' own notion of time in favour of that clock. They accept TLS 1.3
//! only and Ed25519 handshake signatures only; no CA hints are sent; the server name a client
//! connects to is ignored — a peer is identified by its attestation, not by DNS. Session
//! resumption is disabled in the configs built here, so every connection's peer certificate is
//! verified against the policy and the time of that connection.
//!
//! # Error shape
//!
//! A rejected peer surfaces as `rustls::Error::Other(OtherError(Arc<RatlsError>))` on the side
//! that verified it: its text is `"other error: <reason>"` (e.g. "other error: attestation
//! rejected: td attributes: debug bit set (…)"), and [`crate::ratls_error`] /
//! [`crate::ratls_io_error`] give the typed [`RatlsError`] (and its
//! [`measurements::Rejection`]) back. The rejected peer only learns a TLS alert
//! (`handshake_failure`): alerts carry no text.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{
    verify_tls13_signature_with_raw_key, CryptoProvider, WebPkiSupportedAlgorithms,
};
use rustls::pki_types::{CertificateDer, ServerName, SubjectPublicKeyInfoDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    ClientConfig, DigitallySignedStruct, DistinguishedName, OtherError, ServerConfig,
    SignatureScheme,
};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::cert::CertResolver;
use crate::verify::PeerVerifier;
use crate::RatlsError;

/// Converts an error to the rustls shape described in the module docs.
pub fn to_rustls_error(err: RatlsError) -> rustls::Error {
    rustls::Error::Other(OtherError(Arc::new(err)))
}

/// The crypto provider used by RA-TLS configs (ring).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Checks a TLS 1.3 CertificateVerify signature with the certificate's Ed25519 key.
pub(crate) fn verify_tls13(
    algorithms: &WebPkiSupportedAlgorithms,
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
) -> Result<HandshakeSignatureValid, rustls::Error> {
    if dss.scheme != SignatureScheme::ED25519 {
        return Err(to_rustls_error(RatlsError::SignatureScheme(format!(
            "{:?}",
            dss.scheme
        ))));
    }
    // The certificate already passed the verifier; only its key is needed here.
    let (_, parsed) = X509Certificate::from_der(cert.as_ref()).map_err(|e| {
        to_rustls_error(RatlsError::HandshakeSignature(format!(
            "certificate does not parse: {e}"
        )))
    })?;
    let spki = SubjectPublicKeyInfoDer::from(parsed.public_key().raw);
    verify_tls13_signature_with_raw_key(message, &spki, dss, algorithms)
        .map_err(|e| to_rustls_error(RatlsError::HandshakeSignature(e.to_string())))
}

pub(crate) fn tls12_rejected() -> Result<HandshakeSignatureValid, rustls::Error> {
    Err(to_rustls_error(RatlsError::Tls12))
}

fn verify_end_entity(
    verifier: &PeerVerifier,
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
) -> Result<(), rustls::Error> {
    if !intermediates.is_empty() {
        return Err(to_rustls_error(RatlsError::Cert(crate::CertError::Der(
            format!(
                "peer sent {} chain certificates; ra-tls certificates are self-signed",
                intermediates.len()
            ),
        ))));
    }
    verifier
        .verify(end_entity.as_ref())
        .map(|_| ())
        .map_err(to_rustls_error)
}

/// Verifies a server's RA-TLS certificate (used by clients).
#[derive(Debug, Clone)]
pub struct RaTlsServerVerifier {
    inner: Arc<PeerVerifier>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl RaTlsServerVerifier {
    pub fn new(inner: Arc<PeerVerifier>) -> Self {
        Self {
            inner,
            algorithms: rustls::crypto::ring::default_provider().signature_verification_algorithms,
        }
    }

    /// The underlying verifier (policy, cache, [`PeerVerifier::peer_of`]).
    pub fn verifier(&self) -> &Arc<PeerVerifier> {
        &self.inner
    }
}

impl ServerCertVerifier for RaTlsServerVerifier {
    /// Ignores `server_name` (identity is the attestation), `ocsp_response` and rustls' `now`
    /// (the verifier's clock is used).
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        verify_end_entity(&self.inner, end_entity, intermediates)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        tls12_rejected()
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13(&self.algorithms, message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
}

/// Verifies clients' RA-TLS certificates (used by servers; client auth is mandatory).
#[derive(Debug, Clone)]
pub struct RaTlsClientVerifier {
    inner: Arc<PeerVerifier>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl RaTlsClientVerifier {
    pub fn new(inner: Arc<PeerVerifier>) -> Self {
        Self {
            inner,
            algorithms: rustls::crypto::ring::default_provider().signature_verification_algorithms,
        }
    }

    /// The underlying verifier (policy, cache, [`PeerVerifier::peer_of`]).
    pub fn verifier(&self) -> &Arc<PeerVerifier> {
        &self.inner
    }
}

impl ClientCertVerifier for RaTlsClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    /// Empty: RA-TLS certificates are self-signed, there is no CA to hint at.
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        verify_end_entity(&self.inner, end_entity, intermediates)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        tls12_rejected()
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13(&self.algorithms, message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
}

/// A client config: ring, TLS 1.3 only, the server verified by `verifier`, our certificate
/// from `resolver` (`None` for clients that are not TEEs and present no certificate),
/// resumption disabled, `alpn` protocols offered in order.
pub fn client_config(
    resolver: Option<Arc<CertResolver>>,
    verifier: Arc<RaTlsServerVerifier>,
    alpn: &[&[u8]],
) -> Result<ClientConfig, RatlsError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| RatlsError::Config(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match resolver {
        Some(r) => builder.with_client_cert_resolver(r),
        None => builder.with_no_client_auth(),
    };
    config.resumption = rustls::client::Resumption::disabled();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// A server config: ring, TLS 1.3 only, our certificate from `resolver`, clients verified by
/// `verifier` (mandatory) or not asked for a certificate (`None`), no session tickets or
/// session cache, `alpn` protocols accepted in order of preference.
pub fn server_config(
    resolver: Arc<CertResolver>,
    verifier: Option<Arc<RaTlsClientVerifier>>,
    alpn: &[&[u8]],
) -> Result<ServerConfig, RatlsError> {
    server_config_with(
        resolver,
        verifier.map(|v| v as Arc<dyn ClientCertVerifier>),
        alpn,
    )
}

/// [`server_config`] with any client verifier (e.g. [`crate::account::AccountClientVerifier`]):
/// the one place where server-side TLS settings (TLS 1.3 only, no resumption) are made.
pub(crate) fn server_config_with(
    resolver: Arc<CertResolver>,
    verifier: Option<Arc<dyn ClientCertVerifier>>,
    alpn: &[&[u8]],
) -> Result<ServerConfig, RatlsError> {
    let builder = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| RatlsError::Config(e.to_string()))?;
    let builder = match verifier {
        Some(v) => builder.with_client_cert_verifier(v),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(resolver);
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

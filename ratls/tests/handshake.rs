//! Mutual RA-TLS handshakes between simulated TDs: in memory and over loopback TCP.

mod common;

use std::sync::Arc;

use common::*;
use measurements::Policy;
use ratls::testing::{handshake_pair, IN_MEMORY_SERVER_NAME};
use ratls::{ratls_error, ratls_io_error, IssuedCert, Role};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[test]
fn in_memory_mutual_handshake_succeeds_and_exposes_peer_evidence() {
    let worker = cert(registers(), Role::Worker);
    let proxy = cert(registers(), Role::Proxy);
    let e = ends(&worker, &proxy, policy(), policy(), clock(NOW));
    let (client, server) =
        handshake_pair(Arc::new(e.client), Arc::new(e.server)).expect("handshake");
    assert_eq!(client.alpn_protocol(), Some(&b"h2"[..]));
    assert_eq!(
        client.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );

    // The client sees the proxy's evidence, the server sees the worker's.
    let seen_by_client = e.client_side.peer_of(&client).expect("server evidence");
    assert_eq!(seen_by_client.claims().role, Role::Proxy);
    assert_eq!(seen_by_client.image_hash(), registers().image_hash());
    assert_eq!(seen_by_client.evidence.spki_der, proxy.spki_der);
    assert!(seen_by_client.cache_hit, "verified during the handshake");
    let seen_by_server = e.server_side.peer_of(&server).expect("client evidence");
    assert_eq!(seen_by_server.claims().role, Role::Worker);
    assert_eq!(seen_by_server.evidence.spki_der, worker.spki_der);
    assert_eq!(
        seen_by_server.attestation.report.report_data,
        worker.report_data
    );
}

#[test]
fn in_memory_rejection_names_reason_on_the_verifying_side() {
    // The server's evidence is bad: the client names the reason, the server gets an alert.
    let good = cert(registers(), Role::Worker);
    let debug = cert(debug_registers(), Role::Proxy);
    let e = ends(&good, &debug, policy(), policy(), clock(NOW));
    let err = handshake_pair(Arc::new(e.client), Arc::new(e.server)).expect_err("must fail");
    let client_err = err.client.expect("client error");
    assert!(
        client_err.to_string().contains("debug bit set"),
        "{client_err}"
    );
    let typed = ratls_error(&client_err)
        .and_then(|r| r.rejection())
        .unwrap();
    assert_eq!(typed.code(), "debug_td");
    assert!(matches!(
        err.server,
        Some(rustls::Error::AlertReceived(
            rustls::AlertDescription::HandshakeFailure
        ))
    ));

    // The client's evidence is bad: the server names the reason.
    let e = ends(&debug, &good, policy(), policy(), clock(NOW));
    let err = handshake_pair(Arc::new(e.client), Arc::new(e.server)).expect_err("must fail");
    let server_err = err.server.expect("server error");
    assert!(
        server_err.to_string().contains("debug bit set"),
        "{server_err}"
    );
}

#[test]
fn client_without_certificate_is_refused_by_mutual_server() {
    let server_cert = cert(registers(), Role::Proxy);
    let e = ends(
        &cert(registers(), Role::Worker),
        &server_cert,
        policy(),
        policy(),
        clock(NOW),
    );
    let anonymous = ratls::client_config(
        None,
        Arc::new(ratls::RaTlsServerVerifier::new(e.client_side.clone())),
        &[],
    )
    .unwrap();
    let err =
        handshake_pair(Arc::new(anonymous), Arc::new(e.server)).expect_err("client auth required");
    assert!(
        matches!(err.server, Some(rustls::Error::NoCertificatesPresented)),
        "{err}"
    );

    // A server that does not ask for client certificates accepts a non-TEE client, which
    // still verifies the server.
    let one_way = ratls::server_config(e.server_resolver.clone(), None, &[]).unwrap();
    let anonymous = ratls::client_config(
        None,
        Arc::new(ratls::RaTlsServerVerifier::new(e.client_side.clone())),
        &[],
    )
    .unwrap();
    let (client, _) = handshake_pair(Arc::new(anonymous), Arc::new(one_way)).expect("one-way");
    assert_eq!(
        e.client_side.peer_of(&client).unwrap().claims().role,
        Role::Proxy
    );
}

#[test]
fn tls12_only_client_cannot_connect() {
    let e = ends(
        &cert(registers(), Role::Worker),
        &cert(registers(), Role::Proxy),
        policy(),
        policy(),
        clock(NOW),
    );
    let tls12 = rustls::ClientConfig::builder_with_provider(ratls::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(ratls::RaTlsServerVerifier::new(
            e.client_side.clone(),
        )))
        .with_no_client_auth();
    let err = handshake_pair(Arc::new(tls12), Arc::new(e.server)).expect_err("tls 1.2 refused");
    assert!(
        matches!(err.server, Some(rustls::Error::PeerIncompatible(_))),
        "{err}"
    );
}

#[test]
fn renewed_certificate_is_served_to_new_connections() {
    let worker = cert(registers(), Role::Worker);
    let proxy = cert(registers(), Role::Proxy);
    let e = ends(&worker, &proxy, policy(), policy(), clock(NOW + 60));
    let client = Arc::new(e.client);
    let server = Arc::new(e.server);
    let (c1, _) = handshake_pair(client.clone(), server.clone()).unwrap();
    let renewed = cert(registers(), Role::Proxy);
    assert!(e.server_resolver.needs_renewal(NOW, 7 * 3600));
    assert!(!e.server_resolver.needs_renewal(NOW, 3600));
    e.server_resolver.renew(&renewed).unwrap();
    let (c2, _) = handshake_pair(client, server).unwrap();
    let first = e.client_side.peer_of(&c1).unwrap();
    let second = e.client_side.peer_of(&c2).unwrap();
    assert_eq!(first.evidence.spki_der, proxy.spki_der);
    assert_eq!(second.evidence.spki_der, renewed.spki_der);
}

/// Runs a mutual handshake over loopback TCP and exchanges one message. Returns the client's
/// and the server's outcome as error text (`Ok` = the side completed handshake and exchange).
async fn tcp_exchange(e: Ends) -> (Result<(), std::io::Error>, Result<(), std::io::Error>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(e.server));
    let server_side = e.server_side.clone();
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await?;
        let mut tls = acceptor.accept(tcp).await?;
        let peer = server_side
            .peer_of(tls.get_ref().1)
            .map_err(std::io::Error::other)?;
        assert_eq!(peer.claims().role, Role::Worker);
        let mut buf = [0u8; 4];
        tls.read_exact(&mut buf).await?;
        assert_eq!(&buf, b"ping");
        tls.write_all(b"pong").await?;
        tls.shutdown().await?;
        Ok::<(), std::io::Error>(())
    });
    let connector = tokio_rustls::TlsConnector::from(Arc::new(e.client));
    let client = async {
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        let name = rustls::pki_types::ServerName::try_from(IN_MEMORY_SERVER_NAME).unwrap();
        let mut tls = connector.connect(name, tcp).await?;
        let peer = e
            .client_side
            .peer_of(tls.get_ref().1)
            .map_err(std::io::Error::other)?;
        assert_eq!(peer.claims().role, Role::Proxy);
        tls.write_all(b"ping").await?;
        tls.flush().await?;
        let mut buf = [0u8; 4];
        tls.read_exact(&mut buf).await?;
        assert_eq!(&buf, b"pong");
        Ok::<(), std::io::Error>(())
    }
    .await;
    let server = server.await.expect("server task");
    (client, server)
}

#[tokio::test]
async fn tcp_mutual_handshake_succeeds() {
    let e = ends(
        &cert(registers(), Role::Worker),
        &cert(registers(), Role::Proxy),
        policy(),
        policy(),
        clock(NOW),
    );
    let (client, server) = tcp_exchange(e).await;
    client.expect("client");
    server.expect("server");
}

/// One failure case: what is wrong, and the text and code its rejection must carry.
struct Case {
    name: &'static str,
    bad_cert: fn() -> IssuedCert,
    policy: fn() -> Policy,
    now: u64,
    text: &'static str,
    code: &'static str,
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "other image hash in policy",
            bad_cert: || cert(registers(), Role::Proxy),
            policy: other_image_policy,
            now: NOW,
            text: "not among",
            code: "image_not_allowed",
        },
        Case {
            name: "debug td",
            bad_cert: || cert(debug_registers(), Role::Proxy),
            policy: || Policy {
                allowed_images: Some(
                    [registers().image_hash(), debug_registers().image_hash()].into(),
                ),
                ..policy()
            },
            now: NOW,
            text: "debug bit set",
            code: "debug_td",
        },
        Case {
            name: "quote lifted into a cert with another key",
            bad_cert: || lifted_quote_cert(Role::Proxy),
            policy,
            now: NOW,
            text: "report_data mismatch",
            code: "report_data_mismatch",
        },
        Case {
            name: "simulated root under production policy",
            bad_cert: || cert(registers(), Role::Proxy),
            policy: || Policy::production().with_images([registers().image_hash()]),
            now: NOW,
            text: "untrusted root",
            code: "untrusted_root",
        },
        Case {
            name: "collateral expired",
            bad_cert: || {
                let stale = collateral_window(&fixture().platform, NOW - 7200, 3600);
                cert_with(registers(), Role::Proxy, Some(&stale))
            },
            policy,
            now: NOW,
            text: "collateral expired",
            code: "collateral_expired",
        },
    ]
}

fn assert_named(err: &std::io::Error, case: &Case, side: &str) {
    let text = err.to_string();
    assert!(
        text.contains(case.text),
        "{}: {side} error {text:?} lacks {:?}",
        case.name,
        case.text
    );
    let code = ratls_io_error(err)
        .and_then(|r| r.rejection())
        .map(|r| r.code());
    assert_eq!(code, Some(case.code), "{}: {side}: {text}", case.name);
}

#[tokio::test]
async fn tcp_bad_server_evidence_fails_with_named_reason_at_client() {
    for case in cases() {
        let bad = (case.bad_cert)();
        let e = ends(
            &cert(registers(), Role::Worker),
            &bad,
            (case.policy)(),
            policy(),
            clock(case.now),
        );
        let (client, server) = tcp_exchange(e).await;
        let err = client.expect_err(case.name);
        assert_named(&err, &case, "client");
        assert!(server.is_err(), "{}: server must see the alert", case.name);
    }
}

#[tokio::test]
async fn tcp_bad_client_evidence_fails_with_named_reason_at_server() {
    for case in cases() {
        let bad = (case.bad_cert)();
        let e = ends(
            &bad,
            &cert(registers(), Role::Proxy),
            policy(),
            (case.policy)(),
            clock(case.now),
        );
        let (client, server) = tcp_exchange(e).await;
        let err = server.expect_err(case.name);
        assert_named(&err, &case, "server");
        assert!(client.is_err(), "{}: client must see the alert", case.name);
    }
}

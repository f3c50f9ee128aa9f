//! Parsing peer certificates: well-formed certificates parse, everything else is a typed error
//! (never a panic).

mod common;

use common::*;
use ratls::evidence::{der_octet_string, parse_cert, parse_cert_at, CertError};
use ratls::{oids, Claims, Role};

/// One extension for [`build`]: OID arc, extnValue content (DER), critical.
type Ext = (Vec<u64>, Vec<u8>, bool);

/// A self-signed certificate with exactly `exts`, valid NOW-300..NOW+3600, signed with a new
/// key of `alg`.
fn build(exts: &[Ext], alg: &'static rcgen::SignatureAlgorithm) -> Vec<u8> {
    let key = rcgen::KeyPair::generate_for(alg).unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.not_before = time::OffsetDateTime::from_unix_timestamp(NOW as i64 - 300).unwrap();
    params.not_after = time::OffsetDateTime::from_unix_timestamp(NOW as i64 + 3600).unwrap();
    for (oid, content, critical) in exts {
        let mut e = rcgen::CustomExtension::from_oid_content(oid, content.clone());
        e.set_criticality(*critical);
        params.custom_extensions.push(e);
    }
    params.self_signed(&key).unwrap().der().to_vec()
}

fn claims_bytes() -> Vec<u8> {
    Claims::new(Role::Worker, 1).to_canonical_json().unwrap()
}

fn standard_exts() -> Vec<Ext> {
    vec![
        (oids::QUOTE.to_vec(), der_octet_string(b"quote bytes"), true),
        (
            oids::CLAIMS.to_vec(),
            der_octet_string(&claims_bytes()),
            true,
        ),
    ]
}

fn ed25519(exts: &[Ext]) -> Result<ratls::PeerEvidence, CertError> {
    parse_cert(&build(exts, &rcgen::PKCS_ED25519))
}

#[test]
fn issued_certificate_parses() {
    let issued = cert(registers(), Role::Proxy);
    let ev = parse_cert_at(&issued.cert_der, NOW).unwrap();
    assert_eq!(ev.spki_der, issued.spki_der);
    assert_eq!(ev.claims.role, Role::Proxy);
    assert_eq!(ev.claims.extra.get("test").map(String::as_str), Some("yes"));
    assert_eq!(ev.expected_report_data(), issued.report_data);
    assert_eq!(ev.not_before, NOW - ratls::cert::CLOCK_SKEW_ALLOWANCE_SECS);
    assert_eq!(ev.not_after, NOW + 6 * 3600);
    assert!(ev.collateral.is_some());
    let quote = measurements::ParsedQuote::parse(&ev.quote).unwrap();
    assert_eq!(quote.report.report_data, issued.report_data);
    assert!(
        issued.cert_der.len() < ratls::evidence::MAX_CERT_LEN,
        "{} bytes",
        issued.cert_der.len()
    );
    let bare = cert_with(registers(), Role::Worker, None);
    assert!(parse_cert(&bare.cert_der).unwrap().collateral.is_none());
}

#[test]
fn validity_window_is_checked() {
    let issued = cert(registers(), Role::Worker);
    let nb = issued.not_before;
    let na = issued.not_after;
    assert!(parse_cert_at(&issued.cert_der, nb).is_ok());
    assert!(parse_cert_at(&issued.cert_der, na).is_ok());
    assert!(matches!(
        parse_cert_at(&issued.cert_der, nb - 1),
        Err(CertError::NotYetValid { .. })
    ));
    let err = parse_cert_at(&issued.cert_der, na + 1).unwrap_err();
    assert!(matches!(err, CertError::Expired { .. }));
    assert!(err.to_string().starts_with("certificate expired"), "{err}");
}

#[test]
fn garbage_is_an_error() {
    let mut inputs: Vec<Vec<u8>> = vec![
        vec![],
        vec![0],
        vec![0x30],
        vec![0x30, 0x80],
        vec![0xff; 1000],
    ];
    // A deterministic pseudo-random stream (xorshift).
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for len in [1usize, 2, 16, 100, 4096] {
        let mut v = Vec::with_capacity(len);
        for _ in 0..len {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            v.push(x as u8);
        }
        inputs.push(v.clone());
        v[0] = 0x30;
        inputs.push(v);
    }
    inputs.push(vec![0u8; ratls::evidence::MAX_CERT_LEN + 1]);
    for input in inputs {
        assert!(parse_cert(&input).is_err(), "{} bytes", input.len());
    }
}

#[test]
fn truncations_and_trailing_bytes_are_errors() {
    let der = cert_with(registers(), Role::Worker, None).cert_der;
    for len in 0..der.len() {
        assert!(parse_cert(&der[..len]).is_err(), "truncated to {len}");
    }
    let mut long = der.clone();
    long.push(0);
    assert!(matches!(
        parse_cert(&long),
        Err(CertError::TrailingBytes(1))
    ));
}

#[test]
fn every_bit_flip_is_rejected() {
    let der = cert_with(registers(), Role::Worker, None).cert_der;
    for i in 0..der.len() {
        for bit in [0u8, 3, 7] {
            let mut flipped = der.clone();
            flipped[i] ^= 1 << bit;
            assert!(
                parse_cert(&flipped).is_err(),
                "flip of bit {bit} in byte {i} of {} accepted",
                der.len()
            );
        }
    }
}

#[test]
fn extra_unknown_critical_extension_is_rejected() {
    let mut exts = standard_exts();
    assert!(ed25519(&exts).is_ok());
    exts.push((vec![1, 2, 3, 4, 5], der_octet_string(b"?"), true));
    let err = ed25519(&exts).unwrap_err();
    assert_eq!(
        err,
        CertError::UnknownCriticalExtension {
            oid: "1.2.3.4.5".into()
        }
    );
    // Non-critical unknown extensions are ignored.
    let last = exts.len() - 1;
    exts[last].2 = false;
    assert!(ed25519(&exts).is_ok());
}

#[test]
fn cocoon_extensions_must_be_well_formed() {
    // Missing claims.
    let mut exts = standard_exts();
    exts.pop();
    assert!(matches!(
        ed25519(&exts),
        Err(CertError::MissingExtension { name: "claims", .. })
    ));
    // Missing quote.
    let exts = vec![standard_exts()[1].clone()];
    assert!(matches!(
        ed25519(&exts),
        Err(CertError::MissingExtension { name: "quote", .. })
    ));
    // Duplicated quote (x509-parser or our check rejects it).
    let mut exts = standard_exts();
    exts.push(exts[0].clone());
    assert!(ed25519(&exts).is_err());
    // Not critical.
    let mut exts = standard_exts();
    exts[0].2 = false;
    assert!(matches!(
        ed25519(&exts),
        Err(CertError::NotCritical { name: "quote", .. })
    ));
    // Value not wrapped in an OCTET STRING (a DER NULL instead).
    let mut exts = standard_exts();
    exts[0].1 = vec![0x05, 0x00];
    assert!(matches!(
        ed25519(&exts),
        Err(CertError::ExtensionEncoding { name: "quote", .. })
    ));
    // Non-canonical claims.
    let mut exts = standard_exts();
    exts[1].1 = der_octet_string(br#"{"protocol_version":1,"role":"worker","extra":{}}"#);
    assert!(matches!(ed25519(&exts), Err(CertError::Claims(_))));
    // Oversized quote.
    let mut exts = standard_exts();
    exts[0].1 = der_octet_string(&vec![0u8; ratls::evidence::MAX_QUOTE_LEN + 1]);
    assert!(matches!(
        ed25519(&exts),
        Err(CertError::ExtensionTooLarge { name: "quote", .. })
    ));
    // Broken collateral.
    let mut exts = standard_exts();
    exts.push((oids::COLLATERAL.to_vec(), der_octet_string(b"{}"), true));
    assert!(matches!(ed25519(&exts), Err(CertError::Collateral(_))));
}

#[test]
fn only_ed25519_is_accepted() {
    let der = build(&standard_exts(), &rcgen::PKCS_ECDSA_P256_SHA256);
    let err = parse_cert(&der).unwrap_err();
    assert!(matches!(err, CertError::SignatureAlgorithm { .. }), "{err}");
    assert!(err.to_string().contains("1.2.840.10045.4.3.2"), "{err}");
}

/// Writes real RA-TLS certificates as fuzz seeds when `COCOON_WRITE_FUZZ_SEEDS=1`.
#[test]
fn write_fuzz_seeds() {
    if std::env::var("COCOON_WRITE_FUZZ_SEEDS").as_deref() != Ok("1") {
        return;
    }
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds/ratls_cert_parse");
    std::fs::create_dir_all(&dir).unwrap();
    let issued = cert(registers(), Role::Worker);
    std::fs::write(dir.join("worker_with_collateral.der"), &issued.cert_der).unwrap();
}

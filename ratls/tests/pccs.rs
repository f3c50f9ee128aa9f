//! `ratls::pccs::PccsSource` end to end against a local PCCS-compatible HTTP server that
//! serves the real recorded Intel collateral of ../shared/testdata/tdx (Intel's PCS API v4
//! shapes: DER CRLs, `{"tcbInfo": …, "signature": …}` bodies, URL-encoded issuer chains in
//! headers, the root CA CRL as hex text as a PCCS serves it), over plain HTTP and over TLS.

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use attestation::config::{OpenedTee, PccsConfig, TeeConfig};
use attestation::{TeeDevice, TeeError};
use measurements::quote::decode_quote_input;
use measurements::{Collateral, Sha384, TdRegisters, TrustRoot};
use ratls::pccs::{PccsError, PccsSource};
use ratls::FixedClock;

struct Vector {
    quote: &'static str,
    collateral: &'static str,
    at: u64,
}

/// UpToDate quote (FMSPC B0C06F000000) and its collateral, valid at `at`.
const UPTODATE: Vector = Vector {
    quote: "quotes/dcapqvl_v4_uptodate.quote",
    collateral: "collateral/dcapqvl_v4_uptodate.collateral.json",
    at: 1752919234,
};
/// OutOfDate quote (FMSPC 00806F050000): the source serves it (TCB status is policy, decided
/// later by the verifier).
const OUTOFDATE: Vector = Vector {
    quote: "quotes/automata_v4_outofdate.quote",
    collateral: "collateral/fmspc_00806f050000_2025-07-07.collateral.json",
    at: 1754471202,
};

fn testdata() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/testdata/tdx")
}

impl Vector {
    fn quote(&self) -> Vec<u8> {
        decode_quote_input(&std::fs::read(testdata().join(self.quote)).unwrap(), false).unwrap()
    }
    fn collateral(&self) -> Collateral {
        Collateral::from_json(&std::fs::read(testdata().join(self.collateral)).unwrap()).unwrap()
    }
    /// A time at which every item of the collateral is valid, with the most room before
    /// expiry.
    fn early(&self) -> u64 {
        self.collateral().issued_at() + 1
    }
}

#[derive(Clone)]
struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

#[derive(Default)]
struct State {
    routes: HashMap<String, Resp>,
    hits: Vec<String>,
    /// Answer every request with this status.
    fail_all: Option<u16>,
}

/// A PCCS-compatible server on loopback (HTTP/1.1, one request per connection).
struct Pccs {
    url: String,
    state: Arc<Mutex<State>>,
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn ok(headers: Vec<(&str, String)>, body: Vec<u8>) -> Resp {
    Resp {
        status: 200,
        headers: headers
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
        body,
    }
}

/// The routes a PCCS would serve for `c` (TDX, FMSPC `fmspc`, both PCK CAs).
fn routes_for(c: &Collateral, fmspc: &str) -> HashMap<String, Resp> {
    let raw = &c.raw;
    let mut r = HashMap::new();
    for ca in ["platform", "processor"] {
        r.insert(
            format!("/sgx/certification/v4/pckcrl?ca={ca}&encoding=der"),
            ok(
                vec![(
                    "SGX-PCK-CRL-Issuer-Chain",
                    urlencode(&raw.pck_crl_issuer_chain),
                )],
                raw.pck_crl.clone(),
            ),
        );
    }
    r.insert(
        format!("/tdx/certification/v4/tcb?fmspc={fmspc}"),
        ok(
            vec![(
                "TCB-Info-Issuer-Chain",
                urlencode(&raw.tcb_info_issuer_chain),
            )],
            format!(
                "{{\"tcbInfo\":{},\"signature\":\"{}\"}}",
                raw.tcb_info,
                hex::encode(&raw.tcb_info_signature)
            )
            .into_bytes(),
        ),
    );
    r.insert(
        "/tdx/certification/v4/qe/identity".into(),
        ok(
            vec![(
                "SGX-Enclave-Identity-Issuer-Chain",
                urlencode(&raw.qe_identity_issuer_chain),
            )],
            format!(
                "{{\"enclaveIdentity\":{},\"signature\":\"{}\"}}",
                raw.qe_identity,
                hex::encode(&raw.qe_identity_signature)
            )
            .into_bytes(),
        ),
    );
    r.insert(
        "/sgx/certification/v4/rootcacrl".into(),
        ok(vec![], hex::encode(&raw.root_ca_crl).into_bytes()),
    );
    r
}

fn respond(stream: &mut impl ReadWrite, state: &Mutex<State>) {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => buf.push(byte[0]),
            _ => return,
        }
    }
    let head = String::from_utf8_lossy(&buf);
    let path = head.split(' ').nth(1).unwrap_or("").to_string();
    let resp = {
        let mut s = state.lock().unwrap();
        s.hits.push(path.clone());
        match s.fail_all {
            Some(status) => Resp {
                status,
                headers: vec![],
                body: b"{\"error\":\"down\"}".to_vec(),
            },
            None => s.routes.get(&path).cloned().unwrap_or(Resp {
                status: 404,
                headers: vec![],
                body: vec![],
            }),
        }
    };
    let mut out = format!(
        "HTTP/1.1 {} X\r\nContent-Length: {}\r\nConnection: close\r\n",
        resp.status,
        resp.body.len()
    );
    for (k, v) in &resp.headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str("\r\n");
    let _ = stream.write_all(out.as_bytes());
    let _ = stream.write_all(&resp.body);
    let _ = stream.flush();
}

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

impl Pccs {
    fn start(routes: HashMap<String, Resp>, tls: Option<Arc<rustls::ServerConfig>>) -> Pccs {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(Mutex::new(State {
            routes,
            ..State::default()
        }));
        let st = state.clone();
        let scheme = if tls.is_some() { "https" } else { "http" };
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut tcp) = conn else { continue };
                let st = st.clone();
                let tls = tls.clone();
                std::thread::spawn(move || match tls {
                    None => respond(&mut tcp, &st),
                    Some(cfg) => {
                        let Ok(conn) = rustls::ServerConnection::new(cfg) else {
                            return;
                        };
                        let mut s = rustls::StreamOwned::new(conn, tcp);
                        respond(&mut s, &st);
                        s.conn.send_close_notify();
                        let _ = s.flush();
                    }
                });
            }
        });
        Pccs {
            url: format!("{scheme}://localhost:{port}"),
            state,
        }
    }

    fn serving(v: &Vector, fmspc: &str) -> Pccs {
        Pccs::start(routes_for(&v.collateral(), fmspc), None)
    }

    fn hits(&self) -> usize {
        self.state.lock().unwrap().hits.len()
    }

    fn fail_all(&self, status: Option<u16>) {
        self.state.lock().unwrap().fail_all = status;
    }

    fn edit(&self, path_prefix: &str, f: impl Fn(&mut Resp)) {
        let mut s = self.state.lock().unwrap();
        for (path, resp) in s.routes.iter_mut() {
            if path.starts_with(path_prefix) {
                f(resp);
            }
        }
    }
}

fn source(url: &str, clock: &Arc<FixedClock>, edit: impl FnOnce(&mut PccsConfig)) -> PccsSource {
    let mut cfg = PccsConfig::new(url);
    edit(&mut cfg);
    PccsSource::new(
        &cfg,
        Path::new("/"),
        vec![TrustRoot::intel()],
        clock.clone(),
    )
    .unwrap()
}

fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("cocoon-pccs-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A URL on which nothing listens.
fn dead_url() -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    drop(l);
    format!("http://127.0.0.1:{port}")
}

#[test]
fn fetches_the_recorded_collateral_byte_for_byte_and_caches_it() {
    for (v, fmspc) in [(UPTODATE, "B0C06F000000"), (OUTOFDATE, "00806F050000")] {
        let pccs = Pccs::serving(&v, fmspc);
        let clock = Arc::new(FixedClock::new(v.at));
        // A base URL with the API path is accepted too (as PCCS documentation writes it).
        let src = source(
            &format!("{}/sgx/certification/v4/", pccs.url),
            &clock,
            |_| {},
        );
        let got = src.collateral_for_quote(&v.quote()).unwrap();
        assert_eq!(
            got,
            v.collateral(),
            "{fmspc}: the signed documents are kept as served"
        );
        assert_eq!(
            pccs.hits(),
            4,
            "pck crl, tcb info, qe identity, root ca crl"
        );
        // The fetched collateral verifies the quote (what the source checked before use).
        measurements::verify::verify_evidence(&v.quote(), &got, v.at, &[TrustRoot::intel()])
            .unwrap();
        let again = src.collateral_for_quote(&v.quote()).unwrap();
        assert_eq!(again, got);
        assert_eq!(pccs.hits(), 4, "served from memory");
        assert_eq!(src.stats().fetched, 1);
        assert_eq!(src.stats().cached, 1);
    }
}

#[test]
fn disk_cache_serves_a_restart_while_the_service_is_down() {
    let v = UPTODATE;
    let pccs = Pccs::serving(&v, "B0C06F000000");
    let dir = temp_dir("disk");
    let clock = Arc::new(FixedClock::new(v.early()));
    let first = source(&pccs.url, &clock, |c| c.cache_dir = Some(dir.clone()));
    let got = first.collateral_for_quote(&v.quote()).unwrap();
    let files: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
    assert_eq!(files.len(), 1, "one cache file per platform");

    // A restarted process, the service gone: the disk copy is fresh, nothing is fetched.
    clock.advance(60);
    let restarted = source(&dead_url(), &clock, |c| c.cache_dir = Some(dir.clone()));
    assert_eq!(restarted.collateral_for_quote(&v.quote()).unwrap(), got);
    assert_eq!(restarted.stats().fetched, 0);

    // A damaged cache file is ignored (and the service, being down, is named).
    let file = files[0].as_ref().unwrap().path();
    std::fs::write(&file, b"{ not json").unwrap();
    let damaged = source(&dead_url(), &clock, |c| c.cache_dir = Some(dir.clone()));
    let e = damaged.collateral_for_quote(&v.quote()).unwrap_err();
    assert!(matches!(e, PccsError::Unreachable { .. }), "{e}");
}

#[test]
fn a_service_that_is_down_is_named() {
    let clock = Arc::new(FixedClock::new(UPTODATE.at));
    let url = dead_url();
    let e = source(&url, &clock, |_| {})
        .collateral_for_quote(&UPTODATE.quote())
        .unwrap_err();
    match &e {
        PccsError::Unreachable { url: u, detail } => {
            assert!(u.starts_with(&url), "{e}");
            assert!(detail.contains("connect"), "{e}");
        }
        other => panic!("{other}"),
    }
    // HTTP errors name the status and the URL.
    let pccs = Pccs::serving(&UPTODATE, "B0C06F000000");
    pccs.fail_all(Some(503));
    let e = source(&pccs.url, &clock, |_| {})
        .collateral_for_quote(&UPTODATE.quote())
        .unwrap_err();
    assert!(
        matches!(&e, PccsError::Status { status: 503, url } if url.contains("pckcrl")),
        "{e}"
    );
}

#[test]
fn outdated_collateral_is_refused_as_stale() {
    let v = UPTODATE;
    let pccs = Pccs::serving(&v, "B0C06F000000");
    // A week after the collateral's nextUpdate: the service still serves the old documents.
    let clock = Arc::new(FixedClock::new(v.collateral().expires_at() + 7 * 86_400));
    let src = source(&pccs.url, &clock, |_| {});
    let e = src.collateral_for_quote(&v.quote()).unwrap_err();
    assert!(matches!(e, PccsError::Stale { .. }), "{e}");
    assert!(e.to_string().contains("stale"), "{e}");
    // Before its issue date: not valid yet.
    clock.set(v.collateral().issued_at() - 10);
    let e = src.collateral_for_quote(&v.quote()).unwrap_err();
    assert!(matches!(e, PccsError::NotYetValid { .. }), "{e}");
}

#[test]
fn refreshes_before_expiry_and_outlives_a_failed_refresh_only_while_valid() {
    let v = UPTODATE;
    let pccs = Pccs::serving(&v, "B0C06F000000");
    let t0 = v.early();
    let clock = Arc::new(FixedClock::new(t0));
    let src = source(&pccs.url, &clock, |c| c.refresh_secs = 3600);
    src.collateral_for_quote(&v.quote()).unwrap();
    assert_eq!(pccs.hits(), 4);
    clock.set(t0 + 1800);
    src.collateral_for_quote(&v.quote()).unwrap();
    assert_eq!(pccs.hits(), 4, "younger than refresh_secs: no request");
    clock.set(t0 + 3601);
    src.collateral_for_quote(&v.quote()).unwrap();
    assert_eq!(pccs.hits(), 8, "older than refresh_secs: fetched again");

    // Within refresh_secs of expiry, a refresh is due even for a young copy.
    let expires = v.collateral().expires_at();
    let near_end = Arc::new(FixedClock::new(expires - 600));
    let src2 = source(&pccs.url, &near_end, |c| c.refresh_secs = 3600);
    src2.collateral_for_quote(&v.quote()).unwrap();
    near_end.advance(RETRY + 1);
    src2.collateral_for_quote(&v.quote()).unwrap();
    assert_eq!(
        src2.stats().fetched,
        2,
        "a copy expiring within refresh_secs is refetched"
    );

    // The service fails: the valid copy is served, the failure counted; retries are spaced.
    pccs.fail_all(Some(500));
    clock.set(t0 + 3601 + 3601);
    let hits = pccs.hits();
    src.collateral_for_quote(&v.quote()).unwrap();
    assert_eq!(src.stats().failed, 1);
    assert_eq!(pccs.hits(), hits + 1, "one attempt");
    clock.advance(10);
    src.collateral_for_quote(&v.quote()).unwrap();
    assert_eq!(
        pccs.hits(),
        hits + 1,
        "no new attempt within the retry interval"
    );
    // Once the copy has expired, the failure is the answer.
    clock.set(expires + 1);
    let e = src.collateral_for_quote(&v.quote()).unwrap_err();
    assert!(matches!(e, PccsError::Status { status: 500, .. }), "{e}");
}

const RETRY: u64 = ratls::pccs::RETRY_SECS;

#[test]
fn wrongly_signed_documents_are_refused_and_never_cached() {
    let v = UPTODATE;
    let clock = Arc::new(FixedClock::new(v.early()));
    let tcb_path = "/tdx/certification/v4/tcb";

    // One bit of the TCB info signature flipped.
    let pccs = Pccs::serving(&v, "B0C06F000000");
    pccs.edit(tcb_path, |r| {
        let body = String::from_utf8(r.body.clone()).unwrap();
        let at = body.rfind("\"signature\":\"").unwrap() + 13;
        let mut b = body.into_bytes();
        b[at] = if b[at] == b'0' { b'1' } else { b'0' };
        r.body = b;
    });
    let src = source(&pccs.url, &clock, |_| {});
    let e = src.collateral_for_quote(&v.quote()).unwrap_err();
    assert!(matches!(e, PccsError::Rejected(_)), "{e}");
    assert!(e.to_string().contains("signature invalid: tcb_info"), "{e}");

    // The signed TCB info edited (a TCB level's status improved): the signature no longer
    // covers it.
    let pccs2 = Pccs::serving(&v, "B0C06F000000");
    pccs2.edit(tcb_path, |r| {
        let body = String::from_utf8(r.body.clone()).unwrap();
        r.body = body.replacen("OutOfDate", "UpToDate", 1).into_bytes();
    });
    let e = source(&pccs2.url, &clock, |_| {})
        .collateral_for_quote(&v.quote())
        .unwrap_err();
    assert!(matches!(e, PccsError::Rejected(_)), "{e}");
    assert!(e.to_string().contains("signature invalid: tcb_info"), "{e}");

    // TCB info signed by the service's own key, with a chain to the service's own root (the
    // simulated platform's): the chain must end at Intel's root, not at the server.
    let sim = attestation::sim::SimPlatform::generate().unwrap();
    let own = sim.collateral(v.early() - 3600, 86_400).unwrap();
    let pccs3 = Pccs::serving(&v, "B0C06F000000");
    pccs3.edit(tcb_path, |r| {
        r.headers = vec![(
            "TCB-Info-Issuer-Chain".into(),
            urlencode(&own.tcb_info_issuer_chain),
        )];
        r.body = format!(
            "{{\"tcbInfo\":{},\"signature\":\"{}\"}}",
            own.tcb_info,
            hex::encode(&own.tcb_info_signature)
        )
        .into_bytes();
    });
    let src3 = source(&pccs3.url, &clock, |_| {});
    let e = src3.collateral_for_quote(&v.quote()).unwrap_err();
    assert!(matches!(e, PccsError::Rejected(_)), "{e}");
    assert!(e.to_string().contains("certificate chain"), "{e}");

    // Nothing bad was cached: once the service serves the real documents, they are used.
    pccs.state.lock().unwrap().routes = routes_for(&v.collateral(), "B0C06F000000");
    clock.advance(RETRY + 1);
    assert_eq!(
        src.collateral_for_quote(&v.quote()).unwrap(),
        v.collateral()
    );
}

#[test]
fn malformed_answers_are_named() {
    let v = UPTODATE;
    let clock = Arc::new(FixedClock::new(v.at));
    type Edit = Box<dyn Fn(&mut Resp)>;
    let cases: Vec<(&str, Edit, &str)> = vec![
        (
            "/tdx/certification/v4/tcb",
            Box::new(|r: &mut Resp| r.headers.clear()),
            "TCB-Info-Issuer-Chain",
        ),
        (
            "/tdx/certification/v4/tcb",
            Box::new(|r: &mut Resp| r.body = b"{\"tcbInfo\": 5, \"signature\": \"00\"}".to_vec()),
            "no \"tcbInfo\" object",
        ),
        (
            "/tdx/certification/v4/qe/identity",
            Box::new(|r: &mut Resp| r.body = b"<html>".to_vec()),
            "qe identity",
        ),
        (
            "/sgx/certification/v4/pckcrl",
            Box::new(|r: &mut Resp| r.body = b"zz".to_vec()),
            "neither DER nor hex",
        ),
        (
            "/sgx/certification/v4/pckcrl",
            Box::new(|r: &mut Resp| r.headers[0].1 = "%ZZ".into()),
            "URL-encoded PEM",
        ),
        (
            "/tdx/certification/v4/tcb",
            Box::new(|r: &mut Resp| r.body = vec![0xff; 5 << 20]),
            "body",
        ),
    ];
    for (path, edit, want) in cases {
        let pccs = Pccs::serving(&v, "B0C06F000000");
        pccs.edit(path, edit);
        let e = source(&pccs.url, &clock, |_| {})
            .collateral_for_quote(&v.quote())
            .unwrap_err();
        assert!(e.to_string().contains(want), "{path}: {e}");
    }
    // A quote the source cannot read a platform from.
    let pccs = Pccs::serving(&v, "B0C06F000000");
    let e = source(&pccs.url, &clock, |_| {})
        .collateral_for_quote(b"not a quote")
        .unwrap_err();
    assert!(matches!(e, PccsError::Quote(_)), "{e}");
    assert_eq!(pccs.hits(), 0);
}

#[test]
fn bad_configs_are_refused() {
    let clock: Arc<dyn ratls::Clock> = Arc::new(FixedClock::new(0));
    for (url, ca) in [
        ("ftp://pccs", None),
        ("pccs:8081", None),
        ("http://pccs?x=1", None),
        ("http://pccs", Some("ca.pem")),
        ("https://pccs", Some("/nonexistent/ca.pem")),
    ] {
        let mut cfg = PccsConfig::new(url);
        cfg.ca_file = ca.map(PathBuf::from);
        let e = PccsSource::new(
            &cfg,
            Path::new("/"),
            vec![TrustRoot::intel()],
            clock.clone(),
        )
        .unwrap_err();
        assert!(matches!(e, PccsError::Config(_)), "{url}: {e}");
    }
    let mut cfg = PccsConfig::new("http://pccs");
    cfg.timeout_secs = 0;
    assert!(PccsSource::new(&cfg, Path::new("/"), vec![TrustRoot::intel()], clock).is_err());
}

fn tls_server(names: &[&str]) -> (Arc<rustls::ServerConfig>, String) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let params =
        rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .unwrap();
    let issuer = rcgen::Issuer::from_params(&ca_params, &ca_key);
    let cert = params.signed_by(&key, &issuer).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .unwrap();
    (Arc::new(cfg), ca.pem())
}

#[test]
fn https_with_a_private_ca_and_a_refused_impostor() {
    let v = UPTODATE;
    let (tls, ca_pem) = tls_server(&["localhost"]);
    let pccs = Pccs::start(routes_for(&v.collateral(), "B0C06F000000"), Some(tls));
    let dir = temp_dir("tls");
    std::fs::write(dir.join("ca.pem"), ca_pem).unwrap();
    let clock = Arc::new(FixedClock::new(v.at));
    let mut cfg = PccsConfig::new(&pccs.url);
    cfg.ca_file = Some("ca.pem".into());
    let src = PccsSource::new(&cfg, &dir, vec![TrustRoot::intel()], clock.clone()).unwrap();
    assert_eq!(
        src.collateral_for_quote(&v.quote()).unwrap(),
        v.collateral()
    );

    // Another CA's server at the same address is refused at the TLS layer.
    let (other, _) = tls_server(&["localhost"]);
    let impostor = Pccs::start(routes_for(&v.collateral(), "B0C06F000000"), Some(other));
    let mut cfg = PccsConfig::new(&impostor.url);
    cfg.ca_file = Some("ca.pem".into());
    let e = PccsSource::new(&cfg, &dir, vec![TrustRoot::intel()], clock)
        .unwrap()
        .collateral_for_quote(&v.quote())
        .unwrap_err();
    assert!(
        matches!(&e, PccsError::Unreachable { detail, .. } if detail.starts_with("tls")),
        "{e}"
    );
}

/// A TD whose quotes are a recorded real quote (its platform is what the source looks up).
#[derive(Debug)]
struct RecordedTd(Vec<u8>);

impl TeeDevice for RecordedTd {
    fn quote(&self, _report_data: &[u8; 64]) -> Result<Vec<u8>, TeeError> {
        Ok(self.0.clone())
    }
    fn extend_rtmr(&self, _: u8, _: &Sha384, _: &[u8]) -> Result<(), TeeError> {
        Err(TeeError::Unavailable("recorded".into()))
    }
    fn registers(&self) -> Result<TdRegisters, TeeError> {
        Err(TeeError::Unavailable("recorded".into()))
    }
}

#[test]
fn a_td_embeds_collateral_from_its_tee_pccs_section() {
    let v = UPTODATE;
    let pccs = Pccs::serving(&v, "B0C06F000000");
    let config: TeeConfig = toml::from_str(&format!(
        "kind = \"tdx\"\n[pccs]\nurl = \"{}\"\nrefresh_secs = 600\n",
        pccs.url
    ))
    .unwrap();
    let mut tee = OpenedTee {
        device: Arc::new(RecordedTd(v.quote())),
        sim_platform: None,
        collateral_source: None,
        gpu: None,
    };
    assert_eq!(
        tee.collateral(v.at).unwrap(),
        None,
        "no source: nothing to embed"
    );
    let clock = Arc::new(FixedClock::new(v.at));
    ratls::pccs::attach(&config, &mut tee, Path::new("/"), clock.clone()).unwrap();
    assert_eq!(tee.collateral(v.at).unwrap(), Some(v.collateral()));

    // The service down and the copy expired: issuance fails, naming why.
    pccs.fail_all(Some(502));
    clock.set(v.collateral().expires_at() + 1);
    let e = tee.collateral(v.at).unwrap_err();
    assert!(e.to_string().contains("HTTP 502"), "{e}");
}

#[test]
fn intel_root_names_its_crl_distribution_point() {
    // The fallback for a service without `rootcacrl` (Intel's PCS itself) reads the CRL
    // distribution point of the root that ends the QE identity chain.
    let root = std::fs::read(testdata().join("intel_sgx_root_ca.der")).unwrap();
    let chain_root = measurements::verify::pem_certs(
        UPTODATE
            .collateral()
            .raw
            .qe_identity_issuer_chain
            .as_bytes(),
    )
    .pop()
    .unwrap();
    assert_eq!(chain_root, root, "the recorded chains end at Intel's root");
    let dp = ratls::pccs::crl_distribution_point(&root).unwrap();
    assert!(dp.starts_with("https://") && dp.ends_with(".der"), "{dp}");
    assert_eq!(ratls::pccs::crl_distribution_point(b"junk"), None);
}

/// The verifier's side, through the real RA-TLS verification path: a peer certificate that
/// embeds no collateral (a TD without `[tee.pccs]`) is verified with collateral from the
/// verifier's PCCS. On the simulated platform (its own FMSPC and root), so the certificate's
/// key binding, claims and policy are all checked as in production.
#[test]
fn a_peer_without_embedded_collateral_is_verified_with_the_pccs_collateral() {
    use attestation::TeeDevice as _;
    let f = common::fixture();
    let quote = common::tee(common::registers()).quote(&[0u8; 64]).unwrap();
    let fmspc = measurements::collateral::pck_identity(&quote)
        .unwrap()
        .fmspc_hex();
    let pccs = Pccs::start(routes_for(&f.collateral, &fmspc), None);
    let cert = common::cert_with(common::registers(), ratls::Role::Proxy, None);
    let policy = common::policy();
    let clock = common::clock(common::NOW);

    let e = ratls::verify_peer(&cert.cert_der, common::NOW, &policy, None, None).unwrap_err();
    assert_eq!(e.code(), "collateral_unavailable", "{e}");

    let src = PccsSource::new(
        &PccsConfig::new(&pccs.url),
        Path::new("/"),
        policy.roots.clone(),
        clock.clone(),
    )
    .unwrap();
    let peer = ratls::verify_peer(&cert.cert_der, common::NOW, &policy, Some(&src), None).unwrap();
    assert_eq!(peer.attestation.report.registers, common::registers());
    assert_eq!(pccs.hits(), 4);

    // A service handing out another platform's documents (valid dates, signed under another
    // root): the source refuses them (they do not verify the quote), the peer is refused.
    let other = attestation::sim::SimPlatform::from_seed([7u8; 32]).unwrap();
    let other = common::collateral_window(&other, common::NOW - 3600, 86_400);
    let wrong = Pccs::start(routes_for(&other, &fmspc), None);
    let src = PccsSource::new(
        &PccsConfig::new(&wrong.url),
        Path::new("/"),
        policy.roots.clone(),
        clock,
    )
    .unwrap();
    let e = ratls::verify_peer(&cert.cert_der, common::NOW, &policy, Some(&src), None).unwrap_err();
    assert_eq!(e.code(), "collateral_unavailable", "{e}");
    assert!(e.to_string().contains("does not verify"), "{e}");
}

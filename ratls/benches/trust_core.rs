//! Trust-core benchmark: prints figures, asserts nothing.
//!
//! * cold verification of a real Intel quote with its collateral (and of a simulated quote),
//!   against a baseline of one ECDSA P-256 signature verification;
//! * cached verification of an RA-TLS certificate, against a baseline of SHA-256 over the cert;
//! * a full mutual RA-TLS handshake in memory and over loopback TCP, against the same TLS 1.3
//!   handshake with the same Ed25519 certificates and no attestation checks.
//!
//! Run: `cargo bench -p cocoon-ratls --bench trust_core` (`-- --quick` for a short run).

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use attestation::sim::{default_registers, SimPlatform, SimTdx};
use measurements::quote::decode_quote_input;
use measurements::verify::verify_quote;
use measurements::{Collateral, Policy, TdRegisters, TrustRoot};
use ratls::{
    client_config, issue, server_config, CertResolver, Claims, FixedClock, IssuedCert,
    PeerVerifier, RaTlsClientVerifier, RaTlsServerVerifier, Role,
};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};

const TESTDATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/testdata/tdx");
const REAL_AT: u64 = 1_752_919_234;
const NOW: u64 = 1_760_000_000;

struct Stats {
    p50: Duration,
    p99: Duration,
    mean: Duration,
}

fn measure(iters: usize, mut f: impl FnMut()) -> Stats {
    for _ in 0..iters.div_ceil(10) {
        f();
    }
    let mut samples: Vec<Duration> = (0..iters)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .collect();
    samples.sort();
    let total: Duration = samples.iter().sum();
    Stats {
        p50: samples[samples.len() / 2],
        p99: samples[(samples.len() * 99 / 100).min(samples.len() - 1)],
        mean: total / samples.len() as u32,
    }
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn report(name: &str, s: &Stats, base: &Stats, base_name: &str) {
    println!(
        "{name:<44} p50 {:>10.1} µs  p99 {:>10.1} µs  mean {:>10.1} µs  = {:>7.1}× {base_name} (p50 {:.1} µs)",
        us(s.p50),
        us(s.p99),
        us(s.mean),
        us(s.p50) / us(base.p50),
        us(base.p50)
    );
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let n = |full: usize| {
        if quick {
            full.div_ceil(10).max(10)
        } else {
            full
        }
    };
    println!(
        "cocoon trust-core benchmark ({} mode)",
        if quick { "quick" } else { "full" }
    );

    // Baseline A: one ECDSA P-256 verification (the unit of work a quote check repeats).
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = ring::signature::EcdsaKeyPair::generate_pkcs8(
        &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
        &rng,
    )
    .expect("p256 key");
    let kp = ring::signature::EcdsaKeyPair::from_pkcs8(
        &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
        pkcs8.as_ref(),
        &rng,
    )
    .expect("p256 key");
    let msg = [7u8; 632];
    let sig = kp.sign(&rng, &msg).expect("sign");
    let pk = ring::signature::UnparsedPublicKey::new(
        &ring::signature::ECDSA_P256_SHA256_FIXED,
        ring::signature::KeyPair::public_key(&kp).as_ref().to_vec(),
    );
    let ecdsa = measure(n(2000), || {
        pk.verify(black_box(&msg), sig.as_ref()).expect("verify");
    });

    // Cold verification of a real Intel quote (production policy).
    let quote = std::fs::read(format!("{TESTDATA}/quotes/dcapqvl_v4_uptodate.quote"))
        .expect("testdata quote (../shared/testdata)");
    let quote = decode_quote_input(&quote, false).expect("quote");
    let collateral = Collateral::from_json(
        &std::fs::read(format!(
            "{TESTDATA}/collateral/dcapqvl_v4_uptodate.collateral.json"
        ))
        .expect("testdata collateral"),
    )
    .expect("collateral");
    let prod = Policy::production();
    let cold_real = measure(n(300), || {
        verify_quote(black_box(&quote), &collateral, REAL_AT, &prod).expect("real quote verifies");
    });
    report(
        "cold verify: real Intel quote",
        &cold_real,
        &ecdsa,
        "P-256 verify",
    );

    // Cold verification of a simulated quote (same code path, simulated root).
    let platform = Arc::new(SimPlatform::from_seed([5; 32]).expect("sim"));
    let sim_collateral = Collateral::new(
        platform
            .collateral(NOW - 3600, 30 * 86400)
            .expect("collateral"),
    )
    .expect("collateral");
    let regs = registers();
    let sim_quote = platform.quote(&regs, &[1; 64]).expect("quote");
    let root = TrustRoot::new("sim", platform.root_ca_der().to_vec());
    let sim_policy = Policy::simulated(root.clone()).with_images([regs.image_hash()]);
    let cold_sim = measure(n(300), || {
        verify_quote(black_box(&sim_quote), &sim_collateral, NOW, &sim_policy).expect("sim");
    });
    report(
        "cold verify: simulated quote",
        &cold_sim,
        &ecdsa,
        "P-256 verify",
    );

    // Cached verification of an RA-TLS certificate.
    let tee = SimTdx::new(platform.clone(), regs);
    let cert = issue_cert(&tee, Role::Worker, &sim_collateral);
    let clock = Arc::new(FixedClock::new(NOW));
    let verifier = PeerVerifier::new(sim_policy.clone(), clock.clone());
    verifier.verify(&cert.cert_der).expect("first verification");
    let sha = measure(n(5000), || {
        black_box(ring::digest::digest(
            &ring::digest::SHA256,
            black_box(&cert.cert_der),
        ));
    });
    let cached = measure(n(5000), || {
        let peer = verifier.verify(black_box(&cert.cert_der)).expect("cached");
        assert!(peer.cache_hit);
    });
    report(
        "cached verify: RA-TLS cert (hit)",
        &cached,
        &sha,
        "SHA-256(cert)",
    );
    let uncached_verifier = PeerVerifier::new(sim_policy.clone(), clock.clone()).without_cache();
    let uncached = measure(n(300), || {
        uncached_verifier
            .verify(black_box(&cert.cert_der))
            .expect("uncached");
    });
    report(
        "uncached verify: RA-TLS cert",
        &uncached,
        &ecdsa,
        "P-256 verify",
    );
    let stats = verifier.cache().map(|c| c.stats());
    println!("  cache stats: {stats:?}");

    // GPU evidence: the same cached verification of a worker certificate carrying 1 and 8
    // simulated GPUs, under a policy that requires them (the GPU part is not cached).
    for count in [1u32, 8] {
        let sim_gpus = attestation::SimGpuSource::new(
            measurements::gpu::sim::SimNvidiaRoot::from_seed([6; 32]).expect("sim gpu root"),
            measurements::gpu::sim::SimGpu::machine(count, "550.127.05", "96.00.9F.00.01", "bench"),
        );
        let gpu_cert = ratls::cert::issue_with_gpu(
            &tee,
            &Claims::new(Role::Worker, 1),
            None,
            Some(&sim_gpus as &dyn attestation::GpuSource),
            NOW,
            Duration::from_secs(6 * 3600),
        )
        .expect("issue with gpus");
        let mut gpu_policy = sim_policy.clone();
        gpu_policy.gpu = Some(measurements::gpu::GpuPolicy::new(
            vec![measurements::gpu::sim::SimNvidiaRoot::from_seed([6; 32])
                .expect("sim gpu root")
                .trust_root()
                .expect("root")],
            sim_gpus.gpus()[0].reference_values(),
        ));
        let gpu_verifier = PeerVerifier::new(gpu_policy, clock.clone())
            .with_collateral_source(Arc::new(ratls::StaticCollateral(sim_collateral.clone())));
        gpu_verifier
            .verify(&gpu_cert.cert_der)
            .expect("gpu cert verifies");
        let gpu_cached = measure(n(200), || {
            let peer = gpu_verifier
                .verify(black_box(&gpu_cert.cert_der))
                .expect("gpu");
            assert_eq!(peer.gpus.len(), count as usize);
        });
        report(
            &format!("cached verify: RA-TLS cert + {count} GPU(s)"),
            &gpu_cached,
            &cached,
            "cached, no GPU",
        );
        let parsed = ratls::parse_cert(&gpu_cert.cert_der).expect("parse");
        let gpu_only = gpu_verifier.policy().gpu.clone().expect("gpu policy");
        let cold_gpu = measure(n(30), || {
            measurements::gpu::bundle::verify_certificate_bundle(
                parsed.gpu_evidence.as_deref(),
                parsed
                    .claims
                    .extra
                    .get(ratls::claims::GPU_EVIDENCE_CLAIM)
                    .map(String::as_str),
                &parsed.spki_der,
                NOW,
                &gpu_only,
            )
            .expect("gpu evidence verifies");
        });
        report(
            &format!("cold GPU check: {count} GPU(s) (P-384 chain+report)"),
            &cold_gpu,
            &ecdsa,
            "P-256 verify",
        );
        println!(
            "  certificate with {count} GPU(s), no collateral: {} bytes",
            gpu_cert.cert_der.len()
        );

        // The same GPUs with their chains' OCSP answers in the bundle (version 2), required.
        let root = measurements::gpu::sim::SimNvidiaRoot::from_seed([6; 32]).expect("root");
        let nonce = measurements::gpu::bundle::evidence_nonce(&parsed.spki_der);
        let mut evidence = root
            .machine_evidence(sim_gpus.gpus(), &nonce)
            .expect("evidence");
        for ev in &mut evidence {
            ev.ocsp = Some(
                root.ocsp_evidence(&ev.chain_pem, NOW - 3600, NOW + 20 * 3600)
                    .expect("ocsp"),
            );
        }
        let bundle = measurements::gpu::bundle::GpuBundle::from_evidence(&evidence)
            .and_then(|b| b.encode())
            .expect("bundle");
        let hash = measurements::gpu::bundle::digest_hex(&bundle);
        let mut with_ocsp = gpu_only.clone();
        with_ocsp.require_ocsp = true;
        let cold_ocsp = measure(n(30), || {
            let v = measurements::gpu::bundle::verify_certificate_bundle(
                Some(black_box(&bundle)),
                Some(&hash),
                &parsed.spki_der,
                NOW,
                &with_ocsp,
            )
            .expect("gpu evidence with ocsp verifies");
            assert_eq!(v[0].ocsp.len(), 3);
        });
        report(
            &format!("cold GPU check + OCSP: {count} GPU(s)"),
            &cold_ocsp,
            &cold_gpu,
            "without OCSP",
        );
        println!(
            "  bundle of {count} GPU(s): {} bytes, with OCSP {} bytes",
            parsed.gpu_evidence.as_ref().map_or(0, Vec::len),
            bundle.len()
        );
    }

    // Handshakes: mutual RA-TLS vs the same TLS 1.3 handshake without attestation.
    let server_cert = issue_cert(&tee, Role::Proxy, &sim_collateral);
    let client_cert = issue_cert(&tee, Role::Worker, &sim_collateral);
    let (ra_client, ra_server) =
        ratls_configs(&server_cert, &client_cert, &sim_policy, &clock, true);
    let (cold_client, cold_server) =
        ratls_configs(&server_cert, &client_cert, &sim_policy, &clock, false);
    let (plain_client, plain_server) = plain_configs(&server_cert, &client_cert);

    let hs_plain = measure(n(500), || {
        ratls::testing::handshake_pair(plain_client.clone(), plain_server.clone()).expect("plain");
    });
    let hs_cached = measure(n(500), || {
        ratls::testing::handshake_pair(ra_client.clone(), ra_server.clone()).expect("ratls");
    });
    let hs_cold = measure(n(100), || {
        ratls::testing::handshake_pair(cold_client.clone(), cold_server.clone()).expect("cold");
    });
    report(
        "in-memory TLS 1.3 handshake, no attestation",
        &hs_plain,
        &hs_plain,
        "itself",
    );
    report(
        "in-memory mutual RA-TLS handshake, cached",
        &hs_cached,
        &hs_plain,
        "plain TLS",
    );
    report(
        "in-memory mutual RA-TLS handshake, cold",
        &hs_cold,
        &hs_plain,
        "plain TLS",
    );

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let tcp_plain = rt.block_on(tcp_handshakes(plain_client, plain_server, n(300)));
    let tcp_cached = rt.block_on(tcp_handshakes(ra_client, ra_server, n(300)));
    let tcp_cold = rt.block_on(tcp_handshakes(cold_client, cold_server, n(60)));
    report(
        "loopback TCP TLS 1.3 handshake, no attestation",
        &tcp_plain,
        &tcp_plain,
        "itself",
    );
    report(
        "loopback TCP mutual RA-TLS handshake, cached",
        &tcp_cached,
        &tcp_plain,
        "plain TLS",
    );
    report(
        "loopback TCP mutual RA-TLS handshake, cold",
        &tcp_cold,
        &tcp_plain,
        "plain TLS",
    );
    println!(
        "certificate sizes: {} bytes (collateral embedded)",
        server_cert.cert_der.len()
    );
}

fn registers() -> TdRegisters {
    let mut r = default_registers();
    r.mrtd = [0x11; 48];
    r.rtmr[1] = [0x33; 48];
    r
}

fn issue_cert(tee: &SimTdx, role: Role, collateral: &Collateral) -> IssuedCert {
    issue(
        tee,
        &Claims::new(role, 1),
        Some(collateral),
        NOW,
        Duration::from_secs(6 * 3600),
    )
    .expect("issue")
}

type Configs = (Arc<rustls::ClientConfig>, Arc<rustls::ServerConfig>);

fn ratls_configs(
    server: &IssuedCert,
    client: &IssuedCert,
    policy: &Policy,
    clock: &Arc<FixedClock>,
    cache: bool,
) -> Configs {
    let mk = || {
        let v = PeerVerifier::new(policy.clone(), clock.clone());
        Arc::new(if cache { v } else { v.without_cache() })
    };
    let c = client_config(
        Some(Arc::new(CertResolver::new(client).expect("resolver"))),
        Arc::new(RaTlsServerVerifier::new(mk())),
        &[b"h2"],
    )
    .expect("client config");
    let s = server_config(
        Arc::new(CertResolver::new(server).expect("resolver")),
        Some(Arc::new(RaTlsClientVerifier::new(mk()))),
        &[b"h2"],
    )
    .expect("server config");
    (Arc::new(c), Arc::new(s))
}

/// Baseline: same certificates, same TLS 1.3 + Ed25519, the CertificateVerify checked with the
/// key read by x509-parser, but no extension parsing, self-signature check or attestation.
#[derive(Debug)]
struct AcceptAny;

fn tls13_sig(
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
) -> Result<HandshakeSignatureValid, rustls::Error> {
    use x509_parser::prelude::FromDer;
    let (_, parsed) = x509_parser::certificate::X509Certificate::from_der(cert.as_ref())
        .map_err(|e| rustls::Error::General(e.to_string()))?;
    let spki = parsed.public_key().raw.to_vec();
    rustls::crypto::verify_tls13_signature_with_raw_key(
        message,
        &rustls::pki_types::SubjectPublicKeyInfoDer::from(spki),
        dss,
        &ratls::tls::provider().signature_verification_algorithms,
    )
}

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("tls 1.2".into()))
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        tls13_sig(m, c, d)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
}

impl ClientCertVerifier for AcceptAny {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }
    fn verify_client_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("tls 1.2".into()))
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        tls13_sig(m, c, d)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
}

fn plain_configs(server: &IssuedCert, client: &IssuedCert) -> Configs {
    let provider = ratls::tls::provider();
    let mut c = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("tls13")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAny))
        .with_client_cert_resolver(Arc::new(CertResolver::new(client).expect("resolver")));
    c.resumption = rustls::client::Resumption::disabled();
    c.alpn_protocols = vec![b"h2".to_vec()];
    let mut s = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("tls13")
        .with_client_cert_verifier(Arc::new(AcceptAny))
        .with_cert_resolver(Arc::new(CertResolver::new(server).expect("resolver")));
    s.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    s.send_tls13_tickets = 0;
    s.alpn_protocols = vec![b"h2".to_vec()];
    (Arc::new(c), Arc::new(s))
}

/// `count` sequential handshakes over loopback TCP (connect + TLS + one byte each way).
async fn tcp_handshakes(
    client: Arc<rustls::ClientConfig>,
    server: Arc<rustls::ServerConfig>,
    count: usize,
) -> Stats {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let acceptor = tokio_rustls::TlsAcceptor::from(server);
    let server_task = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                break;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(mut tls) = acceptor.accept(tcp).await {
                    let mut b = [0u8; 1];
                    if tls.read_exact(&mut b).await.is_ok() {
                        let _ = tls.write_all(&b).await;
                        let _ = tls.flush().await;
                    }
                }
            });
        }
    });
    let connector = tokio_rustls::TlsConnector::from(client);
    let name = ServerName::try_from("cocoon.invalid").expect("name");
    let warmup = count.div_ceil(10);
    let mut samples = Vec::with_capacity(count);
    for i in 0..count + warmup {
        let t = Instant::now();
        let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
        tcp.set_nodelay(true).expect("nodelay");
        let mut tls = connector
            .connect(name.clone(), tcp)
            .await
            .expect("handshake");
        tls.write_all(b"x").await.expect("write");
        tls.flush().await.expect("flush");
        let mut b = [0u8; 1];
        tls.read_exact(&mut b).await.expect("read");
        if i >= warmup {
            samples.push(t.elapsed());
        }
    }
    server_task.abort();
    samples.sort();
    let total: Duration = samples.iter().sum();
    Stats {
        p50: samples[samples.len() / 2],
        p99: samples[(samples.len() * 99 / 100).min(samples.len() - 1)],
        mean: total / samples.len() as u32,
    }
}

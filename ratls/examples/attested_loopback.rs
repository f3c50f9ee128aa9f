//! Demo: a worker TD dials a proxy TD over mutual RA-TLS on loopback, both on the simulated
//! TDX platform; then three connections that must fail, each with its named reason.
//!
//! Run: `cargo run -p cocoon-ratls --example attested_loopback` (or `ci/demo.sh`).

use std::sync::Arc;
use std::time::Duration;

use attestation::sim::{default_registers, SimPlatform, SimTdx};
use measurements::{Collateral, Policy, TdRegisters, TrustRoot};
use ratls::{
    client_config, issue, server_config, CertResolver, Claims, IssuedCert, PeerVerifier,
    RaTlsClientVerifier, RaTlsServerVerifier, Role, SystemClock,
};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

type Error = Box<dyn std::error::Error + Send + Sync>;

fn td(mrtd_byte: u8, debug: bool) -> TdRegisters {
    let mut r = default_registers();
    r.mrtd = [mrtd_byte; 48];
    r.rtmr[1] = [mrtd_byte ^ 0x5a; 48];
    if debug {
        r.td_attributes[0] |= 1;
    }
    r
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

struct Node {
    resolver: Arc<CertResolver>,
    verifier: Arc<PeerVerifier>,
}

fn node(
    platform: &Arc<SimPlatform>,
    regs: TdRegisters,
    role: Role,
    collateral: &Collateral,
    policy: Policy,
) -> Result<Node, Error> {
    let tee = SimTdx::new(platform.clone(), regs);
    let cert: IssuedCert = issue(
        &tee,
        &Claims::new(role, 1),
        Some(collateral),
        now(),
        ratls::cert::DEFAULT_LIFETIME,
    )?;
    Ok(Node {
        resolver: Arc::new(CertResolver::new(&cert)?),
        verifier: Arc::new(PeerVerifier::new(policy, Arc::new(SystemClock))),
    })
}

/// Runs one connection: `client` dials `server`, sends a line, reads the reply.
async fn connect(server: &Node, client: &Node) -> Result<String, Error> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server_cfg = server_config(
        server.resolver.clone(),
        Some(Arc::new(RaTlsClientVerifier::new(server.verifier.clone()))),
        &[b"h2"],
    )?;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_cfg));
    let server_verifier = server.verifier.clone();
    let server_task = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await?;
        let mut tls = match acceptor.accept(tcp).await {
            Ok(t) => t,
            Err(e) => return Err::<(), Error>(format!("proxy refused the worker: {e}").into()),
        };
        let peer = server_verifier.peer_of(tls.get_ref().1)?;
        println!(
            "  proxy: verified worker  image {}  tcb {}  root {}  role {}",
            peer.image_hash(),
            peer.attestation.tcb_status,
            peer.attestation.root_name,
            peer.claims().role.as_str()
        );
        let mut buf = [0u8; 64];
        let n = tls.read(&mut buf).await?;
        tls.write_all(&buf[..n]).await?;
        tls.shutdown().await?;
        Ok(())
    });

    let client_cfg = client_config(
        Some(client.resolver.clone()),
        Arc::new(RaTlsServerVerifier::new(client.verifier.clone())),
        &[b"h2"],
    )?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client_cfg));
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let result = async {
        let mut tls = connector
            .connect(ServerName::try_from("proxy.cocoon.invalid")?, tcp)
            .await
            .map_err(|e| format!("worker refused the proxy: {e}"))?;
        let peer = client.verifier.peer_of(tls.get_ref().1)?;
        println!(
            "  worker: verified proxy  image {}  tcb {}  root {}  role {}",
            peer.image_hash(),
            peer.attestation.tcb_status,
            peer.attestation.root_name,
            peer.claims().role.as_str()
        );
        tls.write_all(b"register worker").await?;
        let mut reply = Vec::new();
        tls.read_to_end(&mut reply).await?;
        Ok::<String, Error>(String::from_utf8_lossy(&reply).into_owned())
    }
    .await;
    let server_result = tokio::time::timeout(Duration::from_secs(5), server_task).await;
    // The side that rejected knows the reason; the other side only sees a TLS alert.
    match (result, server_result) {
        (Ok(reply), Ok(Ok(Ok(())))) => Ok(reply),
        (Err(client_err), Ok(Ok(Err(server_err)))) if client_err.to_string().contains("alert") => {
            Err(server_err)
        }
        (Err(client_err), _) => Err(client_err),
        (Ok(_), Ok(Ok(Err(server_err)))) => Err(server_err),
        (Ok(_), other) => Err(format!("proxy task: {other:?}").into()),
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Error> {
    let platform = Arc::new(SimPlatform::generate()?);
    let collateral = Collateral::new(platform.collateral(now() - 60, 24 * 3600)?)?;
    let sim_root = TrustRoot::new("cocoon-simulated-root", platform.root_ca_der().to_vec());
    let (worker_regs, proxy_regs) = (td(0x11, false), td(0x22, false));
    println!(
        "simulated TDX platform, root sha256 {}",
        hex::encode(sim_root.fingerprint())
    );
    println!("worker image {}", worker_regs.image_hash());
    println!("proxy  image {}", proxy_regs.image_hash());

    let proxy_policy = Policy::simulated(sim_root.clone()).with_images([worker_regs.image_hash()]);
    let worker_policy = Policy::simulated(sim_root.clone()).with_images([proxy_regs.image_hash()]);
    let proxy = node(
        &platform,
        proxy_regs,
        Role::Proxy,
        &collateral,
        proxy_policy.clone(),
    )?;
    let worker = node(
        &platform,
        worker_regs,
        Role::Worker,
        &collateral,
        worker_policy,
    )?;

    println!("\n1. worker dials proxy, both attested:");
    let reply = connect(&proxy, &worker).await?;
    println!("  echo over the attested channel: {reply:?}");

    println!("\n2. a debug build of the worker dials the proxy:");
    let debug_worker = node(
        &platform,
        td(0x11, true),
        Role::Worker,
        &collateral,
        Policy::simulated(sim_root.clone()).with_images([proxy_regs.image_hash()]),
    )?;
    report(connect(&proxy, &debug_worker).await);

    println!("\n3. a worker with an image the proxy does not know:");
    let unknown = node(
        &platform,
        td(0x33, false),
        Role::Worker,
        &collateral,
        Policy::simulated(sim_root.clone()).with_images([proxy_regs.image_hash()]),
    )?;
    report(connect(&proxy, &unknown).await);

    println!("\n4. a worker with production policy (Intel root only) dials the simulated proxy:");
    let strict_worker = node(
        &platform,
        worker_regs,
        Role::Worker,
        &collateral,
        Policy::production().with_images([proxy_regs.image_hash()]),
    )?;
    report(connect(&proxy, &strict_worker).await);
    Ok(())
}

fn report(result: Result<String, Error>) {
    match result {
        Ok(reply) => {
            println!("  UNEXPECTED: connection succeeded ({reply:?})");
            std::process::exit(1);
        }
        Err(e) => println!("  refused as expected: {e}"),
    }
}

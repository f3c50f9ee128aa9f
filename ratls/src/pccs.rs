//! Collateral from a PCCS (or Intel's PCS itself): [`PccsSource`], a [`CollateralSource`]
//! over the Intel SGX/TDX provisioning certification API v4.
//!
//! For a quote, the source reads the platform's FMSPC and PCK CA from the quote's PCK
//! certificate ([`measurements::collateral::pck_identity`]) and fetches:
//!
//! | item | request | issuer chain header |
//! |---|---|---|
//! | PCK CRL | `GET {url}/sgx/certification/v4/pckcrl?ca={platform,processor}&encoding=der` | `SGX-PCK-CRL-Issuer-Chain` |
//! | TCB info | `GET {url}/tdx/certification/v4/tcb?fmspc={FMSPC}` | `TCB-Info-Issuer-Chain` (or `SGX-TCB-Info-Issuer-Chain`) |
//! | QE identity | `GET {url}/tdx/certification/v4/qe/identity` | `SGX-Enclave-Identity-Issuer-Chain` |
//! | root CA CRL | `GET {url}/sgx/certification/v4/rootcacrl` (a PCCS; DER or hex text), else the CRL distribution point of the root certificate that ends the QE identity chain | — |
//!
//! (`sgx` instead of `tdx` for an SGX quote.) Issuer chains are URL-encoded PEM. The signed
//! documents are kept byte for byte: the `tcbInfo` and `enclaveIdentity` members are cut from
//! the response text, never re-serialized.
//!
//! # Trust
//!
//! The service is not trusted for integrity. Fetched collateral is used only if the quote it
//! was fetched for verifies against it at the current time under the configured roots (for a
//! TD's own collateral: Intel's root), so a service that serves a wrongly signed TCB info, or
//! collateral for another platform, gets a named [`PccsError::Rejected`] and nothing is
//! cached. Expired or not-yet-valid collateral is [`PccsError::Stale`]. TLS (optional; a
//! private CA via `ca_file`, Mozilla's roots otherwise) protects availability and freshness
//! only.
//!
//! # Caching and refresh
//!
//! Verified collateral is kept per (TEE, FMSPC, CA) in memory and, with `cache_dir`, on disk
//! (one JSON file each, written atomically), so a restart does not need the service. A copy is
//! refetched when it is older than `refresh_secs` or expires within `refresh_secs`; a copy that
//! is still valid is served when a refetch fails (and the failure is logged), at most one
//! attempt per [`RETRY_SECS`]. Refresh is driven by use: a service asks at every certificate
//! issuance, a verifier at every handshake that needs it.
//!
//! # Blocking
//!
//! [`CollateralSource::collateral_for`] is synchronous (rustls verifiers and certificate
//! issuance call it). A fetch runs on a thread of its own with a current-thread runtime and
//! is bounded by `timeout_secs`; the caller's thread waits for it. Only a miss or a refresh
//! fetches.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use attestation::{CollateralSource, PccsConfig};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{HeaderMap, Request, Uri};
use hyper_util::rt::TokioIo;
use measurements::collateral::QuoteCollateralV3;
use measurements::collateral::{pck_identity, PckIdentity};
use measurements::verify::verify_evidence;
use measurements::{Collateral, CollateralError, Rejection, TrustRoot};

use crate::Clock;

/// Largest response body read (bytes). Real TCB info is about 10 KiB, a PCK CRL a few KiB.
pub const MAX_BODY: usize = 1 << 20;
/// After a failed or refused refetch, the next attempt waits this long (a valid copy is
/// served meanwhile).
pub const RETRY_SECS: u64 = 60;

/// Why a PCCS gave no usable collateral.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PccsError {
    #[error("pccs config: {0}")]
    Config(String),
    #[error("quote names no platform: {0}")]
    Quote(CollateralError),
    #[error("pccs {url}: unreachable: {detail}")]
    Unreachable { url: String, detail: String },
    #[error("pccs {url}: no answer within {secs} s")]
    Timeout { url: String, secs: u64 },
    #[error("pccs {url}: HTTP {status}")]
    Status { url: String, status: u16 },
    #[error("pccs {url}: response has no {header} header")]
    MissingHeader { url: String, header: &'static str },
    #[error("pccs {url}: {item}: {detail}")]
    Malformed {
        url: String,
        item: &'static str,
        detail: String,
    },
    #[error("collateral from the pccs is stale: {item} expired at {next_update} (now {now})")]
    Stale {
        item: &'static str,
        next_update: u64,
        now: u64,
    },
    #[error("collateral from the pccs is not valid yet: {item} issued at {issued_at} (now {now})")]
    NotYetValid {
        item: &'static str,
        issued_at: u64,
        now: u64,
    },
    #[error("the quote does not verify against the pccs's collateral: {0}")]
    Rejected(Rejection),
}

/// Collateral from a PCCS-compatible service, cached and refreshed (see the module docs).
#[derive(Debug)]
pub struct PccsSource {
    base: String,
    tls: Option<Arc<rustls::ClientConfig>>,
    timeout: Duration,
    refresh_secs: u64,
    cache_dir: Option<PathBuf>,
    roots: Vec<TrustRoot>,
    clock: Arc<dyn Clock>,
    entries: Mutex<HashMap<PckIdentity, Entry>>,
    stats: Mutex<PccsStats>,
}

/// Counters of a [`PccsSource`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PccsStats {
    /// Complete fetches (four or five requests each) that returned verified collateral.
    pub fetched: u64,
    /// Fetches that failed or were refused.
    pub failed: u64,
    /// Answers from the memory or disk cache.
    pub cached: u64,
}

#[derive(Clone, Debug)]
struct Entry {
    /// When the copy was fetched (0: never, e.g. only a failed attempt is known).
    fetched_at: u64,
    collateral: Option<Collateral>,
    last_attempt: u64,
}

impl PccsSource {
    /// A source for `config`; relative paths (`ca_file`, `cache_dir`) are resolved against
    /// `base_dir`. Fetched collateral must verify under `roots` (Intel's in production).
    pub fn new(
        config: &PccsConfig,
        base_dir: &Path,
        roots: Vec<TrustRoot>,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, PccsError> {
        let bad = |detail: String| PccsError::Config(format!("url {:?}: {detail}", config.url));
        let mut base = config.url.trim_end_matches('/').to_string();
        for suffix in ["/sgx/certification/v4", "/tdx/certification/v4"] {
            if let Some(b) = base.strip_suffix(suffix) {
                base = b.to_string();
            }
        }
        let uri: Uri = base.parse().map_err(|_| bad("not a URL".into()))?;
        if uri.host().is_none() {
            return Err(bad("no host".into()));
        }
        if uri.query().is_some() {
            return Err(bad("a base URL takes no query".into()));
        }
        let tls = match (uri.scheme_str(), &config.ca_file) {
            (Some("http"), None) => None,
            (Some("http"), Some(_)) => {
                return Err(bad("ca_file given for a plain http URL".into()))
            }
            (Some("https"), ca) => Some(tls_config(ca.as_ref().map(|f| base_dir.join(f)))?),
            _ => return Err(bad("scheme must be http or https".into())),
        };
        if config.timeout_secs == 0 {
            return Err(PccsError::Config("timeout_secs must be at least 1".into()));
        }
        if roots.is_empty() {
            return Err(PccsError::Config(
                "no trusted root to check collateral".into(),
            ));
        }
        Ok(Self {
            base,
            tls,
            timeout: Duration::from_secs(config.timeout_secs),
            refresh_secs: config.refresh_secs,
            cache_dir: config.cache_dir.as_ref().map(|d| base_dir.join(d)),
            roots,
            clock,
            entries: Mutex::new(HashMap::new()),
            stats: Mutex::new(PccsStats::default()),
        })
    }

    /// The counters so far.
    pub fn stats(&self) -> PccsStats {
        *lock(&self.stats)
    }

    /// Verified collateral for `quote` at the clock's time: from the cache while it is fresh,
    /// else fetched (a valid cached copy is served if the fetch fails).
    pub fn collateral_for_quote(&self, quote: &[u8]) -> Result<Collateral, PccsError> {
        let id = pck_identity(quote).map_err(PccsError::Quote)?;
        let now = self.clock.now();
        let cached = self.cached(&id);
        let valid = cached
            .as_ref()
            .and_then(|e| e.collateral.clone())
            .filter(|c| measurements::verify::check_windows(c, now).is_ok());
        if let (Some(c), Some(e)) = (&valid, &cached) {
            let fresh = now < e.fetched_at.saturating_add(self.refresh_secs)
                && now.saturating_add(self.refresh_secs) <= c.expires_at();
            let retried_recently = now < e.last_attempt.saturating_add(RETRY_SECS);
            if fresh || retried_recently {
                lock(&self.stats).cached += 1;
                return Ok(c.clone());
            }
        }
        let result = self
            .fetch_blocking(&id)
            .and_then(|c| self.check(quote, c, now));
        match result {
            Ok(c) => {
                lock(&self.stats).fetched += 1;
                self.store(&id, &c, now);
                Ok(c)
            }
            Err(e) => {
                lock(&self.stats).failed += 1;
                self.note_attempt(&id, now);
                match valid {
                    Some(c) => {
                        tracing::warn!(error = %e, fmspc = %id.fmspc_hex(),
                            "pccs refresh failed; serving the cached collateral while it is valid");
                        Ok(c)
                    }
                    None => Err(e),
                }
            }
        }
    }

    /// `collateral` if `quote` verifies against it at `now` (validity windows included).
    fn check(
        &self,
        quote: &[u8],
        collateral: Collateral,
        now: u64,
    ) -> Result<Collateral, PccsError> {
        // verify_evidence checks the validity windows first; those are named as such.
        verify_evidence(quote, &collateral, now, &self.roots).map_err(window_rejection)?;
        Ok(collateral)
    }

    fn cached(&self, id: &PckIdentity) -> Option<Entry> {
        if let Some(e) = lock(&self.entries).get(id) {
            return Some(e.clone());
        }
        let path = self.cache_path(id)?;
        let entry = match read_cache_file(&path) {
            Ok(Some(e)) => e,
            Ok(None) => return None,
            Err(detail) => {
                tracing::warn!(path = %path.display(), %detail, "ignoring unreadable collateral cache file");
                return None;
            }
        };
        lock(&self.entries).insert(*id, entry.clone());
        Some(entry)
    }

    fn store(&self, id: &PckIdentity, collateral: &Collateral, now: u64) {
        let entry = Entry {
            fetched_at: now,
            collateral: Some(collateral.clone()),
            last_attempt: now,
        };
        lock(&self.entries).insert(*id, entry);
        if let Some(path) = self.cache_path(id) {
            if let Err(e) = write_cache_file(&path, now, collateral) {
                tracing::warn!(path = %path.display(), error = %e, "collateral cache not written");
            }
        }
    }

    fn note_attempt(&self, id: &PckIdentity, now: u64) {
        lock(&self.entries)
            .entry(*id)
            .or_insert(Entry {
                fetched_at: 0,
                collateral: None,
                last_attempt: now,
            })
            .last_attempt = now;
    }

    fn cache_path(&self, id: &PckIdentity) -> Option<PathBuf> {
        let tee = if id.tdx { "tdx" } else { "sgx" };
        self.cache_dir.as_ref().map(|d| {
            d.join(format!(
                "collateral-{tee}-{}-{}.json",
                id.fmspc_hex(),
                id.ca.as_str()
            ))
        })
    }

    /// Runs [`PccsSource::fetch`] on a thread of its own (the caller may be inside a tokio
    /// runtime, and must not be blocked longer than the timeout).
    fn fetch_blocking(&self, id: &PckIdentity) -> Result<Collateral, PccsError> {
        let fetcher = Fetcher {
            base: self.base.clone(),
            tls: self.tls.clone(),
        };
        let (id, timeout, base) = (*id, self.timeout, self.base.clone());
        block_on_own_thread("pccs-fetch", async move {
            tokio::time::timeout(timeout, fetcher.fetch(&id))
                .await
                .unwrap_or(Err(PccsError::Timeout {
                    url: base,
                    secs: timeout.as_secs(),
                }))
        })
        .unwrap_or_else(|detail| {
            Err(PccsError::Unreachable {
                url: self.base.clone(),
                detail,
            })
        })
    }
}

impl CollateralSource for PccsSource {
    fn collateral_for(&self, quote: &[u8]) -> Result<Collateral, String> {
        self.collateral_for_quote(quote).map_err(|e| e.to_string())
    }
}

/// Gives a real TD's opened TEE the collateral source its `[tee.pccs]` names (Intel's root
/// checks what it fetches). No-op for other TEE configs.
pub fn attach(
    tee_config: &attestation::config::TeeConfig,
    tee: &mut attestation::config::OpenedTee,
    base_dir: &Path,
    clock: Arc<dyn Clock>,
) -> Result<(), PccsError> {
    if let attestation::config::TeeConfig::Tdx {
        pccs: Some(config), ..
    } = tee_config
    {
        let source = PccsSource::new(config, base_dir, vec![TrustRoot::intel()], clock)?;
        tee.collateral_source = Some(Arc::new(source));
    }
    Ok(())
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs `fut` to completion on a thread of its own with a current-thread runtime, for
/// synchronous callers that may themselves be inside a tokio runtime (certificate issuance,
/// rustls verifiers). `Err` says why it could not run (thread, runtime, panic).
pub(crate) fn block_on_own_thread<T: Send + 'static>(
    name: &str,
    fut: impl std::future::Future<Output = T> + Send + 'static,
) -> Result<T, String> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map(|rt| rt.block_on(fut))
                .map_err(|e| format!("runtime: {e}"))
        })
        .map_err(|e| format!("thread: {e}"))?
        .join()
        .unwrap_or_else(|_| Err(format!("{name} thread panicked")))
}

/// A window rejection as [`PccsError::Stale`] / [`PccsError::NotYetValid`]; any other
/// rejection as [`PccsError::Rejected`].
fn window_rejection(r: Rejection) -> PccsError {
    match r {
        Rejection::CollateralExpired {
            item,
            next_update,
            now,
        } => PccsError::Stale {
            item,
            next_update,
            now,
        },
        Rejection::CollateralNotYetValid {
            item,
            issued_at,
            now,
        } => PccsError::NotYetValid {
            item,
            issued_at,
            now,
        },
        other => PccsError::Rejected(other),
    }
}

pub(crate) fn tls_config(ca_file: Option<PathBuf>) -> Result<Arc<rustls::ClientConfig>, PccsError> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        Some(path) => {
            let pem = std::fs::read(&path)
                .map_err(|e| PccsError::Config(format!("ca_file {}: {e}", path.display())))?;
            let certs = measurements::verify::pem_certs(&pem);
            if certs.is_empty() {
                return Err(PccsError::Config(format!(
                    "ca_file {}: no PEM certificate",
                    path.display()
                )));
            }
            for der in certs {
                roots
                    .add(der.into())
                    .map_err(|e| PccsError::Config(format!("ca_file {}: {e}", path.display())))?;
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| PccsError::Config(format!("tls: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// One HTTP answer: status, headers, body (at most [`MAX_BODY`] bytes).
struct Answer {
    url: String,
    status: u16,
    headers: HeaderMap,
    body: Bytes,
}

impl Answer {
    fn ok(self) -> Result<Self, PccsError> {
        if (200..300).contains(&self.status) {
            Ok(self)
        } else {
            Err(PccsError::Status {
                url: self.url,
                status: self.status,
            })
        }
    }

    /// The URL-decoded value of the first present header of `names`.
    fn chain_header(&self, names: &[&'static str]) -> Result<String, PccsError> {
        let value = names
            .iter()
            .find_map(|n| self.headers.get(*n))
            .ok_or_else(|| PccsError::MissingHeader {
                url: self.url.clone(),
                header: names[0],
            })?;
        let decoded = percent_decode(value.as_bytes())
            .filter(|pem| pem.contains("-----BEGIN CERTIFICATE-----"))
            .ok_or_else(|| self.malformed(names[0], "not a URL-encoded PEM chain".into()))?;
        Ok(decoded)
    }

    fn text(&self, item: &'static str) -> Result<&str, PccsError> {
        std::str::from_utf8(&self.body).map_err(|_| self.malformed(item, "not UTF-8".into()))
    }

    fn malformed(&self, item: &'static str, detail: String) -> PccsError {
        PccsError::Malformed {
            url: self.url.clone(),
            item,
            detail,
        }
    }
}

/// The HTTP side of a [`PccsSource`] (moved onto the fetch thread).
struct Fetcher {
    base: String,
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl Fetcher {
    async fn fetch(&self, id: &PckIdentity) -> Result<Collateral, PccsError> {
        let tee = if id.tdx { "tdx" } else { "sgx" };
        let base = &self.base;

        let crl = self
            .get(&format!(
                "{base}/sgx/certification/v4/pckcrl?ca={}&encoding=der",
                id.ca.as_str()
            ))
            .await?
            .ok()?;
        let pck_crl_issuer_chain = crl.chain_header(&["SGX-PCK-CRL-Issuer-Chain"])?;
        let pck_crl = der_or_hex(&crl, "pck crl")?;

        let tcb = self
            .get(&format!(
                "{base}/{tee}/certification/v4/tcb?fmspc={}",
                id.fmspc_hex()
            ))
            .await?
            .ok()?;
        let tcb_info_issuer_chain =
            tcb.chain_header(&["TCB-Info-Issuer-Chain", "SGX-TCB-Info-Issuer-Chain"])?;
        let (tcb_info, tcb_info_signature) = signed_member(&tcb, "tcb info", "tcbInfo")?;

        let qe = self
            .get(&format!("{base}/{tee}/certification/v4/qe/identity"))
            .await?
            .ok()?;
        let qe_identity_issuer_chain = qe.chain_header(&["SGX-Enclave-Identity-Issuer-Chain"])?;
        let (qe_identity, qe_identity_signature) =
            signed_member(&qe, "qe identity", "enclaveIdentity")?;

        let root_ca_crl = self.root_ca_crl(&qe_identity_issuer_chain).await?;

        let raw = QuoteCollateralV3 {
            pck_crl_issuer_chain,
            root_ca_crl,
            pck_crl,
            tcb_info_issuer_chain,
            tcb_info,
            tcb_info_signature,
            qe_identity_issuer_chain,
            qe_identity,
            qe_identity_signature,
            pck_certificate_chain: None,
        };
        Collateral::new(raw).map_err(|e| PccsError::Malformed {
            url: self.base.clone(),
            item: "collateral",
            detail: e.to_string(),
        })
    }

    /// The root CA CRL: a PCCS serves it; Intel's PCS does not, and then it comes from the
    /// CRL distribution point of the root certificate ending `chain`.
    async fn root_ca_crl(&self, chain: &str) -> Result<Vec<u8>, PccsError> {
        let url = format!("{}/sgx/certification/v4/rootcacrl", self.base);
        let answer = self.get(&url).await?;
        if answer.status != 404 {
            return der_or_hex(&answer.ok()?, "root ca crl");
        }
        let certs = measurements::verify::pem_certs(chain.as_bytes());
        let dp = certs
            .last()
            .and_then(|der| crl_distribution_point(der))
            .ok_or_else(|| PccsError::Malformed {
                url: url.clone(),
                item: "root ca crl",
                detail: "HTTP 404, and the root certificate names no CRL distribution point".into(),
            })?;
        let answer = self.get(&dp).await?.ok()?;
        der_or_hex(&answer, "root ca crl")
    }

    async fn get(&self, url: &str) -> Result<Answer, PccsError> {
        let unreachable = |detail: String| PccsError::Unreachable {
            url: url.to_string(),
            detail,
        };
        // Another host than the PCCS (Intel's CRL distribution point) uses Mozilla's roots.
        let tls = |uri: &Uri| match (&self.tls, uri.host() == base_host(&self.base).as_deref()) {
            (Some(t), true) => Ok(t.clone()),
            _ => tls_config(None).map_err(|e| e.to_string()),
        };
        let (status, headers, body) =
            http_request(url, hyper::Method::GET, None, Bytes::new(), MAX_BODY, tls)
                .await
                .map_err(unreachable)?;
        Ok(Answer {
            url: url.to_string(),
            status,
            headers,
            body,
        })
    }
}

/// One HTTP/1.1 request to `url` (`http` or `https`; an IP literal or a name), with
/// `content_type` and `body` if given, the answer's body read up to `max_body` bytes. `tls`
/// gives the client configuration for an `https` URL. Errors are one line of text.
pub(crate) async fn http_request(
    url: &str,
    method: hyper::Method,
    content_type: Option<&str>,
    body: Bytes,
    max_body: usize,
    tls: impl FnOnce(&Uri) -> Result<Arc<rustls::ClientConfig>, String>,
) -> Result<(u16, HeaderMap, Bytes), String> {
    let uri: Uri = url.parse().map_err(|_| "not a valid URL".to_string())?;
    let host = uri.host().ok_or("no host")?.to_string();
    let https = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => return Err("scheme must be http or https".into()),
    };
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let bare_host = host.trim_start_matches('[').trim_end_matches(']');
    let tcp = tokio::net::TcpStream::connect((bare_host, port))
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let path = uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".into());
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header(
            hyper::header::HOST,
            uri.authority().map_or(host.as_str(), |a| a.as_str()),
        )
        .header(hyper::header::ACCEPT, "*/*");
    if let Some(ct) = content_type {
        req = req.header(hyper::header::CONTENT_TYPE, ct);
    }
    let req = req
        .body(Full::new(body))
        .map_err(|e| format!("request: {e}"))?;
    if https {
        let tls = tls(&uri)?;
        let name = rustls::pki_types::ServerName::try_from(bare_host.to_string())
            .map_err(|e| format!("server name: {e}"))?;
        let stream = tokio_rustls::TlsConnector::from(tls)
            .connect(name, tcp)
            .await
            .map_err(|e| format!("tls: {e}"))?;
        exchange(stream, req, max_body).await
    } else {
        exchange(tcp, req, max_body).await
    }
}

fn base_host(base: &str) -> Option<String> {
    base.parse::<Uri>().ok()?.host().map(str::to_string)
}

/// One HTTP/1.1 exchange over `io`.
async fn exchange<IO>(
    io: IO,
    req: Request<Full<Bytes>>,
    max_body: usize,
) -> Result<(u16, HeaderMap, Bytes), String>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| format!("http: {e}"))?;
    let conn = tokio::spawn(conn);
    let out = async {
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| format!("http: {e}"))?;
        let status = resp.status().as_u16();
        let (parts, body) = resp.into_parts();
        let body = Limited::new(body, max_body)
            .collect()
            .await
            .map_err(|e| format!("body: {e}"))?
            .to_bytes();
        Ok((status, parts.headers, body))
    }
    .await;
    conn.abort();
    out
}

/// A CRL body: DER as served by Intel, or the hex text a PCCS serves for `rootcacrl`.
fn der_or_hex(answer: &Answer, item: &'static str) -> Result<Vec<u8>, PccsError> {
    let body = &answer.body[..];
    if body.first() == Some(&0x30) {
        return Ok(body.to_vec());
    }
    let text = answer.text(item)?.trim();
    hex::decode(text)
        .ok()
        .filter(|der| der.first() == Some(&0x30))
        .ok_or_else(|| answer.malformed(item, "neither DER nor hex-encoded DER".into()))
}

/// `(member text exactly as served, signature bytes)` of a `{"<member>": {...}, "signature":
/// "<hex>"}` response.
fn signed_member(
    answer: &Answer,
    item: &'static str,
    member: &str,
) -> Result<(String, Vec<u8>), PccsError> {
    let text = answer.text(item)?;
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| answer.malformed(item, e.to_string()))?;
    let signature = value
        .get("signature")
        .and_then(|s| s.as_str())
        .and_then(|s| hex::decode(s).ok())
        .ok_or_else(|| answer.malformed(item, "no hex \"signature\"".into()))?;
    let raw = raw_member(text, member)
        .filter(|raw| raw.starts_with('{'))
        .ok_or_else(|| answer.malformed(item, format!("no \"{member}\" object")))?;
    Ok((raw.to_string(), signature))
}

/// The text of member `key` of the top-level JSON object `json` (which must already be known
/// to be valid JSON), exactly as written. Keys are compared as written (no unescaping).
pub fn raw_member<'a>(json: &'a str, key: &str) -> Option<&'a str> {
    let b = json.as_bytes();
    let mut i = skip_ws(b, 0);
    if b.get(i) != Some(&b'{') {
        return None;
    }
    i += 1;
    loop {
        i = skip_ws(b, i);
        if b.get(i) != Some(&b'"') {
            return None;
        }
        let key_end = string_end(b, i)?;
        let name = json.get(i + 1..key_end - 1)?;
        i = skip_ws(b, key_end);
        if b.get(i) != Some(&b':') {
            return None;
        }
        let start = skip_ws(b, i + 1);
        let end = value_end(b, start)?;
        if name == key {
            return json.get(start..end);
        }
        i = skip_ws(b, end);
        match b.get(i) {
            Some(b',') => i += 1,
            _ => return None,
        }
    }
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while matches!(b.get(i), Some(b' ' | b'\t' | b'\n' | b'\r')) {
        i += 1;
    }
    i
}

/// Index just past the string starting at `b[i] == '"'`.
fn string_end(b: &[u8], i: usize) -> Option<usize> {
    let mut j = i + 1;
    loop {
        match b.get(j)? {
            b'\\' => j += 2,
            b'"' => return Some(j + 1),
            _ => j += 1,
        }
    }
}

/// Index just past the JSON value starting at `b[i]`.
fn value_end(b: &[u8], i: usize) -> Option<usize> {
    match b.get(i)? {
        b'"' => string_end(b, i),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut j = i;
            loop {
                match b.get(j)? {
                    b'"' => {
                        j = string_end(b, j)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(j + 1);
                        }
                    }
                    _ => {}
                }
                j += 1;
            }
        }
        _ => {
            let mut j = i;
            while !matches!(
                b.get(j),
                None | Some(b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r')
            ) {
                j += 1;
            }
            (j > i).then_some(j)
        }
    }
}

/// Decodes `%XX` escapes (and nothing else: a PCCS does not use `+` for spaces in these
/// headers). `None` on a bad escape or non-UTF-8 result.
pub fn percent_decode(s: &[u8]) -> Option<String> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(s[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The first URI of the CRL distribution points extension of the certificate `der`.
pub fn crl_distribution_point(der: &[u8]) -> Option<String> {
    use x509_parser::extensions::{DistributionPointName, GeneralName, ParsedExtension};
    use x509_parser::prelude::FromDer;
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(der).ok()?;
    cert.extensions()
        .iter()
        .find_map(|ext| match ext.parsed_extension() {
            ParsedExtension::CRLDistributionPoints(points) => {
                points
                    .points
                    .iter()
                    .find_map(|p| match &p.distribution_point {
                        Some(DistributionPointName::FullName(names)) => {
                            names.iter().find_map(|n| match n {
                                GeneralName::URI(uri) => Some(uri.to_string()),
                                _ => None,
                            })
                        }
                        _ => None,
                    })
            }
            _ => None,
        })
}

fn read_cache_file(path: &Path) -> Result<Option<Entry>, String> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.to_string()),
    };
    #[derive(serde::Deserialize)]
    struct File {
        fetched_at: u64,
        collateral: QuoteCollateralV3,
    }
    let f: File = serde_json::from_slice(&bytes).map_err(|e| e.to_string())?;
    let collateral = Collateral::new(f.collateral).map_err(|e| e.to_string())?;
    Ok(Some(Entry {
        fetched_at: f.fetched_at,
        collateral: Some(collateral),
        last_attempt: 0,
    }))
}

/// Writes the cache file atomically (a temporary file in the same directory, renamed).
fn write_cache_file(path: &Path, fetched_at: u64, c: &Collateral) -> std::io::Result<()> {
    #[derive(serde::Serialize)]
    struct File<'a> {
        fetched_at: u64,
        collateral: &'a QuoteCollateralV3,
    }
    let json = serde_json::to_vec(&File {
        fetched_at,
        collateral: &c.raw,
    })
    .map_err(std::io::Error::other)?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    std::fs::write(&tmp, json)?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_member_keeps_the_text() {
        let j = r#" { "a" : [1, {"x":"}"}], "tcbInfo":{"k": "v\"}" , "n":[ ]} ,"signature":"00"}"#;
        assert_eq!(raw_member(j, "tcbInfo"), Some(r#"{"k": "v\"}" , "n":[ ]}"#));
        assert_eq!(raw_member(j, "a"), Some(r#"[1, {"x":"}"}]"#));
        assert_eq!(raw_member(j, "signature"), Some(r#""00""#));
        assert_eq!(raw_member(j, "missing"), None);
        assert_eq!(raw_member(r#"{"n": 12}"#, "n"), Some("12"));
        for bad in [
            "",
            "[]",
            "{",
            r#"{"a""#,
            r#"{"a":"#,
            r#"{"a":{"#,
            r#"{"a":1 "b":2}"#,
        ] {
            assert_eq!(raw_member(bad, "b"), None, "{bad:?}");
        }
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(
            percent_decode(b"-----BEGIN%20CERTIFICATE-----%0Aab%2B").as_deref(),
            Some("-----BEGIN CERTIFICATE-----\nab+")
        );
        for bad in [&b"%"[..], b"%4", b"%zz", b"%ff"] {
            assert_eq!(percent_decode(bad), None, "{bad:?}");
        }
    }
}

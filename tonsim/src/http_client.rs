//! [`HttpChain`]: [`TonChain`] over a toncenter-style TON HTTP API v2 (JSON shapes in
//! [`crate::toncenter`]), on hyper 1, one HTTP/1.1 connection per request.
//!
//! `http://` and `https://` (rustls with the ring provider; server certificates checked against
//! Mozilla's roots from `webpki-roots`, or roots the caller gives with
//! [`HttpChain::with_roots`]). The live network has not been exercised; the tests run this
//! code against [`crate::http_server`] on loopback, over plain HTTP and over TLS.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};

use crate::chain_config::ApiKey;
use crate::toncenter;
use crate::tonchain::{AccountState, ChainError, ChainTx, StackValue, TonChain};
use ton::address::Addr;

/// Largest response body read (bytes).
pub const MAX_RESPONSE: usize = 16 << 20;
/// Transactions asked for per `getTransactions` page (by default).
pub const PAGE: usize = 50;
/// toncenter's error code for an external message the chain does not accept.
const CANNOT_APPLY: i64 = 500;

/// A TON HTTP API v2 client.
#[derive(Debug, Clone)]
pub struct HttpChain {
    base: String,
    host: String,
    port: u16,
    path: String,
    api_key: Option<ApiKey>,
    timeout: Duration,
    page: usize,
    tls: Option<Arc<rustls::ClientConfig>>,
}

/// A rustls client config (ring provider, HTTP/1.1 ALPN) trusting `roots`.
fn tls_config(roots: rustls::RootCertStore) -> Result<Arc<rustls::ClientConfig>, ChainError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ChainError::Invalid {
            what: "tls config",
            reason: e.to_string(),
        })?
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// Sends `req` over `io` (one HTTP/1.1 exchange); returns the status and the body, read up
/// to [`MAX_RESPONSE`] bytes.
async fn exchange<IO>(io: IO, req: Request<Full<Bytes>>) -> Result<(StatusCode, Bytes), String>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| e.to_string())?;
    let conn = tokio::spawn(conn);
    let result = async {
        let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status();
        let body = Limited::new(resp.into_body(), MAX_RESPONSE)
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok((status, body))
    }
    .await;
    conn.abort();
    result
}

impl HttpChain {
    /// A client for the API at `url` (e.g. `http://127.0.0.1:8081/api/v2`).
    pub fn new(url: &str, api_key: Option<ApiKey>) -> Result<HttpChain, ChainError> {
        let bad = |reason: &str| ChainError::Invalid {
            what: "api url",
            reason: format!("{url}: {reason}"),
        };
        let uri: hyper::Uri = url.parse().map_err(|_| bad("not a URL"))?;
        let (tls, default_port) = match uri.scheme_str() {
            Some("http") => (None, 80),
            Some("https") => {
                let roots = rustls::RootCertStore {
                    roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
                };
                (Some(tls_config(roots)?), 443)
            }
            _ => return Err(bad("scheme must be http or https")),
        };
        let host = uri.host().ok_or_else(|| bad("no host"))?.to_string();
        let port = uri.port_u16().unwrap_or(default_port);
        let path = uri.path().trim_end_matches('/').to_string();
        Ok(HttpChain {
            base: url.trim_end_matches('/').to_string(),
            host,
            port,
            path,
            api_key,
            timeout: Duration::from_secs(30),
            page: PAGE,
            tls,
        })
    }

    /// For an `https://` URL: trust `roots` instead of Mozilla's (a private CA, tests).
    pub fn with_roots(mut self, roots: rustls::RootCertStore) -> Result<HttpChain, ChainError> {
        if self.tls.is_none() {
            return Err(ChainError::Invalid {
                what: "api url",
                reason: format!("{}: roots given for a plain http URL", self.base),
            });
        }
        self.tls = Some(tls_config(roots)?);
        Ok(self)
    }

    /// Sets the per-request timeout (connect through body).
    pub fn with_timeout(mut self, timeout: Duration) -> HttpChain {
        self.timeout = timeout;
        self
    }

    /// Sets the `getTransactions` page size (at least 1).
    pub fn with_page_size(mut self, page: usize) -> HttpChain {
        self.page = page.max(1);
        self
    }

    /// Calls `endpoint`; returns the unwrapped `result`.
    async fn call(
        &self,
        endpoint: &'static str,
        query: &[(&str, String)],
        body: Option<Value>,
    ) -> Result<Value, ChainError> {
        match tokio::time::timeout(self.timeout, self.call_inner(endpoint, query, body)).await {
            Ok(r) => r,
            Err(_) => Err(self.unreachable(endpoint, "timed out".into())),
        }
    }

    fn unreachable(&self, endpoint: &'static str, reason: String) -> ChainError {
        ChainError::Unreachable {
            endpoint,
            url: self.base.clone(),
            reason,
        }
    }

    async fn call_inner(
        &self,
        endpoint: &'static str,
        query: &[(&str, String)],
        body: Option<Value>,
    ) -> Result<Value, ChainError> {
        let down = |e: &dyn std::fmt::Display| self.unreachable(endpoint, e.to_string());
        let mut target = format!("{}/{endpoint}", self.path);
        for (i, (k, v)) in query.iter().enumerate() {
            target.push(if i == 0 { '?' } else { '&' });
            target.push_str(&format!("{k}={}", toncenter::query_encode(v)));
        }
        let stream = tokio::net::TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| down(&e))?;
        let mut req = Request::builder()
            .uri(target)
            .header(hyper::header::HOST, format!("{}:{}", self.host, self.port))
            .header(hyper::header::ACCEPT, "application/json");
        if let Some(key) = &self.api_key {
            req = req.header("X-API-Key", key.0.as_str());
        }
        let req = match body {
            Some(b) => req
                .method(Method::POST)
                .header(hyper::header::CONTENT_TYPE, "application/json")
                .body(Full::new(Bytes::from(b.to_string()))),
            None => req.method(Method::GET).body(Full::new(Bytes::new())),
        }
        .map_err(|e| ChainError::Invalid {
            what: "request",
            reason: e.to_string(),
        })?;
        let (status, bytes) = match &self.tls {
            None => exchange(stream, req).await,
            Some(cfg) => {
                let name = rustls::pki_types::ServerName::try_from(self.host.clone())
                    .map_err(|e| down(&e))?;
                let tls = tokio_rustls::TlsConnector::from(cfg.clone())
                    .connect(name, stream)
                    .await
                    .map_err(|e| down(&format!("tls: {e}")))?;
                exchange(tls, req).await
            }
        }
        .map_err(|e| down(&e))?;
        let malformed = |reason: String| ChainError::Malformed { endpoint, reason };
        let v: Value = match serde_json::from_slice(&bytes) {
            Ok(v) => v,
            Err(e) if status.is_success() => return Err(malformed(format!("not JSON: {e}"))),
            Err(_) => {
                return Err(ChainError::Api {
                    endpoint,
                    code: i64::from(status.as_u16()),
                    message: format!("http status {status}"),
                })
            }
        };
        match toncenter::open(v) {
            Ok(result) => Ok(result),
            Err(Ok((code, message))) => Err(ChainError::Api {
                endpoint,
                code: if code == 0 {
                    i64::from(status.as_u16())
                } else {
                    code
                },
                message: message.chars().take(512).collect(),
            }),
            Err(Err(reason)) => Err(malformed(reason)),
        }
    }

    async fn account_and_time(&self, addr: &Addr) -> Result<(AccountState, u32), ChainError> {
        const EP: &str = "getAddressInformation";
        let r = self
            .call(EP, &[("address", addr.to_string())], None)
            .await?;
        toncenter::parse_account(&r).map_err(|reason| ChainError::Malformed {
            endpoint: EP,
            reason,
        })
    }
}

#[async_trait]
impl TonChain for HttpChain {
    async fn send_message(&self, boc: &[u8]) -> Result<(), ChainError> {
        match self
            .call("sendBoc", &[], Some(json!({"boc": STANDARD.encode(boc)})))
            .await
        {
            Ok(_) => Ok(()),
            Err(ChainError::Api { code, message, .. }) if code == CANNOT_APPLY => {
                Err(ChainError::Rejected { reason: message })
            }
            Err(e) => Err(e),
        }
    }

    async fn account(&self, addr: &Addr) -> Result<AccountState, ChainError> {
        Ok(self.account_and_time(addr).await?.0)
    }

    async fn run_get_method(
        &self,
        addr: &Addr,
        method: &str,
    ) -> Result<Vec<StackValue>, ChainError> {
        const EP: &str = "runGetMethod";
        let body = json!({"address": addr.to_string(), "method": method, "stack": []});
        let r = self.call(EP, &[], Some(body)).await?;
        toncenter::parse_run_result(&r)
            .map_err(|reason| ChainError::Malformed {
                endpoint: EP,
                reason,
            })?
            .map_err(|exit_code| ChainError::GetMethod {
                addr: *addr,
                method: method.to_string(),
                exit_code,
            })
    }

    async fn transactions(
        &self,
        addr: &Addr,
        since_lt: u64,
        limit: usize,
    ) -> Result<Vec<ChainTx>, ChainError> {
        const EP: &str = "getTransactions";
        let malformed = |reason: String| ChainError::Malformed {
            endpoint: EP,
            reason,
        };
        let mut out: Vec<ChainTx> = Vec::new();
        let mut start = None;
        while out.len() < limit {
            let page = self.page.min(limit - out.len());
            let mut q = vec![("address", addr.to_string()), ("limit", page.to_string())];
            if let Some(crate::tonchain::TxId { lt, hash }) = start {
                q.push(("lt", u64::to_string(&lt)));
                q.push(("hash", toncenter::hash_b64(&hash)));
            }
            let r = self.call(EP, &q, None).await?;
            let items = r
                .as_array()
                .ok_or_else(|| malformed("not an array".into()))?;
            let mut next = None;
            for item in items.iter().take(page) {
                let t = toncenter::parse_tx(item).map_err(malformed)?;
                if out.last().is_some_and(|p| p.id.lt <= t.id.lt) {
                    return Err(malformed("transactions not in descending lt order".into()));
                }
                if t.id.lt <= since_lt {
                    return Ok(out);
                }
                next = t.prev;
                out.push(t);
            }
            if items.len() < page {
                break;
            }
            match next {
                Some(n) => start = Some(n),
                None => break,
            }
        }
        Ok(out)
    }

    async fn now(&self) -> Result<u32, ChainError> {
        // `sync_utime`: the time of the block the API's state is read from.
        let zero = Addr {
            workchain: -1,
            hash: [0; 32],
        };
        Ok(self.account_and_time(&zero).await?.1)
    }
}

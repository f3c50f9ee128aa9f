//! Test support: a local HTTP server that serves a [`LocalChain`] through the toncenter v2
//! endpoints [`crate::http_client::HttpChain`] uses (`sendBoc`, `getAddressInformation`,
//! `runGetMethod`, `getTransactions`), so the real client code runs end to end on loopback.
//! Not a production server: no authentication (an `X-API-Key` is ignored); plain HTTP, or TLS
//! with a certificate the test provides.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::local::LocalChain;
use crate::toncenter;
use crate::tonchain::{ChainError, TonChain, TxId};
use ton::address::Addr;

/// Largest request body accepted (bytes).
const MAX_REQUEST: usize = 1 << 20;
/// Largest `limit` of `getTransactions` (toncenter's is 100 too).
const MAX_LIMIT: usize = 100;

/// A running server; stopped when dropped.
#[derive(Debug)]
pub struct LocalServer {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl LocalServer {
    /// Binds 127.0.0.1 on a free port and serves `chain` over plain HTTP.
    pub async fn start(chain: LocalChain) -> std::io::Result<LocalServer> {
        LocalServer::bind(chain, None).await
    }

    /// The same over TLS with `config` (a test certificate; the client must trust its root).
    pub async fn start_tls(
        chain: LocalChain,
        config: Arc<rustls::ServerConfig>,
    ) -> std::io::Result<LocalServer> {
        LocalServer::bind(chain, Some(tokio_rustls::TlsAcceptor::from(config))).await
    }

    async fn bind(
        chain: LocalChain,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> std::io::Result<LocalServer> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let chain = chain.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    match tls {
                        None => serve(stream, chain).await,
                        Some(acceptor) => {
                            if let Ok(s) = acceptor.accept(stream).await {
                                serve(s, chain).await;
                            }
                        }
                    }
                });
            }
        });
        Ok(LocalServer { addr, task })
    }

    /// The socket address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The API base URL (`http://127.0.0.1:PORT/api/v2`).
    pub fn url(&self) -> String {
        format!("http://{}/api/v2", self.addr)
    }
}

/// Serves one connection.
async fn serve<IO>(io: IO, chain: LocalChain)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc = hyper::service::service_fn(move |req| {
        let chain = chain.clone();
        async move { Ok::<_, Infallible>(handle(&chain, req).await) }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(io), svc)
        .await;
}

impl Drop for LocalServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn reply(status: StatusCode, v: &Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(v.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

/// An `{"ok": false}` reply (HTTP status = code, as toncenter does).
fn fail(code: u16, message: &str) -> Response<Full<Bytes>> {
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    reply(status, &toncenter::err(code.into(), message))
}

async fn handle(chain: &LocalChain, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_string();
    let query: Vec<(String, String)> = req
        .uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            Some((k.to_string(), toncenter::query_decode(v)?))
        })
        .collect();
    let method = req.method().clone();
    let body = match Limited::new(req.into_body(), MAX_REQUEST).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return fail(400, "request body too large or unreadable"),
    };
    let param = |name: &str| {
        query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let json_body = || serde_json::from_slice::<Value>(&body).ok();
    let endpoint = path.strip_prefix("/api/v2/").unwrap_or("");
    let result = match (method, endpoint) {
        (Method::POST, "sendBoc") => send_boc(chain, json_body()).await,
        (Method::GET, "getAddressInformation") => address_info(chain, param("address")).await,
        (Method::POST, "runGetMethod") => run_get(chain, json_body()).await,
        (Method::GET, "getTransactions") => {
            let q = [param("limit"), param("lt"), param("hash")];
            transactions(chain, param("address"), q).await
        }
        _ => Err((404, format!("unknown endpoint {path}"))),
    };
    match result {
        Ok(v) => reply(StatusCode::OK, &toncenter::ok(v)),
        Err((code, message)) => fail(code, &message),
    }
}

type Handled = Result<Value, (u16, String)>;

fn addr_of(text: Option<String>) -> Result<Addr, (u16, String)> {
    let text = text.ok_or((416, "address: missing".to_string()))?;
    Addr::parse_any(&text).map_err(|e| (416, format!("address {text:?}: {e}")))
}

fn internal(e: ChainError) -> (u16, String) {
    (500, e.to_string())
}

async fn send_boc(chain: &LocalChain, body: Option<Value>) -> Handled {
    let boc = body
        .as_ref()
        .and_then(|b| b["boc"].as_str())
        .and_then(|s| STANDARD.decode(s).ok())
        .ok_or((400, "boc: missing or not base64".to_string()))?;
    match chain.send_message(&boc).await {
        Ok(()) => Ok(serde_json::json!({"@type": "ok"})),
        Err(ChainError::Rejected { reason }) => Err((
            500,
            format!("cannot apply external message to current state: {reason}"),
        )),
        Err(e @ ChainError::Invalid { .. }) => Err((400, e.to_string())),
        Err(e) => Err(internal(e)),
    }
}

async fn address_info(chain: &LocalChain, address: Option<String>) -> Handled {
    let addr = addr_of(address)?;
    let a = chain.account(&addr).await.map_err(internal)?;
    let now = chain.now().await.map_err(internal)?;
    Ok(toncenter::render_account(&a, now))
}

async fn run_get(chain: &LocalChain, body: Option<Value>) -> Handled {
    let body = body.ok_or((400, "body: not JSON".to_string()))?;
    let addr = addr_of(body["address"].as_str().map(str::to_string))?;
    let method = body["method"]
        .as_str()
        .ok_or((400, "method: missing".to_string()))?;
    if body["stack"].as_array().is_some_and(|s| !s.is_empty()) {
        return Err((400, "stack: arguments are not supported".into()));
    }
    let r = chain.get_method(&addr, method).await.map_err(internal)?;
    Ok(toncenter::render_run_result(&r))
}

async fn transactions(
    chain: &LocalChain,
    address: Option<String>,
    [limit, lt, hash]: [Option<String>; 3],
) -> Handled {
    let addr = addr_of(address)?;
    let limit = match limit {
        Some(l) => l
            .parse::<usize>()
            .map_err(|_| (400, format!("limit {l:?}")))?,
        None => 10,
    }
    .min(MAX_LIMIT);
    let start = match (lt, hash) {
        (Some(lt), Some(hash)) => Some(TxId {
            lt: lt.parse().map_err(|_| (400, format!("lt {lt:?}")))?,
            hash: toncenter::parse_hash(&hash).ok_or((400, format!("hash {hash:?}")))?,
        }),
        (None, None) => None,
        _ => return Err((400, "lt and hash go together".into())),
    };
    let txs = chain.history(&addr, start, limit).await.map_err(internal)?;
    Ok(Value::Array(txs.iter().map(toncenter::render_tx).collect()))
}

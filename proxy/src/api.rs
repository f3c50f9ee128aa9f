//! The client port: TLS 1.3 where the proxy presents its RA-TLS certificate and clients
//! present account certificates ([`ratls::account`]); HTTP/2 or HTTP/1.1 (ALPN, with
//! protocol sniffing). Routes:
//!
//! | method, path | answer |
//! |---|---|
//! | `GET /v1/models` | OpenAI model list of the live registry |
//! | `POST /v1/chat/completions`, `POST /v1/completions` | relayed SSE stream ([`crate::relay`]) |
//! | anything else | 404 `not_found` |

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use protocol::{ApiError, Endpoint, ErrorKind};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use crate::relay::{self, error_response, json_response, ResponseBody};
use crate::server::State;

/// Accepts client connections until `shutdown` fires, then waits for the open ones.
pub(crate) async fn accept_loop(
    state: Arc<State>,
    listener: TcpListener,
    acceptor: TlsAcceptor,
    shutdown: watch::Receiver<bool>,
) {
    crate::server::accept_connections(listener, shutdown, "client", true, move |tcp, addr| {
        handle(state.clone(), acceptor.clone(), tcp, addr)
    })
    .await;
}

async fn handle(state: Arc<State>, acceptor: TlsAcceptor, tcp: TcpStream, addr: SocketAddr) {
    let tls = match tokio::time::timeout(state.config.handshake_timeout, acceptor.accept(tcp)).await
    {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => return client_refused(&state, addr, &e.to_string()),
        Err(_) => return client_refused(&state, addr, "tls handshake timed out"),
    };
    let account = ratls::account::peer_account(tls.get_ref().1);
    let svc_state = state.clone();
    let service = service_fn(move |req| {
        let state = svc_state.clone();
        let account = account.clone();
        async move { Ok::<_, Infallible>(route(&state, account.as_deref(), req).await) }
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new());
    builder.http2().timer(TokioTimer::new());
    if let Err(e) = builder.serve_connection(TokioIo::new(tls), service).await {
        tracing::debug!(peer = %addr, error = %e, "client connection ended with an error");
    }
}

fn client_refused(state: &State, addr: SocketAddr, detail: &str) {
    if let Some(suppressed) = state.stats.log_limiter.allow("client_tls", Instant::now()) {
        tracing::info!(
            peer = %addr,
            detail,
            suppressed_since_last = suppressed,
            "client tls handshake failed"
        );
    }
}

/// Dispatches one client request and counts its status.
pub async fn route(
    state: &Arc<State>,
    account: Option<&str>,
    req: Request<Incoming>,
) -> Response<ResponseBody> {
    let resp = dispatch(state, account, req).await;
    state.stats.count_status(resp.status().as_u16());
    resp
}

async fn dispatch(
    state: &Arc<State>,
    account: Option<&str>,
    req: Request<Incoming>,
) -> Response<ResponseBody> {
    let Some(account) = account else {
        return error_response(&ApiError::new(
            ErrorKind::Unauthorized,
            "no account certificate on the connection",
        ));
    };
    let path = req.uri().path();
    if path == protocol::paths::MODELS {
        return if req.method() == Method::GET {
            models(state)
        } else {
            not_allowed(req.method(), protocol::paths::MODELS)
        };
    }
    if let Some(endpoint) = Endpoint::from_path(path) {
        return if req.method() == Method::POST {
            relay::completions(state, account, endpoint, req).await
        } else {
            not_allowed(req.method(), endpoint.path())
        };
    }
    let shown: String = path.chars().take(64).collect();
    error_response(&ApiError::new(
        ErrorKind::NotFound,
        format!("no route for {shown:?}"),
    ))
}

fn not_allowed(method: &Method, path: &str) -> Response<ResponseBody> {
    error_response(&ApiError::new(
        ErrorKind::NotFound,
        format!("method {method} is not served on {path}"),
    ))
}

/// The OpenAI model list of the connected workers.
pub fn models(state: &State) -> Response<ResponseBody> {
    let data: Vec<serde_json::Value> = state
        .registry
        .models()
        .into_iter()
        .map(|(id, created)| {
            serde_json::json!({
                "id": id,
                "object": "model",
                "created": created,
                "owned_by": "cocoon",
            })
        })
        .collect();
    let body = serde_json::json!({ "object": "list", "data": data });
    json_response(
        StatusCode::OK,
        serde_json::to_vec(&body).unwrap_or_default(),
    )
}

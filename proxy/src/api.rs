//! The client port: TLS 1.3 where the proxy presents its RA-TLS certificate and clients
//! present account certificates ([`ratls::account`]); HTTP/2 or HTTP/1.1 (ALPN, with
//! protocol sniffing). Routes:
//!
//! | method, path | answer |
//! |---|---|
//! | `GET /v1/models` | OpenAI model list of the live registry |
//! | `GET /v1/models/{id}` | one model object (the id may contain `/`, percent-decoded), or 404 `model_not_found` ([`protocol::models`]) |
//! | `GET /healthz`, `GET /readyz` | liveness and readiness ([`crate::health`]); any account certificate (no funds needed), not counted in the status statistics |
//! | `POST /v1/chat/completions`, `POST /v1/completions` | relayed SSE stream ([`crate::relay`]) |
//! | anything else | 404 `not_found` |
//!
//! Connections are capped in total and per peer IP (refused ones are closed right after
//! `accept`), HTTP/1.1 request heads and whole request bodies have deadlines, HTTP/2 streams,
//! windows and header lists are bounded, and a connection with no request in progress is
//! closed after `client_idle_timeout_secs` ([`crate::limits`]).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::pin;
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

use crate::limits::{self, Activity, ClientRefusal, ConnPermit, Tracked};
use crate::relay;
use crate::response::{error_response, json_response, ResponseBody};
use crate::state::State;

/// Accepts client connections until `shutdown` fires, then waits for the open ones.
pub(crate) async fn accept_loop(
    state: Arc<State>,
    listener: TcpListener,
    acceptor: TlsAcceptor,
    shutdown: watch::Receiver<bool>,
) {
    let stop = shutdown.clone();
    crate::listen::accept_connections(listener, shutdown, "client", true, move |tcp, addr| {
        // The connection caps are checked here, in the accept loop: a refused connection is
        // closed before any byte is read from it.
        let admitted = match state.limits.connections.try_acquire(addr.ip()) {
            Ok(permit) => Some((permit, tcp)),
            Err(refusal) => {
                drop(tcp);
                limits::count(
                    &state.stats,
                    refusal,
                    Some(addr),
                    "connection closed at accept",
                );
                None
            }
        };
        let (state, acceptor, stop) = (state.clone(), acceptor.clone(), stop.clone());
        async move {
            if let Some((permit, tcp)) = admitted {
                handle(state, acceptor, tcp, addr, permit, stop).await;
            }
        }
    })
    .await;
}

/// The HTTP/1.1 and HTTP/2 settings of client connections (see [`crate::config::ClientLimits`]).
fn builder(state: &State) -> auto::Builder<TokioExecutor> {
    let c = &state.config.client;
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(c.header_timeout)
        .max_buf_size(c.max_header_bytes as usize);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(c.h2_max_streams)
        .initial_stream_window_size(c.h2_stream_window_bytes)
        .initial_connection_window_size(c.h2_connection_window_bytes)
        .max_header_list_size(c.max_header_bytes)
        .max_pending_accept_reset_streams(protocol::http2_limits::MAX_PENDING_ACCEPT_RESETS)
        .max_local_error_reset_streams(protocol::http2_limits::MAX_LOCAL_ERROR_RESETS);
    builder
}

async fn handle(
    state: Arc<State>,
    acceptor: TlsAcceptor,
    tcp: TcpStream,
    addr: SocketAddr,
    _permit: ConnPermit,
    mut stop: watch::Receiver<bool>,
) {
    let tls = match tokio::time::timeout(state.config.handshake_timeout, acceptor.accept(tcp)).await
    {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            let detail = e.to_string();
            return limits::count(
                &state.stats,
                ClientRefusal::TlsHandshake,
                Some(addr),
                &detail,
            );
        }
        Err(_) => {
            return limits::count(
                &state.stats,
                ClientRefusal::HandshakeTimeout,
                Some(addr),
                "tls handshake timed out",
            )
        }
    };
    // Shared by every request of the connection (each request's parts hold a clone).
    let account: Option<Arc<str>> = ratls::account::peer_account(tls.get_ref().1).map(Arc::from);
    let activity = Activity::new(Instant::now());
    let svc_state = state.clone();
    let svc_activity = activity.clone();
    let service = service_fn(move |req| {
        let state = svc_state.clone();
        let account = account.clone();
        // Counted from the request head until its response body is dropped.
        let in_flight = svc_activity.start();
        // Boxed: the request's future is ~4 KiB, and HTTP/2 moves it into the stream's task
        // and tokio copies it on spawn and completion; a pointer is cheaper to move (the
        // relay benchmark's proxy CPU per request went down by ~20%).
        Box::pin(async move {
            let resp = route(&state, account.as_ref(), req).await;
            Ok::<_, Infallible>(resp.map(|body| Tracked::new(body, in_flight)))
        })
    });
    let builder = builder(&state);
    let (io, polls) = crate::coalesce::coalesced(tls);
    let conn = pin!(builder.serve_connection(TokioIo::new(io), service));
    let mut conn = polls.count(conn);
    let mut closing = false;
    loop {
        tokio::select! {
            result = &mut conn => {
                if let Err(e) = result {
                    let header_timeout = e
                        .downcast_ref::<hyper::Error>()
                        .is_some_and(hyper::Error::is_timeout);
                    if header_timeout {
                        limits::count(
                            &state.stats,
                            ClientRefusal::HeaderTimeout,
                            Some(addr),
                            "request head not received in time",
                        );
                    } else {
                        tracing::debug!(peer = %addr, error = %e, "client connection ended with an error");
                    }
                }
                break;
            }
            // Nothing in progress for the idle timeout: close (dropping the connection).
            () = activity.idle(state.config.client.idle_timeout) => {
                limits::count(
                    &state.stats,
                    ClientRefusal::IdleTimeout,
                    Some(addr),
                    "no request in progress",
                );
                break;
            }
            // Shutdown: HTTP/2 GOAWAY / no more HTTP/1.1 keep-alive; requests in progress
            // continue (the relay ends them at the drain deadline).
            _ = stop.wait_for(|s| *s), if !closing => {
                closing = true;
                conn.inner_mut().as_mut().graceful_shutdown();
            }
        }
    }
}

/// Dispatches one client request and counts its status (probes are not counted).
pub async fn route(
    state: &Arc<State>,
    account: Option<&Arc<str>>,
    req: Request<Incoming>,
) -> Response<ResponseBody> {
    if let Some(resp) = crate::health::respond(state, req.method(), req.uri().path()) {
        return resp;
    }
    let resp = dispatch(state, account, req).await;
    state.stats.count_status(resp.status().as_u16());
    resp
}

async fn dispatch(
    state: &Arc<State>,
    account: Option<&Arc<str>>,
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
    if path == protocol::paths::WORKERS {
        return if req.method() == Method::GET {
            directory(state, req.uri().query().unwrap_or(""))
        } else {
            not_allowed(req.method(), protocol::paths::WORKERS)
        };
    }
    if path == protocol::paths::CANCEL {
        return if req.method() == Method::POST {
            crate::relay::cancel(state, account, req.headers()).await
        } else {
            not_allowed(req.method(), protocol::paths::CANCEL)
        };
    }
    if path == protocol::paths::CHARGE {
        return if req.method() == Method::GET {
            charge_voucher(state, account).await
        } else {
            not_allowed(req.method(), protocol::paths::CHARGE)
        };
    }
    if let Some(id) = protocol::models::id_from_path(path) {
        return if req.method() == Method::GET {
            match id {
                Ok(id) => model(state, &id),
                Err(e) => error_response(&e),
            }
        } else {
            not_allowed(req.method(), protocol::models::MODEL_PREFIX)
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

/// The OpenAI model object of model `id`, first registered at `created` (unix seconds): the
/// one shape both the list and `GET /v1/models/{id}` answer with.
pub fn model_object(id: &str, created: u64) -> serde_json::Value {
    serde_json::json!({
        "id": id,
        "object": "model",
        "created": created,
        "owned_by": "cocoon",
    })
}

/// The OpenAI model list of the connected workers.
pub fn models(state: &State) -> Response<ResponseBody> {
    let data: Vec<serde_json::Value> = state
        .registry
        .models()
        .iter()
        .map(|(id, created)| model_object(id, *created))
        .collect();
    let body = serde_json::json!({ "object": "list", "data": data });
    json_response(
        StatusCode::OK,
        serde_json::to_vec(&body).unwrap_or_default(),
    )
}

/// The decoded value of `key` in a query string; `None` when absent or malformed.
fn query_value(query: &str, key: &str) -> Option<String> {
    query
        .split('&')
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
        .and_then(tonsim::toncenter::query_decode)
}

/// `GET /cocoon/v1/workers?model=NAME`: the certificates of the live workers of `NAME` that
/// publish end-to-end keys ([`protocol::e2e::Directory`]); 404 `model_not_found` when no
/// worker serves it.
pub fn directory(state: &State, query: &str) -> Response<ResponseBody> {
    use base64::Engine as _;
    let Some(model) = query_value(query, "model").filter(|m| !m.is_empty()) else {
        return error_response(&ApiError::new(
            ErrorKind::InvalidRequest,
            "expected ?model=NAME",
        ));
    };
    if !state.registry.serves(&model) {
        return error_response(&protocol::models::not_found(&model));
    }
    let workers = state
        .registry
        .candidates(&model, &[])
        .iter()
        .filter_map(|w| w.info.e2e.as_ref())
        .take(protocol::e2e::MAX_DIRECTORY)
        .map(|k| protocol::e2e::DirectoryEntry {
            key_hash: k.key_hash.to_string(),
            cert: base64::engine::general_purpose::STANDARD.encode(&k.cert_der),
        })
        .collect();
    let dir = protocol::e2e::Directory { model, workers };
    json_response(StatusCode::OK, serde_json::to_vec(&dir).unwrap_or_default())
}

/// The charge voucher for the connection's account ([`protocol::payout::ChargeVoucher`]):
/// 404 `not_found` without payments, for an account bound to no client contract, or when
/// nothing is due; 503 while the payments engine cannot sign.
pub async fn charge_voucher(state: &State, account: &str) -> Response<ResponseBody> {
    let Some(payments) = &state.payments else {
        return error_response(&ApiError::new(
            ErrorKind::NotFound,
            "this proxy runs without payments: there are no charge vouchers",
        ));
    };
    match payments.charge_voucher(account).await {
        Ok(Some((contract, tokens, body))) => {
            let voucher = protocol::payout::ChargeVoucher {
                proxy_contract: payments.proxy_contract().to_string(),
                client_contract: contract.to_string(),
                tokens,
                voucher: ton::boc::encode_hex(&body),
            };
            json_response(
                StatusCode::OK,
                serde_json::to_vec(&voucher).unwrap_or_default(),
            )
        }
        Ok(None) => error_response(&ApiError::new(
            ErrorKind::NotFound,
            "no charge is due: the account is bound to no client contract, or the chain has \
             charged everything anchored",
        )),
        Err(e) => error_response(&ApiError::new(
            ErrorKind::Unavailable,
            format!("payments cannot sign now: {e}"),
        )),
    }
}

/// Model `id` if a connected worker serves it, else 404 `model_not_found`.
pub fn model(state: &State, id: &str) -> Response<ResponseBody> {
    match state.registry.models().get(id) {
        Some(created) => json_response(
            StatusCode::OK,
            serde_json::to_vec(&model_object(id, *created)).unwrap_or_default(),
        ),
        None => error_response(&protocol::models::not_found(id)),
    }
}

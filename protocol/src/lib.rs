//! cocoon-protocol: what clients, proxies and workers say to each other. Pure: types,
//! encoders and parsers over bytes and header maps; no I/O, no clock.
//!
//! # Connections
//! * client → proxy: HTTP/2 or HTTP/1.1 over TLS 1.3; the proxy presents RA-TLS evidence,
//!   the client an Ed25519 account certificate. OpenAI-style requests with cocoon metadata in
//!   headers ([`meta`]); the body is passed through untouched.
//! * worker → proxy: the worker dials out, mutual RA-TLS, then HTTP/2 with the **proxy as the
//!   HTTP/2 client** (roles reversed), so the proxy opens many request streams on one attested
//!   connection. The first exchange is [`register::Hello`] → [`register::Registration`].
//!
//! # Responses
//! Between proxy and worker, and between proxy and client, responses always stream as
//! server-sent events ([`sse`]): OpenAI `chat.completion.chunk` / `text_completion` objects as
//! `data:` events, then one `event: cocoon-usage` with the token counts ([`usage::Usage`]),
//! then `data: [DONE]`. A failure after the first byte is an `event: cocoon-error` with an
//! [`error::ApiError`]. The client library turns the stream into a single JSON response when
//! its caller did not ask for streaming, and strips cocoon events. [`response`] builds the
//! JSON, error and event-stream responses every service sends.
//!
//! # Versions
//! [`PROTOCOL_VERSION`] is sent in every request (`cocoon-protocol-version`) and negotiated at
//! registration ([`register::negotiate`]). A peer refuses versions it does not support with a
//! typed error naming both sides' versions.

pub mod e2e;
pub mod error;
pub mod guest;
pub mod health;
pub mod json;
pub mod meta;
pub mod models;
pub mod payout;
pub mod register;
pub mod response;
pub mod role;
pub mod sse;
pub mod usage;

pub use error::{ApiError, ErrorKind};
pub use meta::{Endpoint, RequestId, RequestMeta};
pub use register::{Hello, ModelAdvert, Registration};
pub use role::Role;
pub use usage::Usage;

/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u32 = 1;
/// Largest OpenAI request body any hop accepts (client, proxy, worker): 4 MiB. Larger bodies
/// get 413 `payload_too_large` at the first hop that sees them.
pub const MAX_REQUEST_BODY: usize = 4 << 20;

/// Versions this build accepts from peers.
pub const SUPPORTED_VERSIONS: &[u32] = &[1];

/// Reset limits of cocoon's HTTP/2 servers (the proxy's client port, the worker's link to its
/// proxy), set explicitly so that the protection does not hang on a library default (h2's and
/// hyper's defaults today; `proxy/tests/floods.rs`).
pub mod http2_limits {
    /// Streams a peer may have reset before the server took them, at once, before the
    /// connection is closed with GOAWAY `ENHANCE_YOUR_CALM`: the rapid-reset flood
    /// (CVE-2023-44487). Ordinary cancellations reset streams the server has almost always
    /// taken already, which do not count.
    pub const MAX_PENDING_ACCEPT_RESETS: usize = 20;
    /// Streams the server may reset for a peer's protocol errors before it closes the
    /// connection (RUSTSEC-2024-0003).
    pub const MAX_LOCAL_ERROR_RESETS: usize = 1024;
}

/// Paths on the worker's HTTP/2 service (requested by the proxy).
pub mod paths {
    /// Registration: the proxy POSTs a [`crate::Hello`], the worker answers a
    /// [`crate::Registration`].
    pub const HELLO: &str = "/cocoon/v1/hello";
    /// Liveness probe from the proxy.
    pub const PING: &str = "/cocoon/v1/ping";
    /// Worker discovery for end-to-end encryption (client → proxy, `?model=NAME`): the RA-TLS
    /// certificates of the live workers of a model ([`crate::e2e::Directory`]).
    pub const WORKERS: &str = "/cocoon/v1/workers";
    /// Payout vouchers (proxy → worker, [`crate::payout`]).
    pub const PAYOUT: &str = "/cocoon/v1/payout";
    /// Stops a running generation (POST, header `cocoon-request-id`, and from a proxy to a
    /// worker `cocoon-stream-tag` naming the one generation of that request with the tag it
    /// was sent with, [`crate::meta::H_STREAM_TAG`]): its stream ends at once with the usage
    /// of the work done so far — and, encrypted, a receipt over it — instead of a reset that
    /// leaves that work unbilled. Only the requests of the same connection (worker) or of the
    /// same account (proxy, from a client). 200 `{"stopped": n}`, 404 when nothing runs
    /// under that id.
    pub const CANCEL: &str = "/cocoon/v1/cancel";
    /// The client's charge voucher (client → proxy, GET; [`crate::payout::ChargeVoucher`]):
    /// what a client submits itself once its unpaid usage passes half its stake.
    pub const CHARGE: &str = "/cocoon/v1/charge";
    /// OpenAI chat completions.
    pub const CHAT_COMPLETIONS: &str = "/v1/chat/completions";
    /// OpenAI legacy completions.
    pub const COMPLETIONS: &str = "/v1/completions";
    /// Model list (client → proxy); one model is [`crate::models::MODEL_PREFIX`] + its id.
    pub const MODELS: &str = "/v1/models";
    /// Liveness probe of every service ([`crate::health`]).
    pub const HEALTHZ: &str = "/healthz";
    /// Readiness probe of every service ([`crate::health`]).
    pub const READYZ: &str = "/readyz";
}

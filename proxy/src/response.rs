//! The proxy's response body ([`ResponseBody`]: a complete buffer or a relayed event stream)
//! and the JSON and error responses built with [`protocol::response`].

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use protocol::{response, ApiError};

/// A relayed event stream ([`crate::relay::RelayBody`]), boxed so that this module does not
/// depend on the relay.
pub type StreamBody = Pin<Box<dyn Body<Data = Bytes, Error = Infallible> + Send>>;

/// The response bodies the proxy sends: a complete buffer, or a relayed event stream.
pub enum ResponseBody {
    Full(Option<Bytes>),
    Relay(StreamBody),
}

impl std::fmt::Debug for ResponseBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Full(b) => f
                .debug_tuple("Full")
                .field(&b.as_ref().map(Bytes::len))
                .finish(),
            Self::Relay(_) => f.write_str("Relay(..)"),
        }
    }
}

impl ResponseBody {
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        Self::Full(Some(bytes.into()))
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            Self::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Self::Relay(r) => r.as_mut().poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Full(b) => b.is_none(),
            Self::Relay(r) => r.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            Self::Full(None) => SizeHint::with_exact(0),
            Self::Relay(_) => SizeHint::default(),
        }
    }
}

/// A JSON response.
pub fn json_response(status: StatusCode, body: Vec<u8>) -> Response<ResponseBody> {
    response::json(status, ResponseBody::full(body))
}

/// The OpenAI-style error response for `err`.
pub fn error_response(err: &ApiError) -> Response<ResponseBody> {
    response::error(err).map(ResponseBody::full)
}

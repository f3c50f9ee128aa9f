//! Admission of a client request before it reaches a worker: the funds check before any body
//! byte is read, then the bounded body read (size, deadline, global body budget). The limits
//! themselves and their refusal codes are in [`crate::limits`].

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use http::header::CONTENT_LENGTH;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use protocol::{ApiError, ErrorKind, RequestMeta};

use crate::funds::{affordable, ledger_refusal, reservation_at, Held};
use crate::limits::{count, BodyCharge, ClientRefusal, Rejection, BODY_BUDGET_RETRY_AFTER_SECS};
use crate::state::State;

/// Checks, before any body byte is read, that `account` can pay for the request at the
/// cheapest worker serving `meta.model` (within the price cap), and holds that amount while
/// the body uploads. Unknown accounts are refused as the relay refuses them (402), unless
/// the ledger creates accounts on first use (development).
pub(crate) fn admit(
    state: &Arc<State>,
    account: &str,
    meta: &RequestMeta,
) -> Result<Held, Rejection> {
    let candidates = state.registry.candidates(&meta.model, &[]);
    let affordable = affordable(&state.config, meta, candidates)?;
    let cheapest = affordable
        .iter()
        .map(|w| reservation_at(&state.config, meta, w).1)
        .min()
        .unwrap_or(0);
    match state.ledger.reserve(account, cheapest) {
        Ok(r) => Ok(Held::new(state.clone(), r)),
        Err(e) => {
            let err = ledger_refusal(e);
            if err.kind == ErrorKind::InsufficientFunds {
                count(
                    &state.stats,
                    ClientRefusal::InsufficientFunds,
                    None,
                    &err.message,
                );
            }
            Err(err.into())
        }
    }
}

/// Reads the request body: at most `max_body_bytes`, within `client_body_timeout_secs`,
/// charged to the body budget (the charge lives as long as the returned guard).
pub(crate) async fn read_body(
    state: &State,
    req: Request<Incoming>,
) -> Result<(Bytes, BodyCharge), Rejection> {
    let limit = state.config.max_body_bytes;
    let too_large = || {
        ApiError::new(
            ErrorKind::PayloadTooLarge,
            format!("request body larger than {limit} bytes"),
        )
    };
    let budget = &state.limits.body_budget;
    let over_budget = || {
        count(
            &state.stats,
            ClientRefusal::BodyBudget,
            None,
            "body budget exhausted",
        );
        Rejection {
            error: ApiError::new(
                ErrorKind::NoCapacity,
                format!(
                    "request bodies in memory would exceed client_body_budget_bytes ({} bytes); retry later",
                    state.config.client.body_budget_bytes
                ),
            ),
            status: Some(StatusCode::SERVICE_UNAVAILABLE),
            retry_after_secs: Some(BODY_BUDGET_RETRY_AFTER_SECS),
        }
    };
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large().into());
    }
    let declared = declared.unwrap_or(0);
    let mut charge = budget.charge(declared).ok_or_else(over_budget)?;
    let mut body = req.into_body();
    let mut buf = BytesMut::new();
    let read = async {
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|_| {
                Rejection::from(ApiError::new(
                    ErrorKind::InvalidRequest,
                    "request body: connection failed while reading",
                ))
            })?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            let total = buf.len() + data.len();
            if total > limit {
                return Err(too_large().into());
            }
            if !charge.grow_to(total as u64) {
                return Err(over_budget());
            }
            if buf.is_empty() {
                // usize: declared ≤ limit.
                buf.reserve(usize::try_from(declared).unwrap_or(0).max(data.len()));
            }
            buf.extend_from_slice(&data);
        }
        Ok(())
    };
    let timeout = state.config.client.body_timeout;
    match tokio::time::timeout(timeout, read).await {
        Ok(Ok(())) => Ok((buf.freeze(), charge)),
        Ok(Err(e)) => Err(e),
        Err(_) => {
            let message = format!(
                "request body: {} of {} bytes received within client_body_timeout_secs ({}s)",
                buf.len(),
                if declared > 0 {
                    declared.to_string()
                } else {
                    "?".into()
                },
                timeout.as_secs()
            );
            count(&state.stats, ClientRefusal::BodyTimeout, None, &message);
            Err(Rejection {
                error: ApiError::new(ErrorKind::Timeout, message),
                status: Some(StatusCode::REQUEST_TIMEOUT),
                retry_after_secs: None,
            })
        }
    }
}

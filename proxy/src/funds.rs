//! Paying for a request: the reservation a request needs at a worker, the workers a request
//! can afford within its price cap, and [`Held`], the reservation that is released unless it
//! is committed. Used before the body is read ([`crate::admission::admit`]) and when a worker
//! is picked ([`crate::relay`]).

use std::sync::Arc;

use protocol::{ApiError, ErrorKind, RequestMeta, Usage};

use crate::config::ProxyConfig;
use crate::ledger::{Committed, LedgerError, Reservation};
use crate::registry::Worker;
use crate::state::State;

fn api(kind: ErrorKind, message: impl Into<String>) -> ApiError {
    ApiError::new(kind, message)
}

/// A reservation that is released when dropped, unless it was committed. Whatever ends a
/// request — an error, a retry, the client going away at any point — frees the funds.
pub(crate) struct Held {
    state: Arc<State>,
    reservation: Option<Reservation>,
}

impl Held {
    pub(crate) fn new(state: Arc<State>, reservation: Reservation) -> Self {
        Self {
            state,
            reservation: Some(reservation),
        }
    }

    pub(crate) fn amount(&self) -> u64 {
        self.reservation.as_ref().map_or(0, |r| r.amount)
    }

    pub(crate) fn is_committed(&self) -> bool {
        self.reservation.is_none()
    }

    /// Charges `cost` (capped at the reservation) to the account and `worker`.
    pub(crate) fn commit(
        &mut self,
        cost: u64,
        usage: &Usage,
        worker: &str,
        receipt: Option<(&[u8; 32], &[u8])>,
    ) -> Result<Committed, LedgerError> {
        let r = self
            .reservation
            .take()
            .ok_or(LedgerError::UnknownReservation(0))?;
        match receipt {
            Some(receipt) => {
                self.state
                    .ledger
                    .commit_receipted(&r, cost, usage, Some(worker), receipt)
            }
            None => self.state.ledger.commit(&r, cost, usage, Some(worker)),
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Some(r) = self.reservation.take() {
            if let Err(e) = self.state.ledger.release(&r) {
                tracing::error!(error = %e, "ledger release failed");
            }
        }
    }
}

/// The completion tokens reserved at worker `w` for `meta`, and the reservation (nano-TON).
pub(crate) fn reservation_at(cfg: &ProxyConfig, meta: &RequestMeta, w: &Worker) -> (u32, u64) {
    let budget = w
        .model(&meta.model)
        .map_or(meta.max_tokens, |m| {
            meta.max_tokens.min(m.max_completion_tokens)
        })
        .max(1);
    let amount = cfg.prices.reservation(
        u64::from(cfg.max_prompt_tokens),
        u64::from(budget),
        w.info.price_coefficient_milli,
    );
    (budget, amount)
}

/// The `candidates` whose reservation is within the request's price cap; an error if there
/// are no candidates or none is within the cap.
pub(crate) fn affordable(
    cfg: &ProxyConfig,
    meta: &RequestMeta,
    candidates: Vec<Arc<Worker>>,
) -> Result<Vec<Arc<Worker>>, ApiError> {
    let model = meta.model.as_str();
    if candidates.is_empty() {
        return Err(api(
            ErrorKind::ModelNotFound,
            format!("model {model} is not served by any worker"),
        ));
    }
    if meta.price_cap.is_none() {
        // No cap: every candidate is affordable (no copy of the list).
        return Ok(candidates);
    }
    let reservation = |w: &Worker| reservation_at(cfg, meta, w).1;
    let affordable: Vec<Arc<Worker>> = candidates
        .iter()
        .filter(|w| meta.price_cap.is_none_or(|cap| reservation(w) <= cap))
        .cloned()
        .collect();
    if affordable.is_empty() {
        // The completion tokens are the request's, clamped to the worker's model limit (a
        // request without max_tokens asks for up to that limit).
        let (budget, cheapest) = candidates
            .iter()
            .map(|w| reservation_at(cfg, meta, w))
            .min_by_key(|(_, amount)| *amount)
            .unwrap_or((meta.max_tokens, 0));
        return Err(api(
            ErrorKind::InsufficientFunds,
            format!(
                "price cap {} nano is below the reservation of {cheapest} nano ({} prompt + {budget} completion tokens)",
                meta.price_cap.unwrap_or(0),
                cfg.max_prompt_tokens,
            ),
        ));
    }
    Ok(affordable)
}

/// The client-facing error for a failed reservation (unknown accounts: 402, as for funds).
pub(crate) fn ledger_refusal(e: LedgerError) -> ApiError {
    match e {
        e @ (LedgerError::InsufficientFunds { .. }
        | LedgerError::UnknownAccount { .. }
        | LedgerError::Unbound { .. }) => api(ErrorKind::InsufficientFunds, e.to_string()),
        e @ LedgerError::Stopped(_) => api(ErrorKind::Upstream, e.to_string()),
        e => api(ErrorKind::Internal, e.to_string()),
    }
}

//! The proxy's liveness and readiness probes ([`protocol::health`]), answered on the admin
//! port (loopback, plain HTTP: the operator's and a co-located supervisor's probe) and on the
//! client port. The client port's TLS layer requires an account certificate, so a probe there
//! needs one, but any account key will do: probes need no funds and are not counted in the
//! request statistics.
//!
//! Ready means able to serve a paid request now:
//! * the RA-TLS certificate clients and workers verify has not expired (on the proxy's clock);
//! * at least one attested worker is registered (its connection open);
//! * with payments on, the payments engine is [`Health::Healthy`] (not still syncing with the
//!   chain, not stopped because the chain contradicts the ledger).
//!
//! Every input is state the proxy already holds (the certificate's notAfter, the registry, the
//! engine's health watch): a probe costs no chain call and no attestation.

use http::{Method, Response};
use protocol::health::{self, Probe, Readiness};

use crate::payments::Health;
use crate::response::ResponseBody;
use crate::state::State;

/// Reason: the proxy's own certificate has expired (renewal failing).
pub const CERT_EXPIRED: &str = "ra-tls certificate expired";
/// Reason: no worker to route to.
pub const NO_WORKER: &str = "no attested worker registered";
/// Reason: the payments engine has not read the chain yet.
pub const PAYMENTS_SYNCING: &str = "payments: syncing with the chain";
/// Reason: the payments engine stopped (rollback or clone detected).
pub const PAYMENTS_STOPPED: &str = "payments: stopped, the chain contradicts the ledger";

/// The verdict from the proxy's state (pure).
pub fn verdict(cert_valid: bool, workers: usize, payments: Option<&Health>) -> Readiness {
    let mut r = Readiness::ready();
    if !cert_valid {
        r.missing(CERT_EXPIRED);
    }
    if workers == 0 {
        r.missing(NO_WORKER);
    }
    match payments {
        None | Some(Health::Healthy) => {}
        Some(Health::Syncing) => r.missing(PAYMENTS_SYNCING),
        Some(Health::Fatal(_)) => r.missing(PAYMENTS_STOPPED),
    }
    r
}

/// The proxy's readiness now.
pub fn readiness(state: &State) -> Readiness {
    let cert_valid = state.identity.not_after() > state.clock.now();
    let workers = state
        .registry
        .list()
        .iter()
        .filter(|w| !w.is_closed())
        .count();
    let payments = state.payments.as_ref().map(|p| p.health().borrow().clone());
    verdict(cert_valid, workers, payments.as_ref())
}

/// The answer to a probe request on `path`, or `None` if `path` is not a probe.
pub fn respond(state: &State, method: &Method, path: &str) -> Option<Response<ResponseBody>> {
    let probe = Probe::from_path(path)?;
    let resp = if !Probe::allows(method) {
        health::method_not_allowed()
    } else {
        match probe {
            Probe::Liveness => health::liveness(),
            Probe::Readiness => readiness(state).response(),
        }
    };
    Some(resp.map(ResponseBody::full))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::payments::RollbackError;

    #[test]
    fn every_missing_piece_is_named() {
        assert!(verdict(true, 1, None).is_ready());
        assert!(verdict(true, 2, Some(&Health::Healthy)).is_ready());
        assert_eq!(verdict(true, 0, None).reasons, [NO_WORKER]);
        assert_eq!(verdict(false, 1, None).reasons, [CERT_EXPIRED]);
        assert_eq!(
            verdict(true, 1, Some(&Health::Syncing)).reasons,
            [PAYMENTS_SYNCING]
        );
        let fatal = Health::Fatal(RollbackError::AnchorAhead {
            chain_seqno: 2,
            ledger_seqno: 1,
        });
        assert_eq!(
            verdict(false, 0, Some(&fatal)).reasons,
            [CERT_EXPIRED, NO_WORKER, PAYMENTS_STOPPED]
        );
    }
}

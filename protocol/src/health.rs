//! Liveness and readiness probes, answered the same way by every cocoon service (the client's
//! local endpoint, the proxy, the worker's status port).
//!
//! | route | answer |
//! |---|---|
//! | `GET /healthz` ([`crate::paths::HEALTHZ`]) | 200 `{"status":"ok"}`: the process is up and its event loop answers |
//! | `GET /readyz` ([`crate::paths::READYZ`]) | 200 `{"status":"ready","reasons":[]}`, or 503 `{"status":"not_ready","reasons":["…"]}` naming what is missing |
//!
//! What "ready" means is each service's own check (attested and able to serve); this module
//! only fixes the shape. Both answers are built from cached state: a probe never triggers a
//! chain call or an attestation round trip of its own. They carry no secrets, prompts or
//! account identities, and `Cache-Control: no-store`. Pure: builds `http` values.

use http::header::{CACHE_CONTROL, CONTENT_TYPE};
use http::{HeaderValue, Method, Response, StatusCode};
use serde::{Deserialize, Serialize};

use crate::response::APPLICATION_JSON;

/// The readiness verdict of a service: ready when nothing is missing.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Readiness {
    /// What keeps the service from serving, one short sentence each (empty: ready).
    pub reasons: Vec<String>,
}

impl Readiness {
    /// A ready verdict.
    pub fn ready() -> Self {
        Self::default()
    }

    /// Adds a reason (the service is then not ready).
    pub fn missing(&mut self, reason: impl Into<String>) {
        self.reasons.push(reason.into());
    }

    /// Whether nothing is missing.
    pub fn is_ready(&self) -> bool {
        self.reasons.is_empty()
    }

    /// 200 when ready, 503 otherwise.
    pub fn status(&self) -> StatusCode {
        if self.is_ready() {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        }
    }

    /// `{"status":"ready","reasons":[]}` or `{"status":"not_ready","reasons":[…]}`.
    pub fn to_json(&self) -> Vec<u8> {
        let status = if self.is_ready() {
            "ready"
        } else {
            "not_ready"
        };
        serde_json::to_vec(&serde_json::json!({ "status": status, "reasons": self.reasons }))
            .unwrap_or_default()
    }

    /// The `/readyz` response.
    pub fn response(&self) -> Response<Vec<u8>> {
        probe(self.status(), self.to_json())
    }
}

/// The `/healthz` response: 200 `{"status":"ok"}`.
pub fn liveness() -> Response<Vec<u8>> {
    probe(StatusCode::OK, br#"{"status":"ok"}"#.to_vec())
}

/// Which probe a request names, if any: `GET` or `HEAD` on [`crate::paths::HEALTHZ`] or
/// [`crate::paths::READYZ`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Probe {
    Liveness,
    Readiness,
}

impl Probe {
    /// The probe `path` names (any method); `None` for other paths.
    pub fn from_path(path: &str) -> Option<Self> {
        match path {
            crate::paths::HEALTHZ => Some(Self::Liveness),
            crate::paths::READYZ => Some(Self::Readiness),
            _ => None,
        }
    }

    /// Whether `method` may ask for a probe (`GET`, `HEAD`).
    pub fn allows(method: &Method) -> bool {
        method == Method::GET || method == Method::HEAD
    }
}

/// The 405 for a probe path asked with another method (`Allow: GET, HEAD`).
pub fn method_not_allowed() -> Response<Vec<u8>> {
    let mut resp = probe(
        StatusCode::METHOD_NOT_ALLOWED,
        br#"{"status":"method_not_allowed"}"#.to_vec(),
    );
    resp.headers_mut()
        .insert(http::header::ALLOW, HeaderValue::from_static("GET, HEAD"));
    resp
}

fn probe(status: StatusCode, body: Vec<u8>) -> Response<Vec<u8>> {
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(APPLICATION_JSON));
    resp.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(body: &[u8]) -> serde_json::Value {
        serde_json::from_slice(body).unwrap()
    }

    #[test]
    fn liveness_is_ok() {
        let r = liveness();
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(json(r.body()), serde_json::json!({"status": "ok"}));
        assert_eq!(r.headers()[CACHE_CONTROL], "no-store");
        assert_eq!(r.headers()[CONTENT_TYPE], APPLICATION_JSON);
    }

    #[test]
    fn readiness_names_what_is_missing() {
        let ready = Readiness::ready().response();
        assert_eq!(ready.status(), StatusCode::OK);
        assert_eq!(
            json(ready.body()),
            serde_json::json!({"status": "ready", "reasons": []})
        );
        let mut r = Readiness::ready();
        r.missing("no attested worker registered");
        r.missing("payments: syncing with the chain");
        let resp = r.response();
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            json(resp.body()),
            serde_json::json!({"status": "not_ready", "reasons": [
                "no attested worker registered", "payments: syncing with the chain"]})
        );
    }

    #[test]
    fn probes_by_path_and_method() {
        assert_eq!(Probe::from_path("/healthz"), Some(Probe::Liveness));
        assert_eq!(Probe::from_path("/readyz"), Some(Probe::Readiness));
        assert_eq!(Probe::from_path("/readyz/"), None);
        assert_eq!(Probe::from_path("/v1/healthz"), None);
        assert!(Probe::allows(&Method::GET));
        assert!(Probe::allows(&Method::HEAD));
        assert!(!Probe::allows(&Method::POST));
        let r = method_not_allowed();
        assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(r.headers()[http::header::ALLOW], "GET, HEAD");
    }
}

//! A service's own RA-TLS identity: the certificate it presents (issued from its TEE with its
//! [`Claims`]), served to rustls by one [`CertResolver`], renewed before it expires.
//!
//! The proxy and the worker both use this type:
//!
//! * [`Identity::issue`] issues the first certificate (blocking: asks the TEE for a quote).
//! * [`Identity::renew_if_due`] renews when the certificate expires within its renewal margin
//!   (a quarter of the lifetime, at least a minute) of `now`.
//! * [`Identity::run_renewal`] does that in the background: it sleeps until the certificate is
//!   due (re-checking at least every minute, since the wall clock may jump), retries a failed
//!   renewal after [`Identity::retry`], and returns on the shutdown signal.
//! * [`Identity::subscribe`] reports each new certificate ([`CertInfo`]), so that long-lived
//!   connections can move onto it.
//!
//! Time is a parameter: the clock is injected ([`Clock`]); the renewal loop's waits use tokio's
//! timer (tests pause it).

use std::sync::Arc;
use std::time::Duration;

use attestation::config::OpenedTee;
use tokio::sync::watch;

use crate::{CertResolver, Claims, Clock, IssuedCert, RatlsError};

/// How long a failed renewal waits before the next attempt, by default.
pub const DEFAULT_RETRY: Duration = Duration::from_secs(30);

/// The longest the renewal loop sleeps between checks of the clock.
const MAX_CHECK_INTERVAL: u64 = 60;

/// What subscribers learn about the certificate currently served (no key material).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertInfo {
    /// 0 for the first certificate, incremented by each renewal.
    pub generation: u64,
    /// DER SubjectPublicKeyInfo of the certificate's key.
    pub spki_der: Vec<u8>,
    /// Validity, Unix seconds.
    pub not_before: u64,
    pub not_after: u64,
}

impl CertInfo {
    fn of(issued: &IssuedCert, generation: u64) -> Self {
        Self {
            generation,
            spki_der: issued.spki_der.clone(),
            not_before: issued.not_before,
            not_after: issued.not_after,
        }
    }
}

/// Claims that change with each certificate: keys published in the claims (a worker's
/// end-to-end keys) that rotate when the certificate is renewed. Two phases, so that a
/// renewal that fails to issue rotates nothing.
pub trait ClaimsRotation: Send + Sync + std::fmt::Debug {
    /// The claims for the next certificate, derived from the current ones (new keys may be
    /// prepared here; they are not in use until [`ClaimsRotation::installed`]).
    fn next(&self, current: &Claims) -> Claims;
    /// The certificate carrying `claims` (the last [`ClaimsRotation::next`]) is now served.
    fn installed(&self, claims: &Claims);
}

/// A service's certificate source: issue, renewal, subscription.
#[derive(Debug)]
pub struct Identity {
    tee: OpenedTee,
    claims: std::sync::Mutex<Claims>,
    rotation: Option<Arc<dyn ClaimsRotation>>,
    lifetime: Duration,
    /// Renew when the certificate expires within this many seconds.
    margin: u64,
    retry: Duration,
    clock: Arc<dyn Clock>,
    resolver: Arc<CertResolver>,
    current: watch::Sender<CertInfo>,
}

impl Identity {
    /// Issues the first certificate at `clock.now()`, valid for `lifetime` and renewed in its
    /// last quarter. Blocking (asks the TEE for a quote).
    pub fn issue(
        tee: OpenedTee,
        claims: Claims,
        lifetime: Duration,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, RatlsError> {
        let issued = issue_at(&tee, &claims, lifetime, clock.now())?;
        let claims = issued.claims.clone().unwrap_or(claims);
        let resolver = Arc::new(CertResolver::new(&issued)?);
        let (current, _) = watch::channel(CertInfo::of(&issued, 0));
        Ok(Self {
            tee,
            claims: std::sync::Mutex::new(claims),
            rotation: None,
            lifetime,
            margin: (lifetime.as_secs() / 4).max(60),
            retry: DEFAULT_RETRY,
            clock,
            resolver,
            current,
        })
    }

    /// Sets how long a failed renewal waits before the next attempt ([`DEFAULT_RETRY`]).
    pub fn with_retry(mut self, retry: Duration) -> Self {
        self.retry = retry;
        self
    }

    /// How long a failed renewal waits before the next attempt.
    pub fn retry(&self) -> Duration {
        self.retry
    }

    /// Renewals take their claims from `rotation` (see [`ClaimsRotation`]).
    pub fn with_rotation(mut self, rotation: Arc<dyn ClaimsRotation>) -> Self {
        self.rotation = Some(rotation);
        self
    }

    /// The claims of the certificate currently served (as it carries them: with the GPU
    /// evidence hash when the TEE has a GPU source).
    pub fn claims(&self) -> Claims {
        self.claims
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Serves the current certificate to rustls (server and client side).
    pub fn resolver(&self) -> Arc<CertResolver> {
        self.resolver.clone()
    }

    /// The certificate currently served.
    pub fn current(&self) -> CertInfo {
        self.current.borrow().clone()
    }

    /// Reports every renewal: the receiver sees the current certificate and changes with each
    /// new one.
    pub fn subscribe(&self) -> watch::Receiver<CertInfo> {
        self.current.subscribe()
    }

    /// Renews the certificate if it expires within the renewal margin of `now`; returns
    /// whether it was renewed. Blocking (asks the TEE for a quote).
    pub fn renew_if_due(&self, now: u64) -> Result<bool, RatlsError> {
        if !self.resolver.needs_renewal(now, self.margin) {
            return Ok(false);
        }
        self.renew_at(now)?;
        Ok(true)
    }

    /// Issues and installs a new certificate at `now`, whether due or not (with the next
    /// claims of the [`ClaimsRotation`], if any). Blocking.
    pub fn renew_at(&self, now: u64) -> Result<(), RatlsError> {
        let claims = match &self.rotation {
            Some(r) => r.next(&self.claims()),
            None => self.claims(),
        };
        let issued = issue_at(&self.tee, &claims, self.lifetime, now)?;
        let claims = issued.claims.clone().unwrap_or(claims);
        self.resolver.renew(&issued)?;
        if let Some(r) = &self.rotation {
            r.installed(&claims);
        }
        *self.claims.lock().unwrap_or_else(|p| p.into_inner()) = claims;
        self.current
            .send_modify(|c| *c = CertInfo::of(&issued, c.generation.saturating_add(1)));
        tracing::info!(not_after = issued.not_after, "ra-tls certificate renewed");
        Ok(())
    }

    /// Seconds until the renewal loop should look again: until the certificate is due, at
    /// least 1 and at most 60 (the clock may jump).
    fn next_check(&self, now: u64) -> Duration {
        let due = self.resolver.not_after().saturating_sub(self.margin);
        Duration::from_secs(due.saturating_sub(now).clamp(1, MAX_CHECK_INTERVAL))
    }

    /// Renews in the background until `shutdown` turns true (or its sender is dropped). Quote
    /// generation runs on tokio's blocking pool; a failed renewal is logged and retried after
    /// [`Identity::retry`].
    pub async fn run_renewal(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        loop {
            let wait = self.next_check(self.clock.now());
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = wait_shutdown(&mut shutdown) => return,
            }
            let this = self.clone();
            let now = self.clock.now();
            match tokio::task::spawn_blocking(move || this.renew_if_due(now)).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    tracing::warn!(
                        error = %e,
                        retry = ?self.retry,
                        "ra-tls certificate renewal failed; retrying"
                    );
                    tokio::select! {
                        _ = tokio::time::sleep(self.retry) => {}
                        _ = wait_shutdown(&mut shutdown) => return,
                    }
                }
                Err(e) => tracing::error!(error = %e, "ra-tls certificate renewal task failed"),
            }
        }
    }
}

/// Returns once `shutdown` is true; a dropped sender also means shutdown.
async fn wait_shutdown(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|s| *s).await;
}

fn issue_at(
    tee: &OpenedTee,
    claims: &Claims,
    lifetime: Duration,
    now: u64,
) -> Result<IssuedCert, RatlsError> {
    let collateral = tee.collateral(now)?;
    crate::cert::issue_with_gpu(
        &*tee.device,
        claims,
        collateral.as_ref(),
        tee.gpu.as_deref(),
        now,
        lifetime,
    )
}

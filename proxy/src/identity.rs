//! The proxy's own RA-TLS identity: a certificate from its TEE (role `proxy`), served on both
//! listeners by one [`CertResolver`] and renewed before it expires.

use std::sync::Arc;
use std::time::Duration;

use attestation::config::OpenedTee;
use ratls::{issue, CertResolver, Claims, Clock, RatlsError, Role};
use tokio::task::JoinHandle;

/// The proxy's certificate source.
#[derive(Debug)]
pub struct Identity {
    tee: OpenedTee,
    claims: Claims,
    lifetime: Duration,
    resolver: Arc<CertResolver>,
}

impl Identity {
    /// Issues the first certificate at `now` (claims: role proxy, the protocol version, the
    /// proxy's name).
    pub fn issue(
        tee: OpenedTee,
        name: &str,
        lifetime: Duration,
        now: u64,
    ) -> Result<Self, RatlsError> {
        let claims = Claims::new(Role::Proxy, protocol::PROTOCOL_VERSION).with_extra("name", name);
        let cert = issue(
            tee.device.as_ref(),
            &claims,
            tee.collateral(now)?.as_ref(),
            now,
            lifetime,
        )?;
        Ok(Self {
            resolver: Arc::new(CertResolver::new(&cert)?),
            tee,
            claims,
            lifetime,
        })
    }

    /// The resolver both listeners serve from.
    pub fn resolver(&self) -> Arc<CertResolver> {
        self.resolver.clone()
    }

    /// Renews the certificate if it expires within a quarter of its lifetime of `now`.
    /// Returns whether it was renewed.
    pub fn renew_if_due(&self, now: u64) -> Result<bool, RatlsError> {
        let margin = (self.lifetime / 4).as_secs().max(60);
        if !self.resolver.needs_renewal(now, margin) {
            return Ok(false);
        }
        let cert = issue(
            self.tee.device.as_ref(),
            &self.claims,
            self.tee.collateral(now)?.as_ref(),
            now,
            self.lifetime,
        )?;
        self.resolver.renew(&cert)?;
        tracing::info!(not_after = cert.not_after, "ra-tls certificate renewed");
        Ok(true)
    }

    /// Checks for renewal every `every` (quote generation runs on the blocking pool).
    pub fn spawn_renewal(
        self: Arc<Self>,
        clock: Arc<dyn Clock>,
        every: Duration,
    ) -> JoinHandle<()> {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let me = self.clone();
                let now = clock.now();
                match tokio::task::spawn_blocking(move || me.renew_if_due(now)).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => tracing::error!(error = %e, "ra-tls certificate renewal failed"),
                    Err(e) => tracing::error!(error = %e, "ra-tls certificate renewal panicked"),
                }
            }
        })
    }
}

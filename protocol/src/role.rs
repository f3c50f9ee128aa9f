//! [`Role`]: what a party is in the network — the one definition that RA-TLS claims, the guest's
//! PID 1 (`cocoon.role=` on the measured command line, `init.toml`), the host launcher's VM
//! configs and the local network's derived registers all use.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The role a party plays. Its lowercase name is part of wire and file formats (claims,
/// command lines, configs, register derivations): never rename a variant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Runs models inside a TD.
    Worker,
    /// Routes requests to workers, inside a TD.
    Proxy,
    /// A user's client (not a TEE).
    Client,
}

impl Role {
    /// Every role.
    pub const ALL: [Role; 3] = [Role::Worker, Role::Proxy, Role::Client];

    /// The name used in every encoding.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Worker => "worker",
            Self::Proxy => "proxy",
            Self::Client => "client",
        }
    }

    /// The role with this exact name.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == name)
    }

    /// Whether the role runs as a measured guest appliance (worker, proxy).
    pub fn is_guest(self) -> bool {
        matches!(self, Self::Worker | Self::Proxy)
    }

    /// The role's service binary inside an image.
    pub fn binary(self) -> &'static str {
        match self {
            Self::Worker => "/bin/cocoon-worker",
            Self::Proxy => "/bin/cocoon-proxy",
            Self::Client => "/bin/cocoon-client",
        }
    }

    /// The prefix of the line the role's service prints once it serves.
    pub fn ready_prefix(self) -> &'static str {
        match self {
            Self::Worker => crate::guest::WORKER_READY,
            Self::Proxy => crate::guest::PROXY_READY,
            Self::Client => crate::guest::CLIENT_READY,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_the_encoding() {
        for r in Role::ALL {
            assert_eq!(Role::parse(r.as_str()), Some(r));
            assert_eq!(serde_json::to_string(&r).unwrap(), format!("\"{r}\""));
        }
        assert_eq!(Role::parse("Worker"), None);
        assert!(Role::Proxy.is_guest() && !Role::Client.is_guest());
    }
}

//! Reading a Cocoon proxy contract from the chain as its clients and workers must: the code and
//! the code it embeds are the pinned ones, and the *initial* state built from the key and params
//! it stores derives to its address. An API server cannot substitute another proxy key (Kp) or
//! other params without changing the address, so whoever holds a proxy contract address learns
//! the Kp that signs its vouchers and the params its client and worker contracts embed.

use ton::address::Addr;
use ton::contracts::{check_code, ContractKind, ProxyData};
use ton::params::ParamsV3;

use crate::{AccountStatus, ChainError, TonChain};

/// A proxy contract, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyInfo {
    /// Proxy contract address.
    pub addr: Addr,
    /// Kp: the key client and worker contracts check vouchers against.
    pub public_key: [u8; 32],
    /// The params client and worker contracts embed (the proxy's without code).
    pub params: ParamsV3,
    /// Proxy state (0 normal, 1 closing, 2 closed).
    pub state: u8,
}

/// Why a proxy contract is not usable.
#[derive(Debug, thiserror::Error)]
pub enum ProxyContractError {
    /// The chain API failed.
    #[error("chain: {0}")]
    Chain(#[from] ChainError),
    /// No active contract at the address.
    #[error("proxy contract {addr}: no active contract there (status {status:?}); check the proxy address")]
    NotFound { addr: Addr, status: AccountStatus },
    /// The account is not a Cocoon proxy contract with the pinned code, or its data does not
    /// derive to its address.
    #[error("proxy contract {addr}: {reason}")]
    Invalid { addr: Addr, reason: String },
}

/// Reads and checks the proxy contract at `addr` (see the module docs).
pub async fn read_proxy(chain: &dyn TonChain, addr: Addr) -> Result<ProxyInfo, ProxyContractError> {
    let acc = chain.account(&addr).await?;
    let invalid = |reason: String| ProxyContractError::Invalid { addr, reason };
    let (Some(code), Some(data)) = (acc.code.as_ref(), acc.data.as_ref()) else {
        return Err(ProxyContractError::NotFound {
            addr,
            status: acc.status,
        });
    };
    if acc.status != AccountStatus::Active {
        return Err(ProxyContractError::NotFound {
            addr,
            status: acc.status,
        });
    }
    check_code(code, ContractKind::Proxy).map_err(|e| invalid(e.to_string()))?;
    let d = ProxyData::from_cell(data).map_err(|e| invalid(e.to_string()))?;
    d.params
        .check_code()
        .map_err(|e| invalid(format!("embedded params: {e}")))?;
    let derived = ProxyData::initial(d.owner, d.pubkey, d.root, d.params.clone())
        .state_init()
        .and_then(|si| si.address())
        .map_err(|e| invalid(e.to_string()))?;
    if derived != addr {
        return Err(invalid(format!(
            "its key and params derive to {derived}, not to this address"
        )));
    }
    Ok(ProxyInfo {
        addr,
        public_key: d.pubkey,
        params: d.params.without_code(),
        state: d.state,
    })
}

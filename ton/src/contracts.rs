//! Cocoon's contract code (embedded, hash-pinned), `StateInit`, the contracts' data cells and
//! address derivation (`0:repr_hash(StateInit)`).
//!
//! The embedded code is the compiled FunC of 1IxI1/cocoon-contracts at ae5eebf8 (see
//! `contracts/README.md`). Code that arrives at run time (from the root contract's params) is
//! accepted only when [`known_code`] recognises its hash.

use std::fmt;

use crate::address::{Addr, Coins};
use crate::boc;
use crate::cell::{Cell, CellBuilder, CellError};
use crate::params::{ParamsError, ParamsV3};

/// One of Cocoon's five contracts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ContractKind {
    /// Root: params and proxy registry.
    Root,
    /// Proxy contract.
    Proxy,
    /// Worker contract.
    Worker,
    /// Client contract.
    Client,
    /// Cocoon wallet.
    Wallet,
}

impl fmt::Display for ContractKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ContractKind::Root => "root",
            ContractKind::Proxy => "proxy",
            ContractKind::Worker => "worker",
            ContractKind::Client => "client",
            ContractKind::Wallet => "wallet",
        })
    }
}

/// Pinned code hashes (representation hash of the code cell). A change here must be reviewed.
pub const CODE_HASHES: [(ContractKind, &str); 5] = [
    (
        ContractKind::Root,
        "5b07c6bd0c34735874dfa3548cd9a01c78be1e0fdf20d0c5ebe37776396c5400",
    ),
    (
        ContractKind::Proxy,
        "00b2c57d43c1dbc3e12cfa240494a168c78feca90a9b99ebe796b139ed713890",
    ),
    (
        ContractKind::Worker,
        "1aaa0512c489a0382b163f7d706e2b4182f1a38fcc46208be5fa22d7faed5aa7",
    ),
    (
        ContractKind::Client,
        "974d24538e6003b1a393f8708525b81324cf8a78aee88b4585d51b6f64555147",
    ),
    (
        ContractKind::Wallet,
        "7a48f05ceef40f06cabbaa39c1c5a67b24e8bb59d8cf8a74e49988a5f44cf66a",
    ),
];

/// Contract code whose hash is not pinned, or is pinned for another contract.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodeError {
    /// Hash not in [`CODE_HASHES`].
    #[error("unknown contract code hash {hash} (expected {expected} code)")]
    Unknown {
        expected: ContractKind,
        hash: String,
    },
    /// Known hash, wrong contract.
    #[error("code hash {hash} is {got} code, expected {expected} code")]
    WrongKind {
        expected: ContractKind,
        got: ContractKind,
        hash: String,
    },
}

/// Which contract this code hash belongs to, if pinned.
pub fn known_code(hash: &[u8; 32]) -> Option<ContractKind> {
    let h = hex::encode(hash);
    CODE_HASHES.iter().find(|(_, p)| *p == h).map(|(k, _)| *k)
}

/// Accepts `code` only if its hash is the pinned code of `expected`.
pub fn check_code(code: &Cell, expected: ContractKind) -> Result<(), CodeError> {
    let hash = code.hash();
    match known_code(&hash) {
        Some(k) if k == expected => Ok(()),
        Some(got) => Err(CodeError::WrongKind {
            expected,
            got,
            hash: hex::encode(hash),
        }),
        None => Err(CodeError::Unknown {
            expected,
            hash: hex::encode(hash),
        }),
    }
}

impl ContractKind {
    /// The embedded BOC (hex) of this contract's code.
    pub fn code_boc_hex(self) -> &'static str {
        match self {
            ContractKind::Root => include_str!("../contracts/root.boc.hex"),
            ContractKind::Proxy => include_str!("../contracts/proxy.boc.hex"),
            ContractKind::Worker => include_str!("../contracts/worker.boc.hex"),
            ContractKind::Client => include_str!("../contracts/client.boc.hex"),
            ContractKind::Wallet => include_str!("../contracts/wallet.boc.hex"),
        }
    }

    /// The embedded code cell. The embedded BOCs are fixed data checked by tests
    /// (`embedded_code_matches_pins`); a failure to decode them is a build defect.
    pub fn code(self) -> Cell {
        match boc::decode_hex(self.code_boc_hex()) {
            Ok(c) => c,
            Err(e) => panic!("embedded {self} code does not decode: {e}"),
        }
    }

    /// The pinned code hash.
    pub fn pinned_hash(self) -> [u8; 32] {
        let mut out = [0u8; 32];
        for (k, h) in CODE_HASHES {
            if k == self {
                // Constants above are 64 hex digits (tested).
                let _ = hex::decode_to_slice(h, &mut out);
            }
        }
        out
    }
}

/// `StateInit` as Cocoon uses it: `split_depth:0 special:0 code:1^ data:1^ library:0`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateInit {
    /// Code cell.
    pub code: Cell,
    /// Data cell.
    pub data: Cell,
}

impl StateInit {
    /// The `StateInit` cell (bits `00110`, two references).
    pub fn to_cell(&self) -> Result<Cell, CellError> {
        let mut b = CellBuilder::new();
        b.store_uint(0b00110, 5)?
            .store_ref(self.code.clone())?
            .store_ref(self.data.clone())?;
        b.build()
    }

    /// The basechain address `0:repr_hash(StateInit)`.
    pub fn address(&self) -> Result<Addr, CellError> {
        Ok(Addr::basechain(self.to_cell()?.hash()))
    }
}

/// An error while reading a contract's data cell.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DataError {
    /// A field could not be read.
    #[error("{contract} data field {field}: {source}")]
    Field {
        contract: ContractKind,
        field: &'static str,
        source: CellError,
    },
    /// The embedded params are malformed.
    #[error("{contract} data params: {source}")]
    Params {
        contract: ContractKind,
        source: ParamsError,
    },
}

/// Proxy contract data: `owner pubkey:256 root state:2 balance:Coins stake:Coins unlock_ts:32
/// ^params` (params with worker and client code).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyData {
    /// Proxy owner (receives fees).
    pub owner: Addr,
    /// Proxy key Kp (Ed25519 public key).
    pub pubkey: [u8; 32],
    /// Root contract.
    pub root: Addr,
    /// 0 normal, 1 closing, 2 closed.
    pub state: u8,
    /// Collected fees.
    pub balance: Coins,
    /// Stake.
    pub stake: Coins,
    /// Unix time.
    pub unlock_ts: u32,
    /// Embedded params.
    pub params: ParamsV3,
}

/// Worker contract data: `owner proxy pubkey:256 state:2 tokens:64 ^params` (params without code).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerData {
    /// Worker owner (receives payouts).
    pub owner: Addr,
    /// Proxy contract.
    pub proxy: Addr,
    /// Proxy key Kp.
    pub pubkey: [u8; 32],
    /// 0 normal, 1 closing, 2 closed.
    pub state: u8,
    /// Cumulative tokens paid out.
    pub tokens: u64,
    /// Embedded params.
    pub params: ParamsV3,
}

/// Client contract data: `state:2 balance:Coins stake:Coins tokens_used:64 unlock_ts:32
/// secret_hash:256 ^[owner proxy pubkey:256] ^params` (params without code).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientData {
    /// 0 normal, 1 closing, 2 closed.
    pub state: u8,
    /// Balance.
    pub balance: Coins,
    /// Stake.
    pub stake: Coins,
    /// Cumulative tokens charged.
    pub tokens_used: u64,
    /// Unix time.
    pub unlock_ts: u32,
    /// sha256 of the client secret.
    pub secret_hash: [u8; 32],
    /// Client owner.
    pub owner: Addr,
    /// Proxy contract.
    pub proxy: Addr,
    /// Proxy key Kp.
    pub pubkey: [u8; 32],
    /// Embedded params.
    pub params: ParamsV3,
}

/// Cocoon wallet data: `seqno:32 subwallet:32 pubkey:256 status:32 owner`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalletData {
    /// Next expected seqno.
    pub seqno: u32,
    /// Subwallet id (0).
    pub subwallet: u32,
    /// Wallet key.
    pub pubkey: [u8; 32],
    /// Status word.
    pub status: u32,
    /// Owner.
    pub owner: Addr,
}

fn field(contract: ContractKind, field: &'static str) -> impl Fn(CellError) -> DataError {
    move |source| DataError::Field {
        contract,
        field,
        source,
    }
}

fn params(contract: ContractKind, c: Result<Cell, CellError>) -> Result<ParamsV3, DataError> {
    let c = c.map_err(field(contract, "params"))?;
    ParamsV3::from_cell(&c).map_err(|source| DataError::Params { contract, source })
}

impl ProxyData {
    /// Initial data of a new proxy contract.
    pub fn initial(owner: Addr, pubkey: [u8; 32], root: Addr, params: ParamsV3) -> Self {
        ProxyData {
            owner,
            pubkey,
            root,
            state: 0,
            balance: Coins::default(),
            stake: Coins::default(),
            unlock_ts: 0,
            params,
        }
    }
    /// Serializes.
    pub fn to_cell(&self) -> Result<Cell, CellError> {
        let mut b = CellBuilder::new();
        b.store_addr(&self.owner)?
            .store_bytes(&self.pubkey)?
            .store_addr(&self.root)?
            .store_uint(self.state.into(), 2)?
            .store_coins(self.balance)?
            .store_coins(self.stake)?
            .store_uint(self.unlock_ts.into(), 32)?
            .store_ref(self.params.to_cell()?)?;
        b.build()
    }
    /// Parses.
    pub fn from_cell(c: &Cell) -> Result<Self, DataError> {
        let k = ContractKind::Proxy;
        let mut s = c.parse();
        let d = ProxyData {
            owner: s.load_addr().map_err(field(k, "owner"))?,
            pubkey: s.load_array().map_err(field(k, "pubkey"))?,
            root: s.load_addr().map_err(field(k, "root"))?,
            state: s.load_uint(2).map_err(field(k, "state"))? as u8,
            balance: s.load_coins().map_err(field(k, "balance"))?,
            stake: s.load_coins().map_err(field(k, "stake"))?,
            unlock_ts: s.load_u32().map_err(field(k, "unlock_ts"))?,
            params: params(k, s.load_ref())?,
        };
        s.ensure_empty().map_err(field(k, "end"))?;
        Ok(d)
    }
    /// `StateInit` with the embedded proxy code.
    pub fn state_init(&self) -> Result<StateInit, CellError> {
        Ok(StateInit {
            code: ContractKind::Proxy.code(),
            data: self.to_cell()?,
        })
    }
}

impl WorkerData {
    /// Initial data of a new worker contract.
    pub fn initial(owner: Addr, proxy: Addr, pubkey: [u8; 32], params: ParamsV3) -> Self {
        WorkerData {
            owner,
            proxy,
            pubkey,
            state: 0,
            tokens: 0,
            params,
        }
    }
    /// Serializes.
    pub fn to_cell(&self) -> Result<Cell, CellError> {
        let mut b = CellBuilder::new();
        b.store_addr(&self.owner)?
            .store_addr(&self.proxy)?
            .store_bytes(&self.pubkey)?
            .store_uint(self.state.into(), 2)?
            .store_uint(self.tokens.into(), 64)?
            .store_ref(self.params.to_cell()?)?;
        b.build()
    }
    /// Parses.
    pub fn from_cell(c: &Cell) -> Result<Self, DataError> {
        let k = ContractKind::Worker;
        let mut s = c.parse();
        let d = WorkerData {
            owner: s.load_addr().map_err(field(k, "owner"))?,
            proxy: s.load_addr().map_err(field(k, "proxy"))?,
            pubkey: s.load_array().map_err(field(k, "pubkey"))?,
            state: s.load_uint(2).map_err(field(k, "state"))? as u8,
            tokens: s.load_u64().map_err(field(k, "tokens"))?,
            params: params(k, s.load_ref())?,
        };
        s.ensure_empty().map_err(field(k, "end"))?;
        Ok(d)
    }
    /// `StateInit` with the embedded worker code.
    pub fn state_init(&self) -> Result<StateInit, CellError> {
        Ok(StateInit {
            code: ContractKind::Worker.code(),
            data: self.to_cell()?,
        })
    }
}

impl ClientData {
    /// Initial data of a new client contract (stake is normally `params.min_client_stake`).
    pub fn initial(
        owner: Addr,
        proxy: Addr,
        pubkey: [u8; 32],
        stake: Coins,
        params: ParamsV3,
    ) -> Self {
        ClientData {
            state: 0,
            balance: Coins::default(),
            stake,
            tokens_used: 0,
            unlock_ts: 0,
            secret_hash: [0; 32],
            owner,
            proxy,
            pubkey,
            params,
        }
    }
    /// Serializes.
    pub fn to_cell(&self) -> Result<Cell, CellError> {
        let mut who = CellBuilder::new();
        who.store_addr(&self.owner)?
            .store_addr(&self.proxy)?
            .store_bytes(&self.pubkey)?;
        let mut b = CellBuilder::new();
        b.store_uint(self.state.into(), 2)?
            .store_coins(self.balance)?
            .store_coins(self.stake)?
            .store_uint(self.tokens_used.into(), 64)?
            .store_uint(self.unlock_ts.into(), 32)?
            .store_bytes(&self.secret_hash)?
            .store_ref(who.build()?)?
            .store_ref(self.params.to_cell()?)?;
        b.build()
    }
    /// Parses.
    pub fn from_cell(c: &Cell) -> Result<Self, DataError> {
        let k = ContractKind::Client;
        let mut s = c.parse();
        let state = s.load_uint(2).map_err(field(k, "state"))? as u8;
        let balance = s.load_coins().map_err(field(k, "balance"))?;
        let stake = s.load_coins().map_err(field(k, "stake"))?;
        let tokens_used = s.load_u64().map_err(field(k, "tokens_used"))?;
        let unlock_ts = s.load_u32().map_err(field(k, "unlock_ts"))?;
        let secret_hash = s.load_array().map_err(field(k, "secret_hash"))?;
        let who = s.load_ref().map_err(field(k, "owner/proxy/pubkey ref"))?;
        let params = params(k, s.load_ref())?;
        s.ensure_empty().map_err(field(k, "end"))?;
        let mut w = who.parse();
        let owner = w.load_addr().map_err(field(k, "owner"))?;
        let proxy = w.load_addr().map_err(field(k, "proxy"))?;
        let pubkey = w.load_array().map_err(field(k, "pubkey"))?;
        w.ensure_empty()
            .map_err(field(k, "owner/proxy/pubkey end"))?;
        Ok(ClientData {
            state,
            balance,
            stake,
            tokens_used,
            unlock_ts,
            secret_hash,
            owner,
            proxy,
            pubkey,
            params,
        })
    }
    /// `StateInit` with the embedded client code.
    pub fn state_init(&self) -> Result<StateInit, CellError> {
        Ok(StateInit {
            code: ContractKind::Client.code(),
            data: self.to_cell()?,
        })
    }
}

impl WalletData {
    /// Initial data of a new wallet (seqno 0, subwallet 0, status 0).
    pub fn initial(pubkey: [u8; 32], owner: Addr) -> Self {
        WalletData {
            seqno: 0,
            subwallet: 0,
            pubkey,
            status: 0,
            owner,
        }
    }
    /// Serializes.
    pub fn to_cell(&self) -> Result<Cell, CellError> {
        let mut b = CellBuilder::new();
        b.store_uint(self.seqno.into(), 32)?
            .store_uint(self.subwallet.into(), 32)?
            .store_bytes(&self.pubkey)?
            .store_uint(self.status.into(), 32)?
            .store_addr(&self.owner)?;
        b.build()
    }
    /// Parses.
    pub fn from_cell(c: &Cell) -> Result<Self, DataError> {
        let k = ContractKind::Wallet;
        let mut s = c.parse();
        let d = WalletData {
            seqno: s.load_u32().map_err(field(k, "seqno"))?,
            subwallet: s.load_u32().map_err(field(k, "subwallet"))?,
            pubkey: s.load_array().map_err(field(k, "pubkey"))?,
            status: s.load_u32().map_err(field(k, "status"))?,
            owner: s.load_addr().map_err(field(k, "owner"))?,
        };
        s.ensure_empty().map_err(field(k, "end"))?;
        Ok(d)
    }
    /// `StateInit` with the embedded wallet code.
    pub fn state_init(&self) -> Result<StateInit, CellError> {
        Ok(StateInit {
            code: ContractKind::Wallet.code(),
            data: self.to_cell()?,
        })
    }
}

/// The client contract's `secret_hash` that binds it to a cocoon account key (the Ed25519 key a
/// client presents in TLS to the proxy): `SHA-256("cocoon-account-v1\0" ‖ public key)`.
///
/// cocoon's convention, not Cocoon's: the owner sets it on its client contract (`set secret`
/// request), the contract reports it in every notification to the proxy contract, and the proxy
/// bills a TLS account to the contract that carries this hash. Only the owner can set it, and
/// only the key's holder can complete the TLS handshake, so neither side can be impersonated.
pub fn account_binding_hash(account_key: &[u8; 32]) -> [u8; 32] {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update(b"cocoon-account-v1\0");
    h.update(account_key);
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [ContractKind; 5] = [
        ContractKind::Root,
        ContractKind::Proxy,
        ContractKind::Worker,
        ContractKind::Client,
        ContractKind::Wallet,
    ];

    #[test]
    fn embedded_code_matches_pins() {
        for k in ALL {
            let code = k.code();
            assert_eq!(code.hash(), k.pinned_hash(), "{k}");
            assert_eq!(known_code(&code.hash()), Some(k));
            check_code(&code, k).unwrap();
            // Re-encoding gives the same cell.
            assert_eq!(
                boc::decode(&boc::encode(&code)).unwrap().hash(),
                code.hash()
            );
        }
    }

    #[test]
    fn pins_are_the_reviewed_values() {
        // Changing a pin must fail here until reviewed (README of testdata/ton).
        let joined: String = CODE_HASHES
            .iter()
            .map(|(_, h)| *h)
            .collect::<Vec<_>>()
            .join(",");
        assert_eq!(
            joined,
            "5b07c6bd0c34735874dfa3548cd9a01c78be1e0fdf20d0c5ebe37776396c5400,\
             00b2c57d43c1dbc3e12cfa240494a168c78feca90a9b99ebe796b139ed713890,\
             1aaa0512c489a0382b163f7d706e2b4182f1a38fcc46208be5fa22d7faed5aa7,\
             974d24538e6003b1a393f8708525b81324cf8a78aee88b4585d51b6f64555147,\
             7a48f05ceef40f06cabbaa39c1c5a67b24e8bb59d8cf8a74e49988a5f44cf66a"
        );
    }

    #[test]
    fn unknown_and_wrong_code_rejected() {
        assert_eq!(known_code(&[0; 32]), None);
        assert!(matches!(
            check_code(&Cell::empty(), ContractKind::Proxy),
            Err(CodeError::Unknown { .. })
        ));
        assert!(matches!(
            check_code(&ContractKind::Client.code(), ContractKind::Proxy),
            Err(CodeError::WrongKind {
                got: ContractKind::Client,
                ..
            })
        ));
    }
}

//! Notifications that client and worker contracts send to the proxy contract; a proxy (or its
//! chain watcher) must parse them and check the sender against the derived contract address.
//!
//! Client → proxy `0x65448ff4 qid:64 owner:Addr ^[state:2 balance:Coins stake:Coins
//! tokens_used:64 secret_hash:256] Maybe^payload`; worker → proxy `0x4d725d2c qid:64 owner:Addr
//! state:2 tokens:64 Maybe^[0x08e7d036 worker_part:Coins proxy_part:Coins excess:Addr]`.

use super::{fld, MessageError};
use crate::address::{Addr, Coins};
use crate::cell::{Cell, CellBuilder, CellError};

/// Client → proxy op.
pub const OP_CLIENT_PROXY_REQUEST: u32 = 0x6544_8ff4;
/// Worker → proxy op.
pub const OP_WORKER_PROXY_REQUEST: u32 = 0x4d72_5d2c;
/// Worker → proxy payout payload tag.
pub const OP_WORKER_PROXY_PAYOUT: u32 = 0x08e7_d036;

/// The client contract's state snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientSnapshot {
    /// 0 normal, 1 closing, 2 closed.
    pub state: u8,
    /// Balance.
    pub balance: Coins,
    /// Stake.
    pub stake: Coins,
    /// Cumulative tokens charged.
    pub tokens_used: u64,
    /// sha256 of the client secret.
    pub secret_hash: [u8; 32],
}

/// The optional payload of a client notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientPayload {
    /// `0x5cfc6b87` top-up.
    TopUp { coins: Coins, excess: Addr },
    /// `0xa35cb580` register.
    Register { nonce: u64 },
    /// `0xc68ebc7b` refund granted.
    RefundGranted { coins: Coins, excess: Addr },
    /// `0xf4c354c9` forced refund.
    RefundForce { coins: Coins, excess: Addr },
}

/// Client contract → proxy contract notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientNotification {
    /// Query id.
    pub qid: u64,
    /// Client owner (with the snapshot's params the proxy re-derives the sender's address).
    pub owner: Addr,
    /// State snapshot.
    pub snapshot: ClientSnapshot,
    /// Optional payload.
    pub payload: Option<ClientPayload>,
}

/// Worker → proxy payout payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerPayout {
    /// Δ · worker_fee.
    pub worker_part: Coins,
    /// Δ · (price − worker_fee).
    pub proxy_part: Coins,
    /// Excess destination.
    pub excess: Addr,
}

/// Worker contract → proxy contract notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerNotification {
    /// Query id.
    pub qid: u64,
    /// Worker owner.
    pub owner: Addr,
    /// 0 normal, 1 closing, 2 closed.
    pub state: u8,
    /// Cumulative tokens.
    pub tokens: u64,
    /// Optional payout.
    pub payout: Option<WorkerPayout>,
}

impl ClientNotification {
    /// Serializes.
    pub fn to_cell(&self) -> Result<Cell, MessageError> {
        self.build().map_err(fld("body"))
    }

    fn build(&self) -> Result<Cell, CellError> {
        let sn = &self.snapshot;
        let mut st = CellBuilder::new();
        st.store_uint(sn.state.into(), 2)?
            .store_coins(sn.balance)?
            .store_coins(sn.stake)?
            .store_uint(sn.tokens_used.into(), 64)?
            .store_bytes(&sn.secret_hash)?;
        let payload = match &self.payload {
            None => None,
            Some(p) => {
                let mut b = CellBuilder::new();
                match p {
                    ClientPayload::TopUp { coins, excess } => {
                        b.store_uint(0x5cfc_6b87, 32)?
                            .store_coins(*coins)?
                            .store_addr(excess)?;
                    }
                    ClientPayload::Register { nonce } => {
                        b.store_uint(0xa35c_b580, 32)?
                            .store_uint((*nonce).into(), 64)?;
                    }
                    ClientPayload::RefundGranted { coins, excess } => {
                        b.store_uint(0xc68e_bc7b, 32)?
                            .store_coins(*coins)?
                            .store_addr(excess)?;
                    }
                    ClientPayload::RefundForce { coins, excess } => {
                        b.store_uint(0xf4c3_54c9, 32)?
                            .store_coins(*coins)?
                            .store_addr(excess)?;
                    }
                }
                Some(b.build()?)
            }
        };
        let mut b = CellBuilder::new();
        b.store_uint(OP_CLIENT_PROXY_REQUEST.into(), 32)?
            .store_uint(self.qid.into(), 64)?
            .store_addr(&self.owner)?
            .store_ref(st.build()?)?
            .store_maybe_ref(payload)?;
        b.build()
    }

    /// Parses (no trailing data in any of the three cells).
    pub fn parse(body: &Cell) -> Result<ClientNotification, MessageError> {
        let mut s = body.parse();
        let op = s.load_u32().map_err(fld("op"))?;
        if op != OP_CLIENT_PROXY_REQUEST {
            return Err(MessageError::UnknownOp { field: "op", op });
        }
        let qid = s.load_u64().map_err(fld("qid"))?;
        let owner = s.load_addr().map_err(fld("owner"))?;
        let st = s.load_ref().map_err(fld("state_data"))?;
        let payload = s.load_maybe_ref().map_err(fld("payload"))?;
        s.ensure_empty().map_err(fld("end"))?;
        let mut t = st.parse();
        let snapshot = ClientSnapshot {
            state: t.load_uint(2).map_err(fld("state_data.state"))? as u8,
            balance: t.load_coins().map_err(fld("state_data.balance"))?,
            stake: t.load_coins().map_err(fld("state_data.stake"))?,
            tokens_used: t.load_u64().map_err(fld("state_data.tokens_used"))?,
            secret_hash: t.load_array().map_err(fld("state_data.secret_hash"))?,
        };
        t.ensure_empty().map_err(fld("state_data end"))?;
        let payload = match payload {
            None => None,
            Some(p) => {
                let mut u = p.parse();
                let pop = u.load_u32().map_err(fld("payload.op"))?;
                let coins = |u: &mut crate::cell::CellSlice<'_>| {
                    u.load_coins().map_err(fld("payload.coins"))
                };
                let excess = |u: &mut crate::cell::CellSlice<'_>| {
                    u.load_addr().map_err(fld("payload.send_excesses_to"))
                };
                let r = match pop {
                    0x5cfc_6b87 => ClientPayload::TopUp {
                        coins: coins(&mut u)?,
                        excess: excess(&mut u)?,
                    },
                    0xa35c_b580 => ClientPayload::Register {
                        nonce: u.load_u64().map_err(fld("payload.nonce"))?,
                    },
                    0xc68e_bc7b => ClientPayload::RefundGranted {
                        coins: coins(&mut u)?,
                        excess: excess(&mut u)?,
                    },
                    0xf4c3_54c9 => ClientPayload::RefundForce {
                        coins: coins(&mut u)?,
                        excess: excess(&mut u)?,
                    },
                    _ => {
                        return Err(MessageError::UnknownOp {
                            field: "payload.op",
                            op: pop,
                        })
                    }
                };
                u.ensure_empty().map_err(fld("payload end"))?;
                Some(r)
            }
        };
        Ok(ClientNotification {
            qid,
            owner,
            snapshot,
            payload,
        })
    }
}

impl WorkerNotification {
    /// Serializes.
    pub fn to_cell(&self) -> Result<Cell, MessageError> {
        self.build().map_err(fld("body"))
    }

    fn build(&self) -> Result<Cell, CellError> {
        let payout = match &self.payout {
            None => None,
            Some(p) => {
                let mut b = CellBuilder::new();
                b.store_uint(OP_WORKER_PROXY_PAYOUT.into(), 32)?
                    .store_coins(p.worker_part)?
                    .store_coins(p.proxy_part)?
                    .store_addr(&p.excess)?;
                Some(b.build()?)
            }
        };
        let mut b = CellBuilder::new();
        b.store_uint(OP_WORKER_PROXY_REQUEST.into(), 32)?
            .store_uint(self.qid.into(), 64)?
            .store_addr(&self.owner)?
            .store_uint(self.state.into(), 2)?
            .store_uint(self.tokens.into(), 64)?
            .store_maybe_ref(payout)?;
        b.build()
    }

    /// Parses (no trailing data).
    pub fn parse(body: &Cell) -> Result<WorkerNotification, MessageError> {
        let mut s = body.parse();
        let op = s.load_u32().map_err(fld("op"))?;
        if op != OP_WORKER_PROXY_REQUEST {
            return Err(MessageError::UnknownOp { field: "op", op });
        }
        let qid = s.load_u64().map_err(fld("qid"))?;
        let owner = s.load_addr().map_err(fld("owner"))?;
        let state = s.load_uint(2).map_err(fld("state"))? as u8;
        let tokens = s.load_u64().map_err(fld("tokens"))?;
        let p = s.load_maybe_ref().map_err(fld("payload"))?;
        s.ensure_empty().map_err(fld("end"))?;
        let payout = match p {
            None => None,
            Some(p) => {
                let mut u = p.parse();
                let pop = u.load_u32().map_err(fld("payload.op"))?;
                if pop != OP_WORKER_PROXY_PAYOUT {
                    return Err(MessageError::UnknownOp {
                        field: "payload.op",
                        op: pop,
                    });
                }
                let r = WorkerPayout {
                    worker_part: u.load_coins().map_err(fld("payload.worker_part"))?,
                    proxy_part: u.load_coins().map_err(fld("payload.proxy_part"))?,
                    excess: u.load_addr().map_err(fld("payload.send_excesses_to"))?,
                };
                u.ensure_empty().map_err(fld("payload end"))?;
                Some(r)
            }
        };
        Ok(WorkerNotification {
            qid,
            owner,
            state,
            tokens,
            payout,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_notifications_roundtrip() {
        let e = Addr::basechain([4; 32]);
        let c = Coins::from_nano(123_456);
        let payloads = [
            None,
            Some(ClientPayload::TopUp {
                coins: c,
                excess: e,
            }),
            Some(ClientPayload::Register { nonce: 77 }),
            Some(ClientPayload::RefundGranted {
                coins: c,
                excess: e,
            }),
            Some(ClientPayload::RefundForce {
                coins: c,
                excess: e,
            }),
        ];
        for payload in payloads {
            let n = ClientNotification {
                qid: 1,
                owner: e,
                snapshot: ClientSnapshot {
                    state: 1,
                    balance: c,
                    stake: c,
                    tokens_used: 5,
                    secret_hash: [1; 32],
                },
                payload,
            };
            assert_eq!(ClientNotification::parse(&n.to_cell().unwrap()).unwrap(), n);
        }
    }

    #[test]
    fn worker_notifications_roundtrip() {
        let e = Addr::basechain([4; 32]);
        for payout in [
            None,
            Some(WorkerPayout {
                worker_part: Coins::from_nano(20_000_000),
                proxy_part: Coins::from_nano(30_000_000),
                excess: e,
            }),
        ] {
            let n = WorkerNotification {
                qid: 5,
                owner: e,
                state: 0,
                tokens: 50_000,
                payout,
            };
            assert_eq!(WorkerNotification::parse(&n.to_cell().unwrap()).unwrap(), n);
        }
    }
}

//! Unsigned requests: `op:32 qid:64 …` to the client and proxy contracts, and the proxy's
//! save-state anchor.

use super::{fld, MessageError};
use crate::address::{Addr, Coins};
use crate::cell::{Cell, CellBuilder, CellError, CellSlice};

/// Save-state anchor outer op (`do_not_process`: the proxy contract ignores it; watchers read it).
pub const OP_DO_NOT_PROCESS: u32 = 0x9a12_47c0;
/// Save-state anchor inner tag.
pub const OP_SAVE_STATE: u32 = 0x5310_9c0f;

/// Requests to the client contract and the proxy contract.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// `0xf172e6c2` client top-up (anyone; value ≥ amount + 0.1 TON).
    TopUp {
        qid: u64,
        amount: Coins,
        excess: Addr,
    },
    /// `0xc45f9f3b` client register (owner).
    Register { qid: u64, nonce: u64, excess: Addr },
    /// `0xa9357034` change the client's secret hash (owner).
    SetSecret {
        qid: u64,
        secret_hash: [u8; 32],
        excess: Addr,
    },
    /// `0x6a1f6a60` client increase stake (owner).
    IncreaseStake {
        qid: u64,
        new_stake: Coins,
        excess: Addr,
    },
    /// `0xda068e78` client withdraw above stake (owner).
    Withdraw { qid: u64, excess: Addr },
    /// `0xfafa6cc1` client request refund (owner; starts closing).
    RequestRefund { qid: u64, excess: Addr },
    /// `0x7610e6eb` proxy payout of fees to the proxy owner.
    ProxyPayout { qid: u64, excess: Addr },
    /// `0x9713f187` proxy increase stake.
    ProxyIncreaseStake {
        qid: u64,
        grams: Coins,
        excess: Addr,
    },
    /// `0x9a1247c0 qid 0x53109c0f seqno:int32 hash:bits256` save-state anchor (one cell).
    SaveState {
        qid: u64,
        seqno: i32,
        hash: [u8; 32],
    },
}

impl Request {
    /// The opcode.
    pub fn op(&self) -> u32 {
        match self {
            Request::TopUp { .. } => 0xf172_e6c2,
            Request::Register { .. } => 0xc45f_9f3b,
            Request::SetSecret { .. } => 0xa935_7034,
            Request::IncreaseStake { .. } => 0x6a1f_6a60,
            Request::Withdraw { .. } => 0xda06_8e78,
            Request::RequestRefund { .. } => 0xfafa_6cc1,
            Request::ProxyPayout { .. } => 0x7610_e6eb,
            Request::ProxyIncreaseStake { .. } => 0x9713_f187,
            Request::SaveState { .. } => OP_DO_NOT_PROCESS,
        }
    }

    /// A short name.
    pub fn name(&self) -> &'static str {
        match self {
            Request::TopUp { .. } => "client_top_up",
            Request::Register { .. } => "client_register",
            Request::SetSecret { .. } => "client_set_secret_hash",
            Request::IncreaseStake { .. } => "client_increase_stake",
            Request::Withdraw { .. } => "client_withdraw",
            Request::RequestRefund { .. } => "client_request_refund",
            Request::ProxyPayout { .. } => "proxy_payout",
            Request::ProxyIncreaseStake { .. } => "proxy_increase_stake",
            Request::SaveState { .. } => "proxy_save_state",
        }
    }

    /// Serializes the body.
    pub fn to_cell(&self) -> Result<Cell, MessageError> {
        self.build().map_err(fld("body"))
    }

    fn build(&self) -> Result<Cell, CellError> {
        let mut b = CellBuilder::new();
        b.store_uint(self.op().into(), 32)?;
        match self {
            Request::TopUp {
                qid,
                amount,
                excess,
            } => {
                b.store_uint((*qid).into(), 64)?
                    .store_coins(*amount)?
                    .store_addr(excess)?;
            }
            Request::Register { qid, nonce, excess } => {
                b.store_uint((*qid).into(), 64)?
                    .store_uint((*nonce).into(), 64)?
                    .store_addr(excess)?;
            }
            Request::SetSecret {
                qid,
                secret_hash,
                excess,
            } => {
                b.store_uint((*qid).into(), 64)?
                    .store_bytes(secret_hash)?
                    .store_addr(excess)?;
            }
            Request::IncreaseStake {
                qid,
                new_stake: c,
                excess,
            }
            | Request::ProxyIncreaseStake {
                qid,
                grams: c,
                excess,
            } => {
                b.store_uint((*qid).into(), 64)?
                    .store_coins(*c)?
                    .store_addr(excess)?;
            }
            Request::Withdraw { qid, excess }
            | Request::RequestRefund { qid, excess }
            | Request::ProxyPayout { qid, excess } => {
                b.store_uint((*qid).into(), 64)?.store_addr(excess)?;
            }
            Request::SaveState { qid, seqno, hash } => {
                b.store_uint((*qid).into(), 64)?
                    .store_uint(OP_SAVE_STATE.into(), 32)?
                    .store_int((*seqno).into(), 32)?
                    .store_bytes(hash)?;
            }
        }
        b.build()
    }

    /// Parses a body (no trailing data).
    pub fn parse(body: &Cell) -> Result<Request, MessageError> {
        let mut s = body.parse();
        let op = s.load_u32().map_err(fld("op"))?;
        let qid = s.load_u64().map_err(fld("qid"))?;
        let excess = |s: &mut CellSlice<'_>| s.load_addr().map_err(fld("send_excesses_to"));
        let r = match op {
            0xf172_e6c2 => Request::TopUp {
                qid,
                amount: s.load_coins().map_err(fld("amount"))?,
                excess: excess(&mut s)?,
            },
            0xc45f_9f3b => Request::Register {
                qid,
                nonce: s.load_u64().map_err(fld("nonce"))?,
                excess: excess(&mut s)?,
            },
            0xa935_7034 => Request::SetSecret {
                qid,
                secret_hash: s.load_array().map_err(fld("secret_hash"))?,
                excess: excess(&mut s)?,
            },
            0x6a1f_6a60 => Request::IncreaseStake {
                qid,
                new_stake: s.load_coins().map_err(fld("new_stake"))?,
                excess: excess(&mut s)?,
            },
            0xda06_8e78 => Request::Withdraw {
                qid,
                excess: excess(&mut s)?,
            },
            0xfafa_6cc1 => Request::RequestRefund {
                qid,
                excess: excess(&mut s)?,
            },
            0x7610_e6eb => Request::ProxyPayout {
                qid,
                excess: excess(&mut s)?,
            },
            0x9713_f187 => Request::ProxyIncreaseStake {
                qid,
                grams: s.load_coins().map_err(fld("grams"))?,
                excess: excess(&mut s)?,
            },
            OP_DO_NOT_PROCESS => {
                let tag = s.load_u32().map_err(fld("save_state tag"))?;
                if tag != OP_SAVE_STATE {
                    return Err(MessageError::UnknownOp {
                        field: "save_state tag",
                        op: tag,
                    });
                }
                Request::SaveState {
                    qid,
                    seqno: s.load_i32().map_err(fld("seqno"))?,
                    hash: s.load_array().map_err(fld("hash"))?,
                }
            }
            _ => return Err(MessageError::UnknownOp { field: "op", op }),
        };
        s.ensure_empty().map_err(fld("end"))?;
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn all() -> Vec<Request> {
        let e = Addr::basechain([3; 32]);
        vec![
            Request::TopUp {
                qid: 7,
                amount: Coins::from_nano(5 * Coins::TON),
                excess: e,
            },
            Request::Register {
                qid: 1,
                nonce: u64::MAX,
                excess: e,
            },
            Request::SetSecret {
                qid: 2,
                secret_hash: [9; 32],
                excess: e,
            },
            Request::IncreaseStake {
                qid: 3,
                new_stake: Coins::from_nano(2 * Coins::TON),
                excess: e,
            },
            Request::Withdraw { qid: 4, excess: e },
            Request::RequestRefund { qid: 5, excess: e },
            Request::ProxyPayout { qid: 6, excess: e },
            Request::ProxyIncreaseStake {
                qid: 8,
                grams: Coins::from_nano(1),
                excess: e,
            },
            Request::SaveState {
                qid: 9,
                seqno: -5,
                hash: [0xee; 32],
            },
        ]
    }

    #[test]
    fn every_request_roundtrips() {
        for r in all() {
            let c = r.to_cell().unwrap();
            assert_eq!(Request::parse(&c).unwrap(), r, "{}", r.name());
            // one extra bit is trailing data
            let mut b = CellBuilder::new();
            b.store_slice(&c.parse()).unwrap().store_bit(false).unwrap();
            assert!(matches!(
                Request::parse(&b.build().unwrap()),
                Err(MessageError::Field { field: "end", .. })
            ));
        }
    }

    #[test]
    fn unknown_op_names_value() {
        let mut b = CellBuilder::new();
        b.store_uint(0xdead_beef, 32)
            .unwrap()
            .store_uint(0, 64)
            .unwrap();
        assert_eq!(
            Request::parse(&b.build().unwrap()),
            Err(MessageError::UnknownOp {
                field: "op",
                op: 0xdead_beef
            })
        );
    }
}

//! The Cocoon wallet's external message and the internal messages it sends.
//!
//! External body: `sig:bits512 subwallet:32=0 valid_until:32 seqno:32 (mode:8 ^MessageRelaxed)×≤4`;
//! the signature is Ed25519 over the representation hash of the cell holding everything after
//! `sig` (same bits and references).
//!
//! Internal message (`MessageRelaxed`, block.tlb): `int_msg_info$0 ihr_disabled:1 bounce:1
//! bounced:0 src:addr_none dest:MsgAddressInt value:Coins other:0 ihr_fee:0 fwd_fee:0
//! created_lt:0 created_at:0`, then `init:(Maybe (Either StateInit ^StateInit))` and
//! `body:(Either X ^X)`. We write the state init and a non-empty body as references (an empty
//! body inline); both inline and reference forms are accepted on input.

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};

use super::{fld, MessageError};
use crate::address::{Addr, Coins};
use crate::cell::{Cell, CellBuilder, CellError};
use crate::contracts::StateInit;

/// Most messages in one wallet external.
pub const MAX_MESSAGES: usize = 4;

/// An internal message the wallet sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InternalMessage {
    /// Bounce flag.
    pub bounce: bool,
    /// Destination.
    pub dest: Addr,
    /// Value in nanotons.
    pub value: Coins,
    /// State init to deploy with, if any.
    pub init: Option<StateInit>,
    /// Body (None = empty body).
    pub body: Option<Cell>,
}

impl InternalMessage {
    /// Serializes as `MessageRelaxed`.
    pub fn to_cell(&self) -> Result<Cell, MessageError> {
        self.build().map_err(fld("internal message"))
    }

    fn build(&self) -> Result<Cell, CellError> {
        let mut b = CellBuilder::new();
        // int_msg_info$0, ihr_disabled = 1, bounce, bounced = 0, src = addr_none$00
        b.store_uint(0, 1)?
            .store_bit(true)?
            .store_bit(self.bounce)?
            .store_bit(false)?
            .store_uint(0, 2)?;
        b.store_addr(&self.dest)?.store_coins(self.value)?;
        // other currencies (empty dict), ihr_fee, fwd_fee, created_lt, created_at
        b.store_uint(0, 1 + 4 + 4 + 64 + 32)?;
        match &self.init {
            None => b.store_bit(false)?,
            Some(si) => b
                .store_bit(true)?
                .store_bit(true)?
                .store_ref(si.to_cell()?)?,
        };
        match &self.body {
            Some(body) if body.bit_len() > 0 || !body.refs().is_empty() => {
                b.store_bit(true)?.store_ref(body.clone())?
            }
            _ => b.store_bit(false)?,
        };
        b.build()
    }

    /// Parses a `MessageRelaxed` with `int_msg_info` (no extra currencies, src addr_none or
    /// addr_std). The state init is reported only as present/absent (`init` carries the code
    /// and data when they are the usual two references).
    pub fn parse(c: &Cell) -> Result<InternalMessage, MessageError> {
        let mut s = c.parse();
        if s.load_bit().map_err(fld("msg.tag"))? {
            return Err(MessageError::Invalid {
                field: "msg.tag",
                reason: "not int_msg_info".into(),
            });
        }
        let _ihr_disabled = s.load_bit().map_err(fld("msg.ihr_disabled"))?;
        let bounce = s.load_bit().map_err(fld("msg.bounce"))?;
        let _bounced = s.load_bit().map_err(fld("msg.bounced"))?;
        match s.load_uint(2).map_err(fld("msg.src"))? {
            0 => {}
            2 => {
                // addr_std: rewind by re-reading without the tag
                if s.load_bit().map_err(fld("msg.src"))? {
                    return Err(MessageError::Invalid {
                        field: "msg.src",
                        reason: "anycast".into(),
                    });
                }
                s.load_uint(8 + 256).map_err(fld("msg.src"))?;
            }
            t => {
                return Err(MessageError::Invalid {
                    field: "msg.src",
                    reason: format!("address tag {t:#b}"),
                })
            }
        }
        let dest = s.load_addr().map_err(fld("msg.dest"))?;
        let value = s.load_coins().map_err(fld("msg.value"))?;
        if s.load_bit().map_err(fld("msg.other"))? {
            return Err(MessageError::Invalid {
                field: "msg.other",
                reason: "extra currencies".into(),
            });
        }
        s.load_coins().map_err(fld("msg.ihr_fee"))?;
        s.load_coins().map_err(fld("msg.fwd_fee"))?;
        s.load_u64().map_err(fld("msg.created_lt"))?;
        s.load_u32().map_err(fld("msg.created_at"))?;
        let init = if s.load_bit().map_err(fld("msg.init"))? {
            let si = if s.load_bit().map_err(fld("msg.init.either"))? {
                s.load_ref().map_err(fld("msg.init"))?
            } else {
                return Err(MessageError::Invalid {
                    field: "msg.init",
                    reason: "inline state init not supported".into(),
                });
            };
            let mut t = si.parse();
            if t.load_uint(5).map_err(fld("msg.init.flags"))? != 0b00110 {
                return Err(MessageError::Invalid {
                    field: "msg.init",
                    reason: "expected code and data only".into(),
                });
            }
            let code = t.load_ref().map_err(fld("msg.init.code"))?;
            let data = t.load_ref().map_err(fld("msg.init.data"))?;
            t.ensure_empty().map_err(fld("msg.init end"))?;
            Some(StateInit { code, data })
        } else {
            None
        };
        let body = if s.load_bit().map_err(fld("msg.body.either"))? {
            let b = s.load_ref().map_err(fld("msg.body"))?;
            s.ensure_empty().map_err(fld("msg end"))?;
            Some(b)
        } else {
            let mut b = CellBuilder::new();
            b.store_slice(&s).map_err(fld("msg.body"))?;
            let b = b.build().map_err(fld("msg.body"))?;
            (b.bit_len() > 0 || !b.refs().is_empty()).then_some(b)
        };
        Ok(InternalMessage {
            bounce,
            dest,
            value,
            init,
            body,
        })
    }
}

/// The signed part of a wallet external.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalletExternal {
    /// Subwallet id (0 for the Cocoon wallet).
    pub subwallet: u32,
    /// Unix time after which the wallet rejects the message.
    pub valid_until: u32,
    /// The wallet's current seqno.
    pub seqno: u32,
    /// Up to four (send mode, message) pairs.
    pub messages: Vec<(u8, Cell)>,
}

impl WalletExternal {
    fn unsigned_cell(&self) -> Result<Cell, MessageError> {
        if self.messages.len() > MAX_MESSAGES {
            return Err(MessageError::Invalid {
                field: "messages",
                reason: format!("{} > 4", self.messages.len()),
            });
        }
        let mut b = CellBuilder::new();
        b.store_uint(self.subwallet.into(), 32)
            .map_err(fld("subwallet"))?;
        b.store_uint(self.valid_until.into(), 32)
            .map_err(fld("valid_until"))?;
        b.store_uint(self.seqno.into(), 32).map_err(fld("seqno"))?;
        for (mode, m) in &self.messages {
            b.store_uint((*mode).into(), 8).map_err(fld("mode"))?;
            b.store_ref(m.clone()).map_err(fld("messages"))?;
        }
        b.build().map_err(fld("external"))
    }

    /// Signs with the wallet key and serializes the external body.
    pub fn sign(&self, key: &SigningKey) -> Result<Cell, MessageError> {
        let u = self.unsigned_cell()?;
        let sig = key.sign(&u.hash()).to_bytes();
        let mut b = CellBuilder::new();
        b.store_bytes(&sig).map_err(fld("signature"))?;
        b.store_slice(&u.parse()).map_err(fld("external"))?;
        b.build().map_err(fld("external"))
    }

    /// Parses an external body, returning it and its signature (not verified).
    pub fn parse(body: &Cell) -> Result<(WalletExternal, [u8; 64]), MessageError> {
        let mut s = body.parse();
        let sig = s.load_array::<64>().map_err(fld("signature"))?;
        let subwallet = s.load_u32().map_err(fld("subwallet"))?;
        let valid_until = s.load_u32().map_err(fld("valid_until"))?;
        let seqno = s.load_u32().map_err(fld("seqno"))?;
        let mut messages = Vec::new();
        while s.remaining_refs() > 0 {
            let mode = s.load_u8().map_err(fld("mode"))?;
            messages.push((mode, s.load_ref().map_err(fld("messages"))?));
        }
        s.ensure_empty().map_err(fld("end"))?;
        Ok((
            WalletExternal {
                subwallet,
                valid_until,
                seqno,
                messages,
            },
            sig,
        ))
    }

    /// Parses and verifies as the wallet would: signature under `pubkey`, subwallet 0, seqno
    /// equal to `expected_seqno`, `valid_until > now`.
    pub fn parse_verified(
        body: &Cell,
        pubkey: &[u8; 32],
        expected_seqno: u32,
        now: u32,
    ) -> Result<WalletExternal, MessageError> {
        let (w, sig) = WalletExternal::parse(body)?;
        let vk = VerifyingKey::from_bytes(pubkey).map_err(|_| MessageError::BadPublicKey)?;
        vk.verify(&w.unsigned_cell()?.hash(), &Signature::from_bytes(&sig))
            .map_err(|_| MessageError::BadSignature)?;
        if w.subwallet != 0 {
            return Err(MessageError::Mismatch {
                field: "subwallet",
                envelope: 0,
                payload: w.subwallet.into(),
            });
        }
        if w.seqno != expected_seqno {
            return Err(MessageError::Mismatch {
                field: "seqno",
                envelope: expected_seqno.into(),
                payload: w.seqno.into(),
            });
        }
        if w.valid_until <= now {
            return Err(MessageError::Expired {
                valid_until: w.valid_until,
                now,
            });
        }
        Ok(w)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_message_roundtrip() {
        let m = InternalMessage {
            bounce: true,
            dest: Addr::basechain([2; 32]),
            value: Coins::from_nano(500_000_000),
            init: Some(StateInit {
                code: Cell::empty(),
                data: Cell::empty(),
            }),
            body: Some(
                crate::messages::unsigned::Request::Withdraw {
                    qid: 1,
                    excess: Addr::basechain([3; 32]),
                }
                .to_cell()
                .unwrap(),
            ),
        };
        assert_eq!(InternalMessage::parse(&m.to_cell().unwrap()).unwrap(), m);
    }

    #[test]
    fn external_verify_rules() {
        let key = SigningKey::from_bytes(&[3; 32]);
        let pk = key.verifying_key().to_bytes();
        let msg = InternalMessage {
            bounce: false,
            dest: Addr::basechain([2; 32]),
            value: Coins::from_nano(1),
            init: None,
            body: None,
        };
        let w = WalletExternal {
            subwallet: 0,
            valid_until: 100,
            seqno: 7,
            messages: vec![(3, msg.to_cell().unwrap())],
        };
        let body = w.sign(&key).unwrap();
        assert_eq!(
            WalletExternal::parse_verified(&body, &pk, 7, 99).unwrap(),
            w
        );
        assert!(matches!(
            WalletExternal::parse_verified(&body, &pk, 7, 100),
            Err(MessageError::Expired { .. })
        ));
        assert!(matches!(
            WalletExternal::parse_verified(&body, &pk, 8, 0),
            Err(MessageError::Mismatch { field: "seqno", .. })
        ));
        let other = SigningKey::from_bytes(&[4; 32]).verifying_key().to_bytes();
        assert_eq!(
            WalletExternal::parse_verified(&body, &other, 7, 0),
            Err(MessageError::BadSignature)
        );
        let five = WalletExternal {
            messages: vec![(0, Cell::empty()); 5],
            ..w
        };
        assert!(five.sign(&key).is_err());
    }
}

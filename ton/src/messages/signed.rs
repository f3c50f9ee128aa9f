//! Signed envelopes: vouchers and close requests signed with the proxy key Kp.
//!
//! Envelope: `op:32 qid:64 send_excesses_to:Addr sig:bits512 ^payload`; payload: `op:32 qid:64
//! [tokens:uint64] expected_my_address:Addr`; `sig = Ed25519(Kp, repr_hash(payload))`.

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};

use super::{fld, MessageError};
use crate::address::Addr;
use crate::cell::{Cell, CellBuilder};
use crate::contracts::ContractKind;

/// The six signed operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SignedOp {
    /// `0xbb63ff93` charge the client (cumulative tokens; stored < new).
    Charge,
    /// `0xefd711e1` grant a refund and close the client (stored ≤ new).
    GrantRefund,
    /// `0xa040ad28` pay the worker (stored < new).
    Payout,
    /// `0xf5f26a36` last payout, closes the worker (stored ≤ new).
    LastPayout,
    /// `0x636a4391` close request to the proxy contract (no tokens).
    CloseRequest,
    /// `0xe511abc7` close complete to the proxy contract (no tokens).
    CloseComplete,
}

impl SignedOp {
    /// All signed ops.
    pub const ALL: [SignedOp; 6] = [
        SignedOp::Charge,
        SignedOp::GrantRefund,
        SignedOp::Payout,
        SignedOp::LastPayout,
        SignedOp::CloseRequest,
        SignedOp::CloseComplete,
    ];

    /// The 32-bit opcode.
    pub const fn op(self) -> u32 {
        match self {
            SignedOp::Charge => 0xbb63_ff93,
            SignedOp::GrantRefund => 0xefd7_11e1,
            SignedOp::Payout => 0xa040_ad28,
            SignedOp::LastPayout => 0xf5f2_6a36,
            SignedOp::CloseRequest => 0x636a_4391,
            SignedOp::CloseComplete => 0xe511_abc7,
        }
    }

    /// From an opcode.
    pub fn from_op(op: u32) -> Option<SignedOp> {
        SignedOp::ALL.into_iter().find(|s| s.op() == op)
    }

    /// Whether the payload carries a cumulative token counter.
    pub const fn has_tokens(self) -> bool {
        !matches!(self, SignedOp::CloseRequest | SignedOp::CloseComplete)
    }

    /// The contract that receives it.
    pub const fn target(self) -> ContractKind {
        match self {
            SignedOp::Charge | SignedOp::GrantRefund => ContractKind::Client,
            SignedOp::Payout | SignedOp::LastPayout => ContractKind::Worker,
            SignedOp::CloseRequest | SignedOp::CloseComplete => ContractKind::Proxy,
        }
    }
}

/// The signed payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedPayload {
    /// Operation.
    pub op: SignedOp,
    /// Random query id.
    pub qid: u64,
    /// Cumulative tokens (None for close requests).
    pub tokens: Option<u64>,
    /// The receiving contract's own address.
    pub expected_address: Addr,
}

impl SignedPayload {
    /// Serializes the payload cell.
    pub fn to_cell(&self) -> Result<Cell, MessageError> {
        if self.op.has_tokens() != self.tokens.is_some() {
            return Err(MessageError::TokensPresence {
                op: self.op.op(),
                expected: self.op.has_tokens(),
            });
        }
        let mut b = CellBuilder::new();
        b.store_uint(self.op.op().into(), 32).map_err(fld("op"))?;
        b.store_uint(self.qid.into(), 64).map_err(fld("qid"))?;
        if let Some(t) = self.tokens {
            b.store_uint(t.into(), 64).map_err(fld("tokens"))?;
        }
        b.store_addr(&self.expected_address)
            .map_err(fld("expected_my_address"))?;
        b.build().map_err(fld("payload"))
    }

    /// Parses a payload cell (no trailing data).
    pub fn from_cell(c: &Cell) -> Result<SignedPayload, MessageError> {
        let mut s = c.parse();
        let raw = s.load_u32().map_err(fld("payload.op"))?;
        let op = SignedOp::from_op(raw).ok_or(MessageError::UnknownOp {
            field: "payload.op",
            op: raw,
        })?;
        let qid = s.load_u64().map_err(fld("payload.qid"))?;
        let tokens = if op.has_tokens() {
            Some(s.load_u64().map_err(fld("payload.tokens"))?)
        } else {
            None
        };
        let expected_address = s.load_addr().map_err(fld("payload.expected_my_address"))?;
        s.ensure_empty().map_err(fld("payload end"))?;
        Ok(SignedPayload {
            op,
            qid,
            tokens,
            expected_address,
        })
    }
}

/// A parsed (not yet verified) signed envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedMessage {
    /// Envelope op (equals `payload.op`).
    pub op: SignedOp,
    /// Envelope qid (equals `payload.qid`).
    pub qid: u64,
    /// Where the receiving contract sends excess value (not signed).
    pub send_excesses_to: Addr,
    /// Ed25519 signature over `payload_cell.hash()`.
    pub signature: [u8; 64],
    /// The payload cell as received.
    pub payload_cell: Cell,
    /// The parsed payload.
    pub payload: SignedPayload,
}

/// Signs `payload` with `key` and wraps it: `sig = Ed25519(key, repr_hash(payload))`.
pub fn build_signed(
    key: &SigningKey,
    payload: &SignedPayload,
    send_excesses_to: &Addr,
) -> Result<Cell, MessageError> {
    let pc = payload.to_cell()?;
    let sig = key.sign(&pc.hash()).to_bytes();
    envelope(payload.op, payload.qid, send_excesses_to, &sig, pc)
}

fn envelope(
    op: SignedOp,
    qid: u64,
    excess: &Addr,
    sig: &[u8; 64],
    payload: Cell,
) -> Result<Cell, MessageError> {
    let mut b = CellBuilder::new();
    b.store_uint(op.op().into(), 32).map_err(fld("op"))?;
    b.store_uint(qid.into(), 64).map_err(fld("qid"))?;
    b.store_addr(excess).map_err(fld("send_excesses_to"))?;
    b.store_bytes(sig).map_err(fld("signature"))?;
    b.store_ref(payload).map_err(fld("payload"))?;
    b.build().map_err(fld("envelope"))
}

impl SignedMessage {
    /// Parses an envelope: structure, known op, op/qid equal in envelope and payload, no
    /// trailing data anywhere. Does not check the signature (see [`SignedMessage::verify`]).
    pub fn parse(body: &Cell) -> Result<SignedMessage, MessageError> {
        let mut s = body.parse();
        let raw = s.load_u32().map_err(fld("op"))?;
        let op = SignedOp::from_op(raw).ok_or(MessageError::UnknownOp {
            field: "op",
            op: raw,
        })?;
        let qid = s.load_u64().map_err(fld("qid"))?;
        let send_excesses_to = s.load_addr().map_err(fld("send_excesses_to"))?;
        let signature = s.load_array::<64>().map_err(fld("signature"))?;
        let payload_cell = s.load_ref().map_err(fld("payload"))?;
        s.ensure_empty().map_err(fld("envelope end"))?;
        let payload = SignedPayload::from_cell(&payload_cell)?;
        if payload.op != op {
            return Err(MessageError::Mismatch {
                field: "op",
                envelope: u64::from(op.op()),
                payload: u64::from(payload.op.op()),
            });
        }
        if payload.qid != qid {
            return Err(MessageError::Mismatch {
                field: "qid",
                envelope: qid,
                payload: payload.qid,
            });
        }
        Ok(SignedMessage {
            op,
            qid,
            send_excesses_to,
            signature,
            payload_cell,
            payload,
        })
    }

    /// Checks the signature with `pubkey`, and that the payload names `expected_my_address`
    /// (the contract this message is for).
    pub fn verify(
        &self,
        pubkey: &[u8; 32],
        expected_my_address: &Addr,
    ) -> Result<(), MessageError> {
        let vk = VerifyingKey::from_bytes(pubkey).map_err(|_| MessageError::BadPublicKey)?;
        let sig = Signature::from_bytes(&self.signature);
        vk.verify(&self.payload_cell.hash(), &sig)
            .map_err(|_| MessageError::BadSignature)?;
        if self.payload.expected_address != *expected_my_address {
            return Err(MessageError::WrongAddress {
                expected: expected_my_address.to_string(),
                got: self.payload.expected_address.to_string(),
            });
        }
        Ok(())
    }

    /// Parses and verifies in one step.
    pub fn parse_verified(
        body: &Cell,
        pubkey: &[u8; 32],
        expected_my_address: &Addr,
    ) -> Result<SignedMessage, MessageError> {
        let m = SignedMessage::parse(body)?;
        m.verify(pubkey, expected_my_address)?;
        Ok(m)
    }

    /// The same signed payload with another excess address (the worker repacks the proxy's
    /// payout voucher this way before sending it to its worker contract).
    pub fn repack(&self, send_excesses_to: &Addr) -> Result<Cell, MessageError> {
        envelope(
            self.op,
            self.qid,
            send_excesses_to,
            &self.signature,
            self.payload_cell.clone(),
        )
    }

    /// Re-serializes the envelope as received.
    pub fn to_cell(&self) -> Result<Cell, MessageError> {
        self.repack(&self.send_excesses_to)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> SigningKey {
        SigningKey::from_bytes(&[1; 32])
    }

    fn sample(op: SignedOp) -> SignedPayload {
        SignedPayload {
            op,
            qid: 42,
            tokens: op.has_tokens().then_some(100_000),
            expected_address: Addr::basechain([5; 32]),
        }
    }

    #[test]
    fn every_op_roundtrips_and_verifies() {
        let pk = key().verifying_key().to_bytes();
        for op in SignedOp::ALL {
            let p = sample(op);
            let body = build_signed(&key(), &p, &Addr::basechain([6; 32])).unwrap();
            let m = SignedMessage::parse_verified(&body, &pk, &p.expected_address).unwrap();
            assert_eq!(m.payload, p);
            assert_eq!(m.to_cell().unwrap(), body);
            let other =
                SignedMessage::parse(&m.repack(&Addr::basechain([7; 32])).unwrap()).unwrap();
            other.verify(&pk, &p.expected_address).unwrap();
        }
    }

    #[test]
    fn rejects_wrong_key_address_and_mismatch() {
        let p = sample(SignedOp::Charge);
        let body = build_signed(&key(), &p, &Addr::basechain([6; 32])).unwrap();
        let m = SignedMessage::parse(&body).unwrap();
        let bad = SigningKey::from_bytes(&[9; 32]).verifying_key().to_bytes();
        assert_eq!(
            m.verify(&bad, &p.expected_address),
            Err(MessageError::BadSignature)
        );
        let pk = key().verifying_key().to_bytes();
        assert!(matches!(
            m.verify(&pk, &Addr::basechain([0; 32])),
            Err(MessageError::WrongAddress { .. })
        ));
        // Envelope qid differs from the payload's.
        let e = envelope(
            SignedOp::Charge,
            43,
            &Addr::basechain([6; 32]),
            &m.signature,
            m.payload_cell.clone(),
        )
        .unwrap();
        assert!(matches!(
            SignedMessage::parse(&e),
            Err(MessageError::Mismatch { field: "qid", .. })
        ));
        let e = envelope(
            SignedOp::Payout,
            42,
            &Addr::basechain([6; 32]),
            &m.signature,
            m.payload_cell.clone(),
        )
        .unwrap();
        assert!(matches!(
            SignedMessage::parse(&e),
            Err(MessageError::Mismatch { field: "op", .. })
        ));
        // tokens presence must follow the op
        let mut q = sample(SignedOp::CloseRequest);
        q.tokens = Some(1);
        assert!(matches!(
            q.to_cell(),
            Err(MessageError::TokensPresence { .. })
        ));
    }
}

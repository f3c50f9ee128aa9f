//! The inbound message of a proxy-contract transaction, read from its BOC and classified (pure:
//! bytes in, typed result out).
//!
//! The chain reports every transaction's inbound message as the BOC of a whole `Message`
//! (block.tlb): `int_msg_info$0 ihr_disabled bounce bounced src:MsgAddressInt dest value:
//! CurrencyCollection ihr_fee fwd_fee created_lt created_at`, then `init:(Maybe (Either StateInit
//! ^StateInit))` and `body:(Either X ^X)`; external inbound messages (`ext_in_msg_info$10`) carry
//! no sender and are never Cocoon notifications. `ton::messages::wallet::InternalMessage` parses
//! the relaxed form without its source, so the header is read here.
//!
//! Untrusted input: everything is read with bounds checks and ends in a typed error; the body
//! parsers are `ton`'s (no trailing data). Whether a sender may send what it sent is the
//! caller's decision ([`super::engine`] re-derives contract addresses).

use ton::address::Addr;
use ton::cell::{Cell, CellBuilder, CellError, CellSlice};
use ton::messages::notify::{
    ClientNotification, WorkerNotification, OP_CLIENT_PROXY_REQUEST, OP_WORKER_PROXY_REQUEST,
};
use ton::messages::unsigned::{Request, OP_DO_NOT_PROCESS};
use ton::messages::MessageError;

/// Why an inbound message could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InboundError {
    #[error("inbound message boc: {0}")]
    Boc(String),
    #[error("inbound message field {field}: {source}")]
    Field {
        field: &'static str,
        source: CellError,
    },
    #[error("inbound message field {field}: {reason}")]
    Unsupported {
        field: &'static str,
        reason: &'static str,
    },
}

fn fld(field: &'static str) -> impl Fn(CellError) -> InboundError {
    move |source| InboundError::Field { field, source }
}

/// The parts of an inbound internal message the watcher uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inbound {
    /// Sender (`addr_std`).
    pub src: Addr,
    /// The message is a bounce of one the account sent.
    pub bounced: bool,
    /// Value in nanotons.
    pub value: u128,
    /// Body (`None`: empty).
    pub body: Option<Cell>,
}

/// Reads an inbound message BOC. `Ok(None)`: an external inbound message (no sender).
pub fn parse_inbound(boc: &[u8]) -> Result<Option<Inbound>, InboundError> {
    let cell = ton::boc::decode(boc).map_err(|e| InboundError::Boc(e.to_string()))?;
    let mut s = cell.parse();
    if s.load_bit().map_err(fld("info tag"))? {
        // ext_in_msg_info$10 (ext_out$11 never arrives as an inbound message)
        return Ok(None);
    }
    let _ihr_disabled = s.load_bit().map_err(fld("ihr_disabled"))?;
    let _bounce = s.load_bit().map_err(fld("bounce"))?;
    let bounced = s.load_bit().map_err(fld("bounced"))?;
    let src = s.load_addr().map_err(fld("src"))?;
    let _dest = s.load_addr().map_err(fld("dest"))?;
    let value = s.load_coins().map_err(fld("value"))?.nano();
    // extra currencies: HashmapE (a bit, and a reference when present)
    if s.load_bit().map_err(fld("value.other"))? {
        s.load_ref().map_err(fld("value.other"))?;
    }
    s.load_coins().map_err(fld("ihr_fee"))?;
    s.load_coins().map_err(fld("fwd_fee"))?;
    s.load_u64().map_err(fld("created_lt"))?;
    s.load_u32().map_err(fld("created_at"))?;
    if s.load_bit().map_err(fld("init"))? {
        if s.load_bit().map_err(fld("init.either"))? {
            s.load_ref().map_err(fld("init"))?;
        } else {
            skip_state_init(&mut s)?;
        }
    }
    let body = if s.load_bit().map_err(fld("body.either"))? {
        let b = s.load_ref().map_err(fld("body"))?;
        s.ensure_empty().map_err(fld("end"))?;
        b
    } else {
        let mut b = CellBuilder::new();
        b.store_slice(&s).map_err(fld("body"))?;
        b.build().map_err(fld("body"))?
    };
    let body = (body.bit_len() > 0 || !body.refs().is_empty()).then_some(body);
    Ok(Some(Inbound {
        src,
        bounced,
        value,
        body,
    }))
}

/// Skips an inline `StateInit`: `split_depth:(Maybe (## 5)) special:(Maybe TickTock)
/// code:(Maybe ^Cell) data:(Maybe ^Cell) library:(HashmapE 256 SimpleLib)`.
fn skip_state_init(s: &mut CellSlice<'_>) -> Result<(), InboundError> {
    if s.load_bit().map_err(fld("init.split_depth"))? {
        s.load_uint(5).map_err(fld("init.split_depth"))?;
    }
    if s.load_bit().map_err(fld("init.special"))? {
        s.load_uint(2).map_err(fld("init.special"))?;
    }
    for field in ["init.code", "init.data", "init.library"] {
        if s.load_bit().map_err(fld(field))? {
            s.load_ref()
                .map_err(|source| InboundError::Field { field, source })?;
        }
    }
    Ok(())
}

/// What an inbound message to the proxy contract says, by its body's op. The sender is not
/// checked here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProxyInbound {
    Client(ClientNotification),
    Worker(WorkerNotification),
    /// A save-state anchor (`seqno` as the ledger numbers it: the int32 on the wire, as u32).
    Anchor {
        seqno: u32,
        digest: [u8; 32],
    },
    /// Anything else (top-ups of the contract, payout requests, empty bodies, bounces).
    Other,
}

/// Classifies a body; a known op whose body does not parse is an error.
pub fn classify(body: Option<&Cell>) -> Result<ProxyInbound, MessageError> {
    let Some(body) = body else {
        return Ok(ProxyInbound::Other);
    };
    let Ok(op) = body.parse().load_u32() else {
        return Ok(ProxyInbound::Other);
    };
    match op {
        OP_CLIENT_PROXY_REQUEST => ClientNotification::parse(body).map(ProxyInbound::Client),
        OP_WORKER_PROXY_REQUEST => WorkerNotification::parse(body).map(ProxyInbound::Worker),
        OP_DO_NOT_PROCESS => match Request::parse(body)? {
            Request::SaveState { seqno, hash, .. } => Ok(ProxyInbound::Anchor {
                seqno: seqno as u32,
                digest: hash,
            }),
            _ => Ok(ProxyInbound::Other),
        },
        _ => Ok(ProxyInbound::Other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ton::address::Coins;
    use ton::messages::wallet::InternalMessage;

    /// A whole inbound `Message` cell: the relaxed form with `src` filled in.
    fn message(src: &Addr, relaxed: &InternalMessage) -> Vec<u8> {
        let c = relaxed.to_cell().unwrap();
        let mut s = c.parse();
        // int_msg_info$0 ihr_disabled bounce bounced, then src addr_none$00
        let head = s.load_uint(4).unwrap();
        assert_eq!(s.load_uint(2).unwrap(), 0);
        let mut b = CellBuilder::new();
        b.store_uint(head, 4).unwrap();
        b.store_addr(src).unwrap();
        b.store_slice(&s).unwrap();
        ton::boc::encode(&b.build().unwrap())
    }

    #[test]
    fn reads_sender_value_and_body() {
        let body = Request::SaveState {
            qid: 1,
            seqno: -2,
            hash: [7; 32],
        }
        .to_cell()
        .unwrap();
        let m = InternalMessage {
            bounce: false,
            dest: Addr::basechain([2; 32]),
            value: Coins::from_nano(123),
            init: None,
            body: Some(body.clone()),
        };
        let got = parse_inbound(&message(&Addr::basechain([1; 32]), &m))
            .unwrap()
            .unwrap();
        assert_eq!(got.src, Addr::basechain([1; 32]));
        assert_eq!(got.value, 123);
        assert!(!got.bounced);
        assert_eq!(got.body.as_ref(), Some(&body));
        assert_eq!(
            classify(got.body.as_ref()).unwrap(),
            ProxyInbound::Anchor {
                seqno: u32::MAX - 1,
                digest: [7; 32]
            }
        );
        // empty body, with a state init by reference
        let m = InternalMessage {
            body: None,
            init: Some(ton::contracts::StateInit {
                code: Cell::empty(),
                data: Cell::empty(),
            }),
            ..m
        };
        let got = parse_inbound(&message(&Addr::basechain([1; 32]), &m))
            .unwrap()
            .unwrap();
        assert_eq!(got.body, None);
        assert_eq!(classify(None).unwrap(), ProxyInbound::Other);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(parse_inbound(b"").is_err());
        assert!(parse_inbound(&[0xb5, 0xee, 0x9c, 0x72, 1]).is_err());
        let m = InternalMessage {
            bounce: true,
            dest: Addr::basechain([2; 32]),
            value: Coins::from_nano(1),
            init: None,
            body: Some(Cell::empty()),
        };
        let full = message(&Addr::basechain([1; 32]), &m);
        let cell = ton::boc::decode(&full).unwrap();
        // every truncation of the header is an error
        for bits in 0..cell.bit_len() {
            let mut b = CellBuilder::new();
            b.store_bits(cell.data(), bits).unwrap();
            let _ = parse_inbound(&ton::boc::encode(&b.build().unwrap()));
        }
        // a known op with a broken body is an error
        let mut b = CellBuilder::new();
        b.store_uint(OP_CLIENT_PROXY_REQUEST.into(), 32).unwrap();
        assert!(classify(Some(&b.build().unwrap())).is_err());
    }
}

//! Whole TON messages and transactions as the chain stores them (block.tlb), parsed with this
//! crate's own cells: what an API client needs to follow a transfer (who sent what to whom, did
//! the contract accept it, which exit code) without a TVM library.
//!
//! `Message`: `info (int_msg_info$0 | ext_in_msg_info$10 | ext_out_msg_info$11)
//! init:(Maybe (Either StateInit ^StateInit)) body:(Either X ^X)`.
//!
//! `Transaction`: `transaction$0111 account_addr:bits256 lt:uint64 prev_trans_hash:bits256
//! prev_trans_lt:uint64 now:uint32 outmsg_cnt:uint15 orig_status:2 end_status:2
//! ^[in_msg:(Maybe ^Message) out_msgs:(HashmapE 15 ^Message)] total_fees:CurrencyCollection
//! state_update:^HASH_UPDATE description:^TransactionDescr`, with ordinary (`trans_ord$0000`)
//! and tick-tock (`trans_tick_tock$001`) descriptions; other descriptions (split, merge) are
//! refused. Everything here is untrusted chain bytes: every error names the field, nothing
//! panics (fuzzed by `fuzz/fuzz_targets/ton_parse.rs`).
//!
//! External inbound messages are built ([`external_in`]) with the layout tycho-types computes
//! for a message (state init and body inline while they fit, the body moved to a reference
//! first), so the same external is the same cell whichever library built it (checked in
//! `tonsim/tests/txparse.rs`).

use crate::address::{Addr, Coins};
use crate::cell::{Cell, CellBuilder, CellError, CellSlice, MAX_BITS, MAX_REFS};
use crate::contracts::StateInit;
use crate::messages::{fld, MessageError};

/// A message address as it can appear in a message header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MsgAddr {
    /// `addr_none$00`.
    None,
    /// `addr_extern$01` (external source or destination), its bit length.
    Extern(u16),
    /// `addr_std$10` without anycast.
    Std(Addr),
}

impl MsgAddr {
    /// The standard address, if this is one.
    pub fn std(&self) -> Option<Addr> {
        match self {
            MsgAddr::Std(a) => Some(*a),
            _ => None,
        }
    }
}

/// A message header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MsgInfo {
    /// `int_msg_info$0`.
    Internal {
        /// Bounce flag.
        bounce: bool,
        /// Bounced flag (this message is a bounce).
        bounced: bool,
        /// Source.
        src: MsgAddr,
        /// Destination.
        dst: MsgAddr,
        /// Value in nanotons (extra currencies are skipped).
        value: Coins,
        /// Forwarding fee.
        fwd_fee: Coins,
        /// Creation logical time.
        created_lt: u64,
    },
    /// `ext_in_msg_info$10`.
    ExternalIn {
        /// Destination.
        dst: MsgAddr,
    },
    /// `ext_out_msg_info$11`.
    ExternalOut {
        /// Source.
        src: MsgAddr,
        /// Creation logical time.
        created_lt: u64,
    },
}

/// A parsed message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Header.
    pub info: MsgInfo,
    /// The state init, re-serialized as its own cell, if any.
    pub init: Option<Cell>,
    /// The body as a cell (an inline body is copied into one).
    pub body: Cell,
}

impl Message {
    /// Parses a whole message cell.
    pub fn parse(c: &Cell) -> Result<Message, MessageError> {
        let mut s = c.parse();
        let info = if !s.load_bit().map_err(fld("msg.tag"))? {
            let _ihr_disabled = s.load_bit().map_err(fld("msg.ihr_disabled"))?;
            let bounce = s.load_bit().map_err(fld("msg.bounce"))?;
            let bounced = s.load_bit().map_err(fld("msg.bounced"))?;
            let src = load_msg_addr(&mut s, "msg.src")?;
            let dst = load_msg_addr(&mut s, "msg.dest")?;
            let value = load_currency(&mut s, "msg.value")?;
            s.load_coins().map_err(fld("msg.ihr_fee"))?;
            let fwd_fee = s.load_coins().map_err(fld("msg.fwd_fee"))?;
            let created_lt = s.load_u64().map_err(fld("msg.created_lt"))?;
            s.load_u32().map_err(fld("msg.created_at"))?;
            MsgInfo::Internal {
                bounce,
                bounced,
                src,
                dst,
                value,
                fwd_fee,
                created_lt,
            }
        } else if !s.load_bit().map_err(fld("msg.tag"))? {
            let src = load_msg_addr(&mut s, "msg.src")?;
            if matches!(src, MsgAddr::Std(_)) {
                return Err(invalid("msg.src", "internal address as external source"));
            }
            let dst = load_msg_addr(&mut s, "msg.dest")?;
            s.load_coins().map_err(fld("msg.import_fee"))?;
            MsgInfo::ExternalIn { dst }
        } else {
            let src = load_msg_addr(&mut s, "msg.src")?;
            let dst = load_msg_addr(&mut s, "msg.dest")?;
            if matches!(dst, MsgAddr::Std(_)) {
                return Err(invalid(
                    "msg.dest",
                    "internal address as external destination",
                ));
            }
            let created_lt = s.load_u64().map_err(fld("msg.created_lt"))?;
            s.load_u32().map_err(fld("msg.created_at"))?;
            MsgInfo::ExternalOut { src, created_lt }
        };
        let init = if s.load_bit().map_err(fld("msg.init"))? {
            if s.load_bit().map_err(fld("msg.init.either"))? {
                Some(s.load_ref().map_err(fld("msg.init"))?)
            } else {
                Some(load_inline_state_init(&mut s)?)
            }
        } else {
            None
        };
        let body = if s.load_bit().map_err(fld("msg.body.either"))? {
            let b = s.load_ref().map_err(fld("msg.body"))?;
            s.ensure_empty().map_err(fld("msg end"))?;
            b
        } else {
            let mut b = CellBuilder::new();
            b.store_slice(&s).map_err(fld("msg.body"))?;
            b.build().map_err(fld("msg.body"))?
        };
        Ok(Message { info, init, body })
    }

    /// The destination, for internal messages.
    pub fn internal_dst(&self) -> Option<Addr> {
        match &self.info {
            MsgInfo::Internal { dst, .. } => dst.std(),
            _ => None,
        }
    }
}

fn invalid(field: &'static str, reason: &str) -> MessageError {
    MessageError::Invalid {
        field,
        reason: reason.into(),
    }
}

fn load_msg_addr(s: &mut CellSlice<'_>, field: &'static str) -> Result<MsgAddr, MessageError> {
    match s.load_uint(2).map_err(fld(field))? {
        0b00 => Ok(MsgAddr::None),
        0b01 => {
            let len = s.load_uint(9).map_err(fld(field))? as u16;
            skip(s, usize::from(len)).map_err(fld(field))?;
            Ok(MsgAddr::Extern(len))
        }
        0b10 => {
            if s.load_bit().map_err(fld(field))? {
                return Err(invalid(field, "anycast addresses are not supported"));
            }
            let workchain = s.load_u8().map_err(fld(field))? as i8;
            let hash = s.load_array::<32>().map_err(fld(field))?;
            Ok(MsgAddr::Std(Addr { workchain, hash }))
        }
        _ => Err(invalid(field, "addr_var is not supported")),
    }
}

/// `CurrencyCollection`: grams and an extra-currency dictionary (skipped).
fn load_currency(s: &mut CellSlice<'_>, field: &'static str) -> Result<Coins, MessageError> {
    let grams = s.load_coins().map_err(fld(field))?;
    if s.load_bit().map_err(fld(field))? {
        s.load_ref().map_err(fld(field))?;
    }
    Ok(grams)
}

fn skip(s: &mut CellSlice<'_>, mut bits: usize) -> Result<(), CellError> {
    while bits > 0 {
        let n = bits.min(128);
        s.load_uint(n)?;
        bits -= n;
    }
    Ok(())
}

/// An inline `StateInit` (`split_depth:(Maybe ## 5) special:(Maybe TickTock) code:(Maybe ^Cell)
/// data:(Maybe ^Cell) library:(Maybe ^Cell)`), copied into its own cell.
fn load_inline_state_init(s: &mut CellSlice<'_>) -> Result<Cell, MessageError> {
    let f = fld("msg.init");
    let mut b = CellBuilder::new();
    let split = s.load_bit().map_err(&f)?;
    b.store_bit(split).map_err(&f)?;
    if split {
        b.store_uint(s.load_uint(5).map_err(&f)?, 5).map_err(&f)?;
    }
    let special = s.load_bit().map_err(&f)?;
    b.store_bit(special).map_err(&f)?;
    if special {
        b.store_uint(s.load_uint(2).map_err(&f)?, 2).map_err(&f)?;
    }
    for _ in 0..3 {
        let r = s.load_maybe_ref().map_err(&f)?;
        b.store_maybe_ref(r).map_err(&f)?;
    }
    b.build().map_err(f)
}

/// The inbound external message `dst` receives with `init` and `body` (src `addr_none`, import
/// fee 0), laid out as tycho-types lays out a message: everything inline if it fits, else the
/// body as a reference, else the state init as a reference, else both.
pub fn external_in(dst: Addr, init: Option<&StateInit>, body: &Cell) -> Result<Cell, CellError> {
    // ext_in_msg_info$10 src:addr_none$00 dest:addr_std import_fee:Grams(0) = 2+2+267+4 bits,
    // then Maybe (1) [Either (1)] … Either (1).
    let info_bits = 275 + 2 + usize::from(init.is_some());
    let (init_bits, init_refs) = if init.is_some() { (5, 2) } else { (0, 0) };
    let (body_bits, body_refs) = (body.bit_len(), body.refs().len());
    let fits = |bits: usize, refs: usize| bits <= MAX_BITS && refs <= MAX_REFS;
    let (init_ref, body_ref) = if fits(info_bits + init_bits + body_bits, init_refs + body_refs) {
        (false, false)
    } else if fits(info_bits + init_bits, init_refs + 1) {
        (false, true)
    } else if fits(info_bits + body_bits, body_refs + 1) {
        (true, false)
    } else {
        (true, true)
    };
    let mut b = CellBuilder::new();
    b.store_uint(0b10, 2)?.store_uint(0b00, 2)?;
    b.store_addr(&dst)?.store_coins(Coins::from_nano(0))?;
    match init {
        None => {
            b.store_bit(false)?;
        }
        Some(si) if init_ref => {
            b.store_bit(true)?
                .store_bit(true)?
                .store_ref(si.to_cell()?)?;
        }
        Some(si) => {
            b.store_bit(true)?
                .store_bit(false)?
                .store_uint(0b00110, 5)?
                .store_ref(si.code.clone())?
                .store_ref(si.data.clone())?;
        }
    }
    if body_ref {
        b.store_bit(true)?.store_ref(body.clone())?;
    } else {
        b.store_bit(false)?.store_slice(&body.parse())?;
    }
    b.build()
}

/// The compute phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ComputePhase {
    /// Skipped (`tr_phase_compute_skipped$0`), with the reason tag (0 no state, 1 bad state,
    /// 2 no gas, 6 suspended).
    Skipped(u8),
    /// The TVM ran.
    Vm {
        /// Success flag.
        success: bool,
        /// Exit code.
        exit_code: i32,
    },
}

/// The action phase's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ActionPhase {
    /// Success flag.
    pub success: bool,
    /// Result code (0 ok; e.g. 37 not enough TON for a message).
    pub result_code: i32,
}

/// A parsed transaction (the fields cocoon reads).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transaction {
    /// Account (basechain assumed by callers; the cell only holds the 256-bit part).
    pub account: [u8; 32],
    /// Logical time.
    pub lt: u64,
    /// Previous transaction's hash (zero for the first).
    pub prev_hash: [u8; 32],
    /// Previous transaction's logical time (0 for the first).
    pub prev_lt: u64,
    /// Unix time.
    pub now: u32,
    /// Total fees.
    pub total_fees: Coins,
    /// The inbound message, if any.
    pub in_msg: Option<Cell>,
    /// Outbound messages in creation order.
    pub out_msgs: Vec<Cell>,
    /// Compute phase.
    pub compute: ComputePhase,
    /// Action phase, if it ran.
    pub action: Option<ActionPhase>,
    /// Aborted flag.
    pub aborted: bool,
}

impl Transaction {
    /// Not aborted, and the compute and action phases (where they ran) succeeded.
    pub fn success(&self) -> bool {
        let compute_ok = match self.compute {
            ComputePhase::Skipped(_) => true,
            ComputePhase::Vm { success, .. } => success,
        };
        !self.aborted && compute_ok && self.action.is_none_or(|a| a.success)
    }

    /// The compute exit code, if the TVM ran.
    pub fn exit_code(&self) -> Option<i32> {
        match self.compute {
            ComputePhase::Vm { exit_code, .. } => Some(exit_code),
            ComputePhase::Skipped(_) => None,
        }
    }

    /// Parses a transaction cell.
    pub fn parse(c: &Cell) -> Result<Transaction, MessageError> {
        let mut s = c.parse();
        let tag = s.load_uint(4).map_err(fld("tx.tag"))?;
        if tag != 0b0111 {
            return Err(MessageError::Invalid {
                field: "tx.tag",
                reason: format!("{tag:#06b}, expected 0111"),
            });
        }
        let account = s.load_array::<32>().map_err(fld("tx.account_addr"))?;
        let lt = s.load_u64().map_err(fld("tx.lt"))?;
        let prev_hash = s.load_array::<32>().map_err(fld("tx.prev_trans_hash"))?;
        let prev_lt = s.load_u64().map_err(fld("tx.prev_trans_lt"))?;
        let now = s.load_u32().map_err(fld("tx.now"))?;
        let out_cnt = s.load_uint(15).map_err(fld("tx.outmsg_cnt"))? as usize;
        s.load_uint(4).map_err(fld("tx.status"))?;
        let msgs = s.load_ref().map_err(fld("tx.messages"))?;
        let total_fees = load_currency(&mut s, "tx.total_fees")?;
        s.load_ref().map_err(fld("tx.state_update"))?;
        let descr = s.load_ref().map_err(fld("tx.description"))?;
        s.ensure_empty().map_err(fld("tx end"))?;

        let mut m = msgs.parse();
        let in_msg = m.load_maybe_ref().map_err(fld("tx.in_msg"))?;
        let out_msgs = match m.load_maybe_ref().map_err(fld("tx.out_msgs"))? {
            Some(root) => dict_ref_values(&root, 15)?,
            None => Vec::new(),
        };
        m.ensure_empty().map_err(fld("tx.messages end"))?;
        if out_msgs.len() != out_cnt {
            return Err(MessageError::Invalid {
                field: "tx.outmsg_cnt",
                reason: format!("{out_cnt}, but {} messages", out_msgs.len()),
            });
        }
        let (compute, action, aborted) = parse_description(&descr)?;
        Ok(Transaction {
            account,
            lt,
            prev_hash,
            prev_lt,
            now,
            total_fees,
            in_msg,
            out_msgs,
            compute,
            action,
            aborted,
        })
    }
}

fn parse_description(
    descr: &Cell,
) -> Result<(ComputePhase, Option<ActionPhase>, bool), MessageError> {
    let mut d = descr.parse();
    let f = fld("tx.description");
    match d.load_uint(3).map_err(&f)? {
        0b000 => {
            if d.load_bit().map_err(&f)? {
                return Err(invalid("tx.description", "not an ordinary transaction"));
            }
            d.load_bit().map_err(fld("tx.credit_first"))?;
            if d.load_bit().map_err(fld("tx.storage_ph"))? {
                load_storage_phase(&mut d)?;
            }
            if d.load_bit().map_err(fld("tx.credit_ph"))? {
                if d.load_bit().map_err(fld("tx.credit_ph"))? {
                    d.load_coins().map_err(fld("tx.credit_ph"))?;
                }
                load_currency(&mut d, "tx.credit_ph")?;
            }
        }
        0b001 => {
            d.load_bit().map_err(fld("tx.is_tock"))?;
            load_storage_phase(&mut d)?;
        }
        t => {
            return Err(MessageError::Invalid {
                field: "tx.description",
                reason: format!("unsupported description tag {t:#05b}"),
            })
        }
    }
    let compute = load_compute_phase(&mut d)?;
    let action = match d.load_maybe_ref().map_err(fld("tx.action"))? {
        Some(a) => Some(load_action_phase(&a)?),
        None => None,
    };
    let aborted = d.load_bit().map_err(fld("tx.aborted"))?;
    Ok((compute, action, aborted))
}

fn load_storage_phase(d: &mut CellSlice<'_>) -> Result<(), MessageError> {
    let f = fld("tx.storage_ph");
    d.load_coins().map_err(&f)?;
    if d.load_bit().map_err(&f)? {
        d.load_coins().map_err(&f)?;
    }
    if d.load_bit().map_err(&f)? {
        d.load_bit().map_err(&f)?;
    }
    Ok(())
}

fn load_compute_phase(d: &mut CellSlice<'_>) -> Result<ComputePhase, MessageError> {
    let f = fld("tx.compute_ph");
    if !d.load_bit().map_err(&f)? {
        let mut reason = d.load_uint(2).map_err(&f)? as u8;
        if reason == 0b11 {
            if d.load_bit().map_err(&f)? {
                return Err(invalid("tx.compute_ph", "unknown skip reason"));
            }
            reason = 0b110;
        }
        return Ok(ComputePhase::Skipped(reason));
    }
    let success = d.load_bit().map_err(&f)?;
    d.load_uint(2).map_err(&f)?; // msg_state_used, account_activated
    d.load_coins().map_err(&f)?; // gas_fees
    let details = d.load_ref().map_err(&f)?;
    let mut v = details.parse();
    let var_uint = |v: &mut CellSlice<'_>, len_bits: usize| -> Result<(), CellError> {
        let len = v.load_uint(len_bits)? as usize;
        v.load_uint(len * 8).map(|_| ())
    };
    var_uint(&mut v, 3).map_err(&f)?; // gas_used
    var_uint(&mut v, 3).map_err(&f)?; // gas_limit
    if v.load_bit().map_err(&f)? {
        var_uint(&mut v, 2).map_err(&f)?; // gas_credit
    }
    v.load_u8().map_err(&f)?; // mode
    let exit_code = v.load_i32().map_err(fld("tx.exit_code"))?;
    Ok(ComputePhase::Vm { success, exit_code })
}

fn load_action_phase(a: &Cell) -> Result<ActionPhase, MessageError> {
    let f = fld("tx.action_ph");
    let mut s = a.parse();
    let success = s.load_bit().map_err(&f)?;
    s.load_uint(2).map_err(&f)?; // valid, no_funds
    match s.load_bit().map_err(&f)? {
        false => {}
        true => {
            s.load_bit().map_err(&f)?;
        }
    }
    for _ in 0..2 {
        if s.load_bit().map_err(&f)? {
            s.load_coins().map_err(&f)?;
        }
    }
    let result_code = s.load_i32().map_err(fld("tx.action_result_code"))?;
    Ok(ActionPhase {
        success,
        result_code,
    })
}

/// Most entries read from one dictionary (a transaction has at most 255 outbound messages).
const MAX_DICT_ENTRIES: usize = 1024;

/// The values of a `Hashmap n ^X` (the non-empty root of a `HashmapE`), each a single
/// reference, in key order.
fn dict_ref_values(root: &Cell, key_bits: usize) -> Result<Vec<Cell>, MessageError> {
    let mut out: Vec<(u128, Cell)> = Vec::new();
    walk(root, key_bits, 0, &mut out)?;
    out.sort_by_key(|(k, _)| *k);
    Ok(out.into_iter().map(|(_, c)| c).collect())
}

fn walk(c: &Cell, m: usize, prefix: u128, out: &mut Vec<(u128, Cell)>) -> Result<(), MessageError> {
    let f = fld("dict");
    if out.len() >= MAX_DICT_ENTRIES {
        return Err(invalid("dict", "too many entries"));
    }
    let mut s = c.parse();
    let (n, label) = load_label(&mut s, m)?;
    let key = (prefix << n) | label;
    if n == m {
        let v = s.load_ref().map_err(&f)?;
        s.ensure_empty().map_err(fld("dict leaf end"))?;
        out.push((key, v));
        return Ok(());
    }
    let left = s.load_ref().map_err(&f)?;
    let right = s.load_ref().map_err(&f)?;
    s.ensure_empty().map_err(fld("dict fork end"))?;
    let rest = m - n - 1;
    walk(&left, rest, key << 1, out)?;
    walk(&right, rest, (key << 1) | 1, out)
}

/// `HmLabel ~n m`: returns `(n, label bits)`.
fn load_label(s: &mut CellSlice<'_>, m: usize) -> Result<(usize, u128), MessageError> {
    let f = fld("dict label");
    // bits needed for a number 0..=m
    let len_bits = (usize::BITS - m.leading_zeros()) as usize;
    let (n, label) = if !s.load_bit().map_err(&f)? {
        // hml_short$0: unary length, then the bits
        let mut n = 0;
        while s.load_bit().map_err(&f)? {
            n += 1;
            if n > m {
                return Err(invalid("dict label", "longer than the key"));
            }
        }
        (n, s.load_uint(n).map_err(&f)?)
    } else if !s.load_bit().map_err(&f)? {
        // hml_long$10
        let n = s.load_uint(len_bits).map_err(&f)? as usize;
        if n > m {
            return Err(invalid("dict label", "longer than the key"));
        }
        (n, s.load_uint(n).map_err(&f)?)
    } else {
        // hml_same$11
        let v = s.load_bit().map_err(&f)?;
        let n = s.load_uint(len_bits).map_err(&f)? as usize;
        if n > m {
            return Err(invalid("dict label", "longer than the key"));
        }
        let bits = if v && n > 0 {
            u128::MAX >> (128 - n)
        } else {
            0
        };
        (n, bits)
    };
    Ok((n, label))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn external_in_round_trips() {
        let dst = Addr::basechain([7; 32]);
        let mut b = CellBuilder::new();
        b.store_uint(0xabcd, 16).unwrap();
        let body = b.build().unwrap();
        let init = StateInit {
            code: Cell::empty(),
            data: body.clone(),
        };
        for init in [None, Some(&init)] {
            let c = external_in(dst, init, &body).unwrap();
            let m = Message::parse(&c).unwrap();
            assert_eq!(
                m.info,
                MsgInfo::ExternalIn {
                    dst: MsgAddr::Std(dst)
                }
            );
            assert_eq!(m.body, body);
            assert_eq!(m.init, init.map(|i| i.to_cell().unwrap()));
        }
        // a full body moves to a reference
        let mut b = CellBuilder::new();
        b.store_bits(&[0xff; 128], 1000).unwrap();
        let big = b.build().unwrap();
        let c = external_in(dst, Some(&init), &big).unwrap();
        assert_eq!(c.refs().len(), 3);
        assert_eq!(Message::parse(&c).unwrap().body, big);
    }

    #[test]
    fn labels_and_dicts() {
        // one leaf at key 5 of 15 bits: hml_long$10 n=15 (4 bits) key
        let mut leaf = CellBuilder::new();
        leaf.store_uint(0b10, 2).unwrap();
        leaf.store_uint(15, 4).unwrap();
        leaf.store_uint(5, 15).unwrap();
        leaf.store_ref(Cell::empty()).unwrap();
        let root = leaf.build().unwrap();
        assert_eq!(dict_ref_values(&root, 15).unwrap(), vec![Cell::empty()]);
        // a label longer than the key is an error, not a panic
        let mut bad = CellBuilder::new();
        bad.store_uint(0b11, 2).unwrap();
        bad.store_bit(true).unwrap();
        bad.store_uint(15, 4).unwrap();
        let bad = bad.build().unwrap();
        assert!(dict_ref_values(&bad, 3).is_err());
        assert!(Transaction::parse(&Cell::empty()).is_err());
        assert!(Message::parse(&Cell::empty()).is_err());
    }
}

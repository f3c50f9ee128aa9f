//! Pure TON primitives and Cocoon's payment-contract messages.
//!
//! Purpose: build, parse and verify, byte for byte, what Cocoon's proxy, worker and client send to
//! and receive from Cocoon's five TON contracts (root, proxy, worker, client, wallet): cells and
//! BOCs ([`cell`], [`boc`]), addresses and amounts ([`address`]), network params v3 ([`params`]),
//! contract data, `StateInit` and address derivation with hash-pinned code ([`contracts`]), signed
//! vouchers, unsigned requests, notifications and wallet externals ([`messages`]), token
//! pricing ([`pricing`]), and whole chain messages and transactions ([`transaction`]).
//!
//! Pure: no I/O, no clock (the wallet's validity check takes `now`), no global state. Every parser
//! takes a [`cell::Cell`] or bytes and returns a typed error naming the field; none panics on
//! malformed input (see `tests/robustness.rs`).
//!
//! Trust boundary: everything read from the chain or from a peer is untrusted. A BOC decodes into
//! ordinary cells only; a signed voucher is accepted only after [`messages::signed::SignedMessage::verify`]
//! (Ed25519 under the proxy key over the payload's representation hash, op/qid equal in envelope
//! and payload, the payload naming the receiving contract's address); contract code is accepted
//! only if [`contracts::known_code`] recognises its hash. Signing keys are passed in by the caller.
//!
//! Spec references: TON whitepaper §2.5 and "Telegram Open Network Virtual Machine" (tvm.pdf)
//! §3.1 (cells, representation hash, depth) and the bag-of-cells format (`crypto/tl/boc.tlb`);
//! "Telegram Open Network Blockchain" (tblkch.pdf) §3.1 and `block.tlb` (`MsgAddressInt`,
//! `CommonMsgInfoRelaxed`, `StateInit`, `Coins`); Cocoon's layouts as in the testdata README and
//! 1IxI1/cocoon-contracts `messages.tlb` (with the `register` nonce the FunC code has).
#![forbid(unsafe_code)]

pub mod address;
pub mod boc;
pub mod cell;
pub mod contracts;
pub mod explain;
pub mod messages;
pub mod params;
pub mod pricing;
pub mod transaction;

//! Deterministic fuzz-style robustness: random, truncated and bit-flipped BOCs of the golden
//! messages go through every parser; nothing may panic. (The cargo-fuzz target lives in the
//! repository's fuzz/ crate; `fuzz_target_ton_parse.rs.txt` is the ready-to-move snippet.)

use serde_json::Value;
use ton::boc;
use ton::cell::Cell;
use ton::contracts::{ClientData, ProxyData, WalletData, WorkerData};
use ton::messages::notify::{ClientNotification, WorkerNotification};
use ton::messages::signed::SignedMessage;
use ton::messages::unsigned::Request;
use ton::messages::wallet::{InternalMessage, WalletExternal};
use ton::params::ParamsV3;

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn all_parsers(bytes: &[u8]) {
    // Also feed the mutation with its CRC32C recomputed, so it reaches the cell parsers instead of
    // stopping at the checksum.
    if bytes.len() > 8 && bytes[4] & 0x40 != 0 {
        let n = bytes.len() - 4;
        let mut fixed = bytes[..n].to_vec();
        fixed.extend_from_slice(&boc::crc32c(&fixed).to_le_bytes());
        decode_and_parse(&fixed);
    }
    decode_and_parse(bytes);
}

fn decode_and_parse(bytes: &[u8]) {
    let Ok(c) = boc::decode(bytes) else { return };
    parse_cell(&c);
    // Re-encoding a decoded cell must round-trip.
    assert_eq!(boc::decode(&boc::encode(&c)).unwrap().hash(), c.hash());
}

fn parse_cell(c: &Cell) {
    let pk = [0x8au8; 32];
    let addr = ton::address::Addr::basechain([0; 32]);
    if let Ok(m) = SignedMessage::parse(c) {
        let _ = m.verify(&pk, &addr);
    }
    let _ = Request::parse(c);
    let _ = ClientNotification::parse(c);
    let _ = WorkerNotification::parse(c);
    let _ = WalletExternal::parse_verified(c, &pk, 0, 0);
    let _ = InternalMessage::parse(c);
    let _ = ProxyData::from_cell(c);
    let _ = WorkerData::from_cell(c);
    let _ = ClientData::from_cell(c);
    let _ = WalletData::from_cell(c);
    if let Ok(p) = ParamsV3::from_cell(c) {
        let _ = p.check_code();
    }
    let _ = ton::explain::explain(c);
    let _ = ton::transaction::Message::parse(c);
    let _ = ton::transaction::Transaction::parse(c);
}

fn seeds() -> Vec<Vec<u8>> {
    let v: Value = serde_json::from_str(include_str!("fixtures/vectors.json")).unwrap();
    let i: Value = serde_json::from_str(include_str!("fixtures/flow_inputs.json")).unwrap();
    let mut out: Vec<Vec<u8>> = ["charge_body_boc", "payout_body_boc"]
        .iter()
        .map(|k| hex::decode(v[k].as_str().unwrap()).unwrap())
        .collect();
    out.push(hex::decode(i["wallet_external"]["body_boc"].as_str().unwrap()).unwrap());
    out.push(hex::decode(i["top_up_boc"].as_str().unwrap()).unwrap());
    out.push(hex::decode(ton::contracts::ContractKind::Worker.code_boc_hex().trim()).unwrap());
    out
}

#[test]
fn truncations_never_panic() {
    for s in seeds() {
        for n in 0..s.len() {
            all_parsers(&s[..n]);
        }
    }
}

#[test]
fn bit_flips_never_panic() {
    for s in seeds() {
        for i in 0..s.len() * 8 {
            let mut b = s.clone();
            b[i / 8] ^= 0x80 >> (i % 8);
            all_parsers(&b);
        }
    }
}

#[test]
fn random_mutations_never_panic() {
    let mut rng = Rng(0x00c0_c00e_5eed_0001);
    let seeds = seeds();
    for _ in 0..20_000 {
        let mut b = seeds[rng.below(seeds.len())].clone();
        for _ in 0..1 + rng.below(4) {
            match rng.below(4) {
                0 => {
                    let i = rng.below(b.len());
                    b[i] = rng.next() as u8;
                }
                1 => b.truncate(rng.below(b.len() + 1)),
                2 => {
                    let i = rng.below(b.len() + 1);
                    b.insert(i, rng.next() as u8);
                }
                _ => {
                    let i = rng.below(b.len());
                    b[i] ^= 1 << rng.below(8);
                }
            }
            if b.is_empty() {
                break;
            }
        }
        all_parsers(&b);
    }
    // Pure random bytes with the magic in front.
    for _ in 0..5_000 {
        let mut b = vec![0xb5, 0xee, 0x9c, 0x72];
        for _ in 0..rng.below(200) {
            b.push(rng.next() as u8);
        }
        all_parsers(&b);
    }
}

//! The end-to-end parsers ([`protocol::e2e`]) on untrusted bytes: key configs (from claims),
//! recipient headers, envelopes (at the worker, with a fixed key), response chunks (at the
//! client) and receipts (at the proxy and client). None may panic; whatever parses must
//! re-encode to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use protocol::e2e::{self, Binding, KeyConfig, Receipt, RecipientKey};

fuzz_target!(|data: &[u8]| {
    let (sel, rest) = match data.split_first() {
        Some((s, r)) => (*s, r),
        None => return,
    };
    match sel % 5 {
        0 => {
            if let Ok(c) = KeyConfig::parse(rest) {
                assert_eq!(c.encode(), rest);
            }
        }
        1 => {
            if let Ok(s) = std::str::from_utf8(rest) {
                if let Ok(r) = e2e::parse_recipients(s) {
                    assert!(!r.is_empty() && r.len() <= e2e::MAX_RECIPIENTS);
                    assert_eq!(e2e::parse_recipients(&e2e::format_recipients(&r)).unwrap(), r);
                }
            }
        }
        2 => {
            let key = RecipientKey::derive(0, &[1; 32]);
            let recipients = e2e::envelope_recipients(rest).unwrap_or_default();
            let b = Binding {
                path: "/v1/chat/completions".into(),
                request_id: "r".into(),
                model: "m".into(),
                max_tokens: 1,
                price_cap: None,
                time: 0,
                recipients,
            };
            // Forging an envelope that opens needs the content key: it must fail, quietly.
            assert!(e2e::open_request(&b, rest, &key).is_err());
        }
        3 => {
            // Response chunks under fixed keys, fed in order.
            let key = RecipientKey::derive(0, &[2; 32]);
            let b = Binding {
                path: "/v1/completions".into(),
                request_id: "r".into(),
                model: "m".into(),
                max_tokens: 1,
                price_cap: None,
                time: 0,
                recipients: vec![key.config().key_hash()],
            };
            let mut rng = Counter(0);
            let sealed = e2e::seal_request(&b, &[key.config().clone()], b"{}", &mut rng).unwrap();
            let mut opener = sealed.response.opener();
            for chunk in rest.chunks(40) {
                if opener.open(chunk).is_err() {
                    break;
                }
            }
            let _ = opener.finish();
        }
        _ => {
            if let Ok((r, _)) = Receipt::parse_unverified(rest) {
                assert!(r.model.len() <= 512);
            }
        }
    }
});

struct Counter(u64);

impl rand_core::RngCore for Counter {
    fn next_u32(&mut self) -> u32 {
        self.next_u64() as u32
    }
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        self.0
    }
    fn fill_bytes(&mut self, dst: &mut [u8]) {
        for b in dst {
            *b = self.next_u64() as u8;
        }
    }
}
impl rand_core::CryptoRng for Counter {}

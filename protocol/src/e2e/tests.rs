use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;

use super::*;

fn rng(seed: u8) -> ChaCha20Rng {
    ChaCha20Rng::from_seed([seed; 32])
}

fn worker_key(n: u8) -> RecipientKey {
    RecipientKey::derive(n, &[n; 32])
}

fn binding(recipients: &[&RecipientKey]) -> Binding {
    Binding {
        path: "/v1/chat/completions".into(),
        request_id: "req-1".into(),
        model: "tiny".into(),
        max_tokens: 64,
        price_cap: Some(1_000_000),
        time: 1_790_000_000,
        recipients: recipients.iter().map(|k| k.config().key_hash()).collect(),
    }
}

const BODY: &[u8] = br#"{"model":"tiny","messages":[{"role":"user","content":"hi"}]}"#;

fn seal(keys: &[&RecipientKey], seed: u8) -> (Binding, SealedRequest) {
    let b = binding(keys);
    let configs: Vec<KeyConfig> = keys.iter().map(|k| k.config().clone()).collect();
    let sealed = seal_request(&b, &configs, BODY, &mut rng(seed)).unwrap();
    (b, sealed)
}

// ---- test vectors (known answers on fixed keys and randomness) ----

#[test]
fn vector_key_config_and_hash() {
    let k = worker_key(1);
    let enc = k.config().encode();
    assert_eq!(enc.len(), 41);
    assert_eq!(&enc[..3], &[1, 0x00, 0x20]);
    assert_eq!(&enc[35..], &[0, 4, 0, 1, 0, 3]);
    assert_eq!(hex::encode(&enc), VECTOR_KEY_CONFIG);
    assert_eq!(k.config().key_hash().to_string(), VECTOR_KEY_HASH);
    assert_eq!(KeyConfig::parse(&enc).unwrap(), *k.config());
}

#[test]
fn vector_binding() {
    let k = worker_key(1);
    let b = binding(&[&k]);
    assert_eq!(hex::encode(b.encode().unwrap()), VECTOR_BINDING);
}

#[test]
fn vector_envelope_and_response() {
    let k = worker_key(1);
    let (b, sealed) = seal(&[&k], 7);
    assert_eq!(sealed.envelope.len(), 2 + 88 + 512 + 16);
    assert_eq!(
        hex::encode(Sha256::digest(&sealed.envelope)),
        VECTOR_ENVELOPE_SHA256
    );
    assert_eq!(hex::encode(sealed.request_hash), VECTOR_REQUEST_HASH);
    let chunk = sealed.response.sealer().seal(b"data: x\n\n", true).unwrap();
    assert_eq!(hex::encode(&chunk), VECTOR_CHUNK0_FINAL);
    let opened = open_request(&b, &sealed.envelope, &k).unwrap();
    assert_eq!(opened.body, BODY);
    assert_eq!(opened.request_hash, sealed.request_hash);
}

#[test]
fn vector_receipt() {
    let key = SigningKey::from_bytes(&[9; 32]);
    let bytes = receipt().sign(&key).unwrap();
    assert_eq!(hex::encode(&bytes), VECTOR_RECEIPT);
    assert_eq!(
        Receipt::verify(&bytes, &key.verifying_key()).unwrap(),
        receipt()
    );
}

const VECTOR_KEY_CONFIG: &str =
    "01002041852320ff367495fa522c94cb83af391e4e89018392725bbf2098dd931bc424000400010003";
const VECTOR_KEY_HASH: &str = "1f94a40eb2ece7fc";
const VECTOR_BINDING: &str =
    "636f636f6f6e2f6532652f763120726571756573740000142f76312f636861742f636f6d706c6574696f6e7300057265712d31000474696e79000000400100000000000f4240000000006ab13b80011f94a40eb2ece7fc";
const VECTOR_ENVELOPE_SHA256: &str =
    "5e42472ef6067801fb6c7d37111e5f719594f22ec1cc80165b419ae51257c679";
const VECTOR_REQUEST_HASH: &str =
    "44e8a2b64932d2d6f49d0058ce843b944bb1df6ad961e7b09fb8fb8442b5c27e";
const VECTOR_CHUNK0_FINAL: &str = "019e31ede29658756389f90f089525556763ab011c8e26e4846d";
const VECTOR_RECEIPT: &str =
    "0100057265712d3101010101010101010101010101010101010101010101010101010101010101010202020202020202020202020202020202020202020202020202020202020202000474696e79004061626162616261626162616261626162616261626162616261626162616261626162616261626162616261626162616261626162616261626162616261626162000000000000000c000000000000000300000000000000280000000000000000000003e8000473746f7000000029000000006ab13b819a80b39c99036b69ef4bde4cf655a07a31291d779916ba2378efd30ada102f2286ecca8f2659d4a3054c95065634d3d3b085aca0476e2539d9f2e5515a0fb70c";

// ---- behaviour ----

#[test]
fn any_of_three_recipients_opens_and_derives_the_same_response_keys() {
    let (k1, k2, k3, other) = (worker_key(1), worker_key(2), worker_key(3), worker_key(4));
    let (b, sealed) = seal(&[&k1, &k2, &k3], 1);
    for k in [&k1, &k2, &k3] {
        let opened = open_request(&b, &sealed.envelope, k).unwrap();
        assert_eq!(opened.body, BODY);
        let c = opened.response.sealer().seal(b"abc", false).unwrap();
        assert_eq!(
            sealed.response.opener().open(&c).unwrap(),
            (b"abc".to_vec(), false)
        );
    }
    assert_eq!(
        open_request(&b, &sealed.envelope, &other).unwrap_err(),
        E2eError::NotRecipient
    );
}

#[test]
fn every_flipped_byte_of_the_envelope_is_refused() {
    let k = worker_key(1);
    let (b, sealed) = seal(&[&k], 2);
    for i in 0..sealed.envelope.len() {
        let mut e = sealed.envelope.clone();
        e[i] ^= 0x01;
        assert!(open_request(&b, &e, &k).is_err(), "byte {i}");
    }
    assert!(open_request(&b, &sealed.envelope[..sealed.envelope.len() - 1], &k).is_err());
    let mut longer = sealed.envelope.clone();
    longer.push(0);
    assert!(open_request(&b, &longer, &k).is_err());
}

#[test]
fn every_edited_binding_field_is_refused() {
    let k = worker_key(1);
    let (b, sealed) = seal(&[&k], 3);
    let edits: [fn(&mut Binding); 7] = [
        |b| b.path = "/v1/completions".into(),
        |b| b.request_id = "req-2".into(),
        |b| b.model = "big".into(),
        |b| b.max_tokens = 65,
        |b| b.price_cap = None,
        |b| b.price_cap = Some(1_000_001),
        |b| b.time += 1,
    ];
    for (i, edit) in edits.iter().enumerate() {
        let mut e = b.clone();
        edit(&mut e);
        assert_eq!(
            open_request(&e, &sealed.envelope, &k).unwrap_err(),
            E2eError::Decrypt,
            "edit {i}"
        );
    }
    let mut fewer = b.clone();
    fewer.recipients = vec![worker_key(2).config().key_hash()];
    assert!(open_request(&fewer, &sealed.envelope, &k).is_err());
}

#[test]
fn padding_hides_the_exact_length() {
    assert_eq!(padded_len(1), 512);
    assert_eq!(padded_len(512), 512);
    assert_eq!(padded_len(513), 1024);
    assert_eq!(padded_len(64 << 10), 64 << 10);
    assert_eq!(padded_len((64 << 10) + 1), 128 << 10);
    assert_eq!(padded_len((200 << 10) + 1), 256 << 10);
    let k = worker_key(1);
    let b = binding(&[&k]);
    let cfg = [k.config().clone()];
    let a = seal_request(&b, &cfg, &[b'a'; 600], &mut rng(1)).unwrap();
    let c = seal_request(&b, &cfg, &[b'a'; 1000], &mut rng(1)).unwrap();
    assert_eq!(a.envelope.len(), c.envelope.len());
    for n in [0usize, 1, 510, 511, 512, 4096, 70_000] {
        let body = vec![b'x'; n];
        let s = seal_request(&b, &cfg, &body, &mut rng(2)).unwrap();
        assert_eq!(open_request(&b, &s.envelope, &k).unwrap().body, body, "{n}");
    }
    // A body that itself ends in zero bytes and 0x80 survives.
    let tricky = [b'{', 0x80, 0, 0];
    let s = seal_request(&b, &cfg, &tricky, &mut rng(3)).unwrap();
    assert_eq!(open_request(&b, &s.envelope, &k).unwrap().body, tricky);
}

#[test]
fn largest_body_fits_the_largest_envelope() {
    let k = worker_key(1);
    let b = binding(&[&k]);
    let body = vec![b' '; crate::MAX_REQUEST_BODY];
    let s = seal_request(&b, &[k.config().clone()], &body, &mut rng(4)).unwrap();
    assert!(s.envelope.len() <= MAX_ENVELOPE);
}

#[test]
fn chunks_must_arrive_in_order_once_and_unedited() {
    let k = worker_key(1);
    let (b, sealed) = seal(&[&k], 5);
    let opened = open_request(&b, &sealed.envelope, &k).unwrap();
    let mut s = opened.response.sealer();
    let c0 = s.seal(b"zero", false).unwrap();
    let c1 = s.seal(b"one", false).unwrap();
    let c2 = s.seal(b"two", true).unwrap();
    assert!(s.seal(b"three", false).is_err());

    let mut o = sealed.response.opener();
    assert_eq!(o.open(&c0).unwrap().0, b"zero");
    assert_eq!(o.finish(), Err(E2eError::Truncated { received: 1 }));
    // duplicate, swapped
    assert!(sealed.response.opener().open(&c1).is_err());
    let mut dup = sealed.response.opener();
    dup.open(&c0).unwrap();
    assert!(dup.open(&c0).is_err());
    // flipped bytes (flag and ciphertext)
    for i in 0..c1.len() {
        let mut e = c1.clone();
        e[i] ^= 0x01;
        let mut o2 = sealed.response.opener();
        o2.open(&c0).unwrap();
        assert!(o2.open(&e).is_err(), "byte {i}");
    }
    // a non-final chunk relabelled final
    let mut relabel = c1.clone();
    relabel[0] = FLAG_FINAL;
    let mut o3 = sealed.response.opener();
    o3.open(&c0).unwrap();
    assert!(o3.open(&relabel).is_err());

    assert_eq!(o.open(&c1).unwrap(), (b"one".to_vec(), false));
    assert_eq!(o.open(&c2).unwrap(), (b"two".to_vec(), true));
    assert!(o.finish().is_ok());
    assert!(o.open(&c2).is_err());
    assert!(sealed.response.opener().open(&[]).is_err());
    assert!(sealed.response.opener().open(&[0; 5]).is_err());
}

#[test]
fn responses_of_different_requests_do_not_open_each_other() {
    let k = worker_key(1);
    let (_, a) = seal(&[&k], 10);
    let (_, b) = seal(&[&k], 11);
    let c = a.response.sealer().seal(b"x", true).unwrap();
    assert!(b.response.opener().open(&c).is_err());
}

fn receipt() -> Receipt {
    Receipt {
        request_id: "req-1".into(),
        request_hash: [1; 32],
        claims_hash: [2; 32],
        model: "tiny".into(),
        model_digest: "ab".repeat(32),
        usage: Usage {
            prompt_tokens: 12,
            cached_tokens: 3,
            completion_tokens: 40,
            reasoning_tokens: 0,
        },
        price_coefficient_milli: 1000,
        finish_reason: "stop".into(),
        chunks: 41,
        time: 1_790_000_001,
    }
}

#[test]
fn receipts_verify_only_unedited_with_the_right_key() {
    let key = SigningKey::from_bytes(&[9; 32]);
    let bytes = receipt().sign(&key).unwrap();
    for i in 0..bytes.len() {
        let mut e = bytes.clone();
        e[i] ^= 0x01;
        assert!(
            Receipt::verify(&e, &key.verifying_key()).is_err(),
            "byte {i}"
        );
    }
    let other = SigningKey::from_bytes(&[8; 32]).verifying_key();
    assert_eq!(
        Receipt::verify(&bytes, &other).unwrap_err(),
        E2eError::ReceiptSignature
    );
    assert!(Receipt::verify(&bytes[..bytes.len() - 1], &key.verifying_key()).is_err());
    let mut longer = bytes.clone();
    longer.push(0);
    assert!(Receipt::verify(&longer, &key.verifying_key()).is_err());
}

#[test]
fn key_configs_parse_strictly() {
    let good = worker_key(1).config().encode();
    assert!(KeyConfig::parse(&good[..good.len() - 1]).is_err());
    assert!(KeyConfig::parse(&[good.clone(), vec![0]].concat()).is_err());
    let mut kem = good.clone();
    kem[2] = 0x21;
    assert!(KeyConfig::parse(&kem).is_err());
    let mut suite = good.clone();
    let n = suite.len();
    suite[n - 1] = 0x01; // AES-128-GCM only
    assert!(KeyConfig::parse(&suite).is_err());
    // More suites offered, ours among them: accepted, encoding round-trips.
    let mut more = good[..35].to_vec();
    more.extend_from_slice(&[0, 8, 0, 1, 0, 1, 0, 1, 0, 3]);
    let parsed = KeyConfig::parse(&more).unwrap();
    assert_eq!(parsed.encode(), more);
    assert!(KeyConfig::parse(&[]).is_err());
}

#[test]
fn recipients_header_and_claims() {
    let (k1, k2) = (worker_key(1), worker_key(2));
    let hs = vec![k1.config().key_hash(), k2.config().key_hash()];
    assert_eq!(parse_recipients(&format_recipients(&hs)).unwrap(), hs);
    let h = hs[0].to_string();
    for bad in [
        "".to_string(),
        format!("{h},{h}"),
        format!(
            "{h},{},{},{}",
            hs[1],
            worker_key(3).config().key_hash(),
            worker_key(4).config().key_hash()
        ),
        h.to_uppercase(),
        h[..15].to_string(),
        format!("{h},"),
    ] {
        assert!(parse_recipients(&bad).is_err(), "{bad}");
    }

    let keys = WorkerKeys {
        key_config: k1.config().clone(),
        receipt_key: SigningKey::from_bytes(&[9; 32]).verifying_key(),
    };
    let extra: BTreeMap<String, String> = keys
        .claims()
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    assert_eq!(WorkerKeys::from_claims(&extra).unwrap(), Some(keys));
    assert_eq!(WorkerKeys::from_claims(&BTreeMap::new()).unwrap(), None);
    let mut half = extra.clone();
    half.remove(CLAIM_RECEIPT_KEY);
    assert!(WorkerKeys::from_claims(&half).is_err());
    let mut bad = extra.clone();
    bad.insert(CLAIM_KEY_CONFIG.into(), "zz".into());
    assert!(WorkerKeys::from_claims(&bad).is_err());
}

#[test]
fn debug_output_shows_no_key_material() {
    let k = worker_key(1);
    let (_, sealed) = seal(&[&k], 1);
    let shown = format!("{k:?} {:?}", sealed.response);
    assert!(!shown.contains(&hex::encode(k.config().public_key)));
    assert!(shown.contains(&k.config().key_hash().to_string()));
}

/// Interoperability with RFC 9458: its Appendix A key configuration (one X25519 key offering
/// HKDF-SHA256 with AES-128-GCM and with ChaCha20-Poly1305) parses, keeps both suites,
/// re-encodes to the same bytes, and carries the public key of the RFC's gateway secret.
#[test]
fn rfc9458_appendix_a_key_config() {
    let wire = hex::decode(
        "01002031e1f05a740102115220e9af918f738674aec95f54db6e04eb705aae8e79815500080001000100010003",
    )
    .unwrap();
    let c = KeyConfig::parse(&wire).unwrap();
    assert_eq!(c.key_id, 1);
    assert_eq!(
        hex::encode(c.public_key),
        "31e1f05a740102115220e9af918f738674aec95f54db6e04eb705aae8e798155"
    );
    assert_eq!(
        c.algorithms,
        vec![
            (KDF_HKDF_SHA256, 0x0001),
            (KDF_HKDF_SHA256, AEAD_CHACHA20POLY1305)
        ]
    );
    assert_eq!(c.encode(), wire);
    use hpke::{Deserializable, Serializable};
    let secret =
        hex::decode("3c168975674b2fa8e465970b79c8dcf09f1c741626480bd4c6162fc5b6a98e1a").unwrap();
    let sk = <Kem as hpke::Kem>::PrivateKey::from_bytes(&secret).unwrap();
    let pk = <Kem as hpke::Kem>::sk_to_pk(&sk);
    assert_eq!(pk.to_bytes().as_slice(), c.public_key.as_slice());
    // Without our suite (only AES-128-GCM offered) the config is refused by name.
    let mut aes_only = wire[..wire.len() - 4].to_vec();
    aes_only[36] = 0x04;
    assert!(KeyConfig::parse(&aes_only).is_err());
}

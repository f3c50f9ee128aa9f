//! Explains any Cocoon message body, contract data cell, params cell or contract code as JSON by
//! trying each known layout in turn (used by `cocoon-ton decode`).

use serde_json::{json, Value};

use crate::address::Addr;
use crate::cell::Cell;
use crate::contracts::{known_code, ClientData, ProxyData, WalletData, WorkerData};
use crate::messages::notify::{ClientNotification, ClientPayload, WorkerNotification};
use crate::messages::signed::SignedMessage;
use crate::messages::unsigned::Request;
use crate::messages::wallet::{InternalMessage, WalletExternal};
use crate::params::ParamsV3;

fn a(x: &Addr) -> Value {
    Value::String(x.to_string())
}

fn params_json(p: &ParamsV3) -> Value {
    let code = |c: &Option<Cell>| c.as_ref().map(|c| hex::encode(c.hash()));
    json!({
        "params_version": p.params_version, "unique_id": p.unique_id, "is_test": p.is_test,
        "price_per_token": p.price_per_token.nano().to_string(),
        "worker_fee_per_token": p.worker_fee_per_token.nano().to_string(),
        "multipliers": { "prompt": p.multipliers.prompt, "cached": p.multipliers.cached,
            "completion": p.multipliers.completion, "reasoning": p.multipliers.reasoning },
        "proxy_delay_before_close": p.proxy_delay_before_close,
        "client_delay_before_close": p.client_delay_before_close,
        "min_proxy_stake": p.min_proxy_stake.nano().to_string(),
        "min_client_stake": p.min_client_stake.nano().to_string(),
        "proxy_code_hash": code(&p.proxy_code), "worker_code_hash": code(&p.worker_code),
        "client_code_hash": code(&p.client_code),
    })
}

fn request_json(r: &Request) -> Value {
    let mut m = serde_json::Map::new();
    m.insert("op".into(), json!(format!("{:#010x}", r.op())));
    let mut put = |k: &str, x: Value| {
        m.insert(k.into(), x);
    };
    match r {
        Request::TopUp {
            qid,
            amount,
            excess,
        } => {
            put("qid", json!(qid));
            put("amount", json!(amount.nano().to_string()));
            put("send_excesses_to", a(excess));
        }
        Request::Register { qid, nonce, excess } => {
            put("qid", json!(qid));
            put("nonce", json!(nonce));
            put("send_excesses_to", a(excess));
        }
        Request::SetSecret {
            qid,
            secret_hash,
            excess,
        } => {
            put("qid", json!(qid));
            put("secret_hash", json!(hex::encode(secret_hash)));
            put("send_excesses_to", a(excess));
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
            put("qid", json!(qid));
            put("amount", json!(c.nano().to_string()));
            put("send_excesses_to", a(excess));
        }
        Request::Withdraw { qid, excess }
        | Request::RequestRefund { qid, excess }
        | Request::ProxyPayout { qid, excess } => {
            put("qid", json!(qid));
            put("send_excesses_to", a(excess));
        }
        Request::SaveState { qid, seqno, hash } => {
            put("qid", json!(qid));
            put("seqno", json!(seqno));
            put("hash", json!(hex::encode(hash)));
        }
    }
    Value::Object(m)
}

/// Tries every known layout; returns `{"layout": name, "fields": …}` for the first that parses
/// completely, or `None`.
pub fn explain(c: &Cell) -> Option<Value> {
    let out = |layout: &str, fields: Value| {
        Some(json!({ "layout": layout, "cell_hash": hex::encode(c.hash()), "fields": fields }))
    };
    if let Some(k) = known_code(&c.hash()) {
        return out("contract_code", json!({ "contract": k }));
    }
    if let Ok(m) = SignedMessage::parse(c) {
        return out(
            &format!("signed_{}", serde_json::to_value(m.op).ok()?.as_str()?),
            json!({ "op": format!("{:#010x}", m.op.op()), "qid": m.qid, "send_excesses_to": a(&m.send_excesses_to),
                "signature": hex::encode(m.signature), "payload_hash": hex::encode(m.payload_cell.hash()),
                "tokens": m.payload.tokens, "expected_my_address": a(&m.payload.expected_address),
                "note": "signature not verified (needs the proxy public key)" }),
        );
    }
    if let Ok(r) = Request::parse(c) {
        return out(r.name(), request_json(&r));
    }
    if let Ok(n) = ClientNotification::parse(c) {
        let payload = n.payload.as_ref().map(|p| match p {
            ClientPayload::TopUp { coins, excess } => json!({"kind": "top_up", "coins": coins.nano().to_string(), "send_excesses_to": a(excess)}),
            ClientPayload::Register { nonce } => json!({"kind": "register", "nonce": nonce}),
            ClientPayload::RefundGranted { coins, excess } => json!({"kind": "refund_granted", "coins": coins.nano().to_string(), "send_excesses_to": a(excess)}),
            ClientPayload::RefundForce { coins, excess } => json!({"kind": "refund_force", "coins": coins.nano().to_string(), "send_excesses_to": a(excess)}),
        });
        let s = &n.snapshot;
        return out(
            "client_proxy_notification",
            json!({ "qid": n.qid, "owner": a(&n.owner), "state": s.state, "balance": s.balance.nano().to_string(),
                "stake": s.stake.nano().to_string(), "tokens_used": s.tokens_used, "secret_hash": hex::encode(s.secret_hash),
                "payload": payload }),
        );
    }
    if let Ok(n) = WorkerNotification::parse(c) {
        let payout = n.payout.as_ref().map(|p| {
            json!({"worker_part": p.worker_part.nano().to_string(),
            "proxy_part": p.proxy_part.nano().to_string(), "send_excesses_to": a(&p.excess)})
        });
        return out(
            "worker_proxy_notification",
            json!({ "qid": n.qid, "owner": a(&n.owner), "state": n.state, "tokens": n.tokens, "payout": payout }),
        );
    }
    if let Ok(d) = ProxyData::from_cell(c) {
        return out(
            "proxy_data",
            json!({ "owner": a(&d.owner), "pubkey": hex::encode(d.pubkey), "root": a(&d.root), "state": d.state,
                "balance": d.balance.nano().to_string(), "stake": d.stake.nano().to_string(), "unlock_ts": d.unlock_ts,
                "params": params_json(&d.params) }),
        );
    }
    if let Ok(d) = WorkerData::from_cell(c) {
        return out(
            "worker_data",
            json!({ "owner": a(&d.owner), "proxy": a(&d.proxy), "pubkey": hex::encode(d.pubkey), "state": d.state,
                "tokens": d.tokens, "params": params_json(&d.params) }),
        );
    }
    if let Ok(d) = ClientData::from_cell(c) {
        return out(
            "client_data",
            json!({ "state": d.state, "balance": d.balance.nano().to_string(), "stake": d.stake.nano().to_string(),
                "tokens_used": d.tokens_used, "unlock_ts": d.unlock_ts, "secret_hash": hex::encode(d.secret_hash),
                "owner": a(&d.owner), "proxy": a(&d.proxy), "pubkey": hex::encode(d.pubkey), "params": params_json(&d.params) }),
        );
    }
    if let Ok(p) = ParamsV3::from_cell(c) {
        return out("params_v3", params_json(&p));
    }
    if let Ok(d) = WalletData::from_cell(c) {
        return out(
            "wallet_data",
            json!({ "seqno": d.seqno, "subwallet": d.subwallet, "pubkey": hex::encode(d.pubkey), "status": d.status, "owner": a(&d.owner) }),
        );
    }
    if let Ok(m) = InternalMessage::parse(c) {
        return out(
            "internal_message",
            json!({ "bounce": m.bounce, "dest": a(&m.dest), "value": m.value.nano().to_string(),
                "init": m.init.is_some(), "body": m.body.as_ref().and_then(explain) }),
        );
    }
    if let Ok((w, sig)) = WalletExternal::parse(c) {
        let msgs: Vec<Value> = w
            .messages
            .iter()
            .map(|(mode, m)| json!({ "mode": mode, "message": explain(m) }))
            .collect();
        return out(
            "wallet_external",
            json!({ "signature": hex::encode(sig), "subwallet": w.subwallet, "valid_until": w.valid_until, "seqno": w.seqno,
                "messages": msgs, "note": "signature not verified (needs the wallet public key)" }),
        );
    }
    None
}

/// What a compute-phase exit code means for Cocoon's contracts (codes of
/// 1IxI1/cocoon-contracts `errors`, the wallet's 1030–1041) and the TVM's standard codes;
/// `None` for a code neither defines.
pub fn exit_code_meaning(code: i32) -> Option<&'static str> {
    Some(match code {
        0 | 1 => "success",
        2 => "stack underflow",
        3 => "stack overflow",
        4 => "integer overflow",
        5 => "integer out of range",
        6 => "invalid opcode",
        7 => "type check error",
        8 => "cell overflow",
        9 => "cell underflow (malformed message or data)",
        10 => "dictionary error",
        11 => "unknown get-method or unexpected TVM state",
        13 => "out of gas",
        -14 => "out of gas",
        1000 => "old message: the counter is not above the stored one",
        1001 => "contract balance too low for the request (e.g. nothing above the stake)",
        1002 => "balance too low",
        1003 => "message value too low for the request",
        1004 => "message format mismatch",
        1005 => "signed message format mismatch",
        1006 => "contract is closed",
        1007 => "bad signature",
        1008 => "stored data damaged",
        1009 => "sender is not the owner",
        1010 => "message must come from the owner",
        1011 => "not unlocked yet: the close delay has not passed",
        1012 => "unknown op",
        1013 => "unknown text command",
        1014 => "contract address mismatch",
        1015 => "signed payload names another contract",
        1030 => "wallet: message expired (valid_until)",
        1031 => "wallet: blocked by its owner",
        1032 => "wallet: wrong seqno",
        1033 => "wallet: wrong subwallet",
        1034 => "wallet: bad signature",
        1035 => "wallet: balance below 2 TON, the wallet refuses to send",
        1040 => "wallet: internal command not from its owner",
        1041 => "wallet: unknown text command",
        2000 => "unknown proxy type",
        _ => return None,
    })
}

/// What an action-phase result code means (TVM's standard codes for sending messages).
pub fn action_code_meaning(code: i32) -> Option<&'static str> {
    Some(match code {
        0 => "success",
        32 => "invalid action list",
        33 => "too many actions",
        34 => "invalid or unsupported action",
        35 => "invalid source address",
        36 => "invalid destination address",
        37 => "not enough TON to send the message",
        38 => "not enough extra currency",
        40 => "not enough funds to pay for forwarding the message",
        _ => return None,
    })
}

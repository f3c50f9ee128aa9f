//! The JSON shapes of toncenter's TON HTTP API v2, defined once: the client
//! ([`crate::http_client`]) parses them and the local test server ([`crate::http_server`])
//! renders them, and a test re-parses what is rendered.
//!
//! Shapes (toncenter v2, every response wrapped in `{"ok": true, "result": …}` or
//! `{"ok": false, "error": "…", "code": N}`):
//! - `getAddressInformation` → `raw.fullAccountState`: `balance` (decimal string), `state`
//!   (`active` / `uninitialized` / `frozen`), `code` and `data` (base64 BOC or `""`),
//!   `last_transaction_id {lt, hash}`, `sync_utime`.
//! - `runGetMethod` → `smc.runResult`: `exit_code`, `stack` of `["num", "0x…"]`,
//!   `["cell", {"bytes": base64}]` (slices too), `["tuple", {"elements": […]}]`, `["null"]`.
//! - `getTransactions` → `[raw.transaction]`: `data` (base64 transaction BOC, which is what the
//!   client reads), `transaction_id {lt, hash}`, `utime`, `fee`, `in_msg`, `out_msgs` (each
//!   `raw.message` with `source`, `destination`, `value`, `msg_data {"@type": "msg.dataRaw",
//!   body, init_state}`).
//!
//! Tuple elements are accepted in both the `["num", …]` form and tonlib's typed form
//! (`{"@type": "tvm.stackEntryNumber", …}`). Unverified against the live service here: how it
//! renders `null` and tuple entries, which Cocoon's get-methods do not return.

use base64::engine::general_purpose::{STANDARD, URL_SAFE};
use base64::Engine;
use serde_json::{json, Value};
use ton::transaction::{Message, MsgAddr, MsgInfo};

use crate::tonchain::{
    int_from_hex, int_to_hex, AccountState, AccountStatus, ChainTx, StackValue, TxId,
};
use ton::cell::Cell;

/// Deepest tuple nesting accepted in a stack.
const MAX_DEPTH: usize = 16;

/// `{"ok": true, "result": result}`.
pub fn ok(result: Value) -> Value {
    json!({"ok": true, "result": result})
}

/// `{"ok": false, "error": message, "code": code}`.
pub fn err(code: i64, message: &str) -> Value {
    json!({"ok": false, "error": message, "code": code})
}

/// Unwraps an envelope: `Ok(result)`, `Err(Ok((code, message)))` for `{"ok": false}`, and
/// `Err(Err(reason))` for anything else.
pub fn open(v: Value) -> Result<Value, Result<(i64, String), String>> {
    let Value::Object(mut m) = v else {
        return Err(Err("not a JSON object".into()));
    };
    match m.get("ok").and_then(Value::as_bool) {
        Some(true) => m.remove("result").ok_or(Err("no result".into())),
        Some(false) => Err(Ok((
            m.get("code").and_then(Value::as_i64).unwrap_or(0),
            m.get("error")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
        ))),
        None => Err(Err("no boolean \"ok\"".into())),
    }
}

/// Standard base64 of a hash.
pub fn hash_b64(h: &[u8; 32]) -> String {
    STANDARD.encode(h)
}

/// A 32-byte hash in standard or URL-safe base64, or hex.
pub fn parse_hash(s: &str) -> Option<[u8; 32]> {
    let bytes = STANDARD
        .decode(s)
        .or_else(|_| URL_SAFE.decode(s))
        .ok()
        .or_else(|| hex::decode(s).ok())?;
    bytes.try_into().ok()
}

fn boc_b64(c: &Cell) -> String {
    STANDARD.encode(ton::boc::encode(c))
}

fn parse_boc(v: &Value, what: &str) -> Result<Option<Cell>, String> {
    let s = v.as_str().ok_or(format!("{what}: not a string"))?;
    if s.is_empty() {
        return Ok(None);
    }
    let bytes = STANDARD.decode(s).map_err(|e| format!("{what}: {e}"))?;
    ton::boc::decode(&bytes)
        .map(Some)
        .map_err(|e| format!("{what}: {e}"))
}

/// A decimal integer given as a string or a JSON number.
fn num<T: std::str::FromStr>(v: &Value, what: &str) -> Result<T, String> {
    let text = match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        _ => return Err(format!("{what}: not a number")),
    };
    text.parse()
        .map_err(|_| format!("{what}: bad number {text:?}"))
}

fn tx_id(v: &Value, what: &str) -> Result<TxId, String> {
    let lt = num(&v["lt"], what)?;
    let hash = v["hash"]
        .as_str()
        .and_then(parse_hash)
        .ok_or(format!("{what}: bad hash"))?;
    Ok(TxId { lt, hash })
}

fn render_tx_id(id: Option<TxId>) -> Value {
    let id = id.unwrap_or(TxId {
        lt: 0,
        hash: [0; 32],
    });
    json!({"@type": "internal.transactionId", "lt": id.lt.to_string(), "hash": hash_b64(&id.hash)})
}

/// `raw.fullAccountState` of `a` at chain time `sync_utime`.
pub fn render_account(a: &AccountState, sync_utime: u32) -> Value {
    let state = match a.status {
        AccountStatus::NonExist | AccountStatus::Uninit => "uninitialized",
        AccountStatus::Active => "active",
        AccountStatus::Frozen => "frozen",
    };
    json!({
        "@type": "raw.fullAccountState",
        "balance": a.balance.to_string(),
        "code": a.code.as_ref().map(boc_b64).unwrap_or_default(),
        "data": a.data.as_ref().map(boc_b64).unwrap_or_default(),
        "last_transaction_id": render_tx_id(a.last_tx),
        "frozen_hash": "",
        "sync_utime": sync_utime,
        "state": state,
    })
}

/// Parses `raw.fullAccountState`; returns the account and `sync_utime`. An uninitialized
/// account with no balance and no transaction is [`AccountStatus::NonExist`].
pub fn parse_account(v: &Value) -> Result<(AccountState, u32), String> {
    let balance: u128 = num(&v["balance"], "balance")?;
    let last = tx_id(&v["last_transaction_id"], "last_transaction_id")?;
    let sync_utime = num(&v["sync_utime"], "sync_utime")?;
    let status = match v["state"].as_str() {
        Some("active") => AccountStatus::Active,
        Some("frozen") => AccountStatus::Frozen,
        Some("uninitialized") if balance == 0 && last.lt == 0 => AccountStatus::NonExist,
        Some("uninitialized") => AccountStatus::Uninit,
        other => return Err(format!("state: unexpected {other:?}")),
    };
    let (code, data) = if status == AccountStatus::Active {
        (
            parse_boc(&v["code"], "code")?,
            parse_boc(&v["data"], "data")?,
        )
    } else {
        (None, None)
    };
    let account = AccountState {
        balance,
        status,
        code,
        data,
        last_tx: (last.lt != 0).then_some(last),
    };
    Ok((account, sync_utime))
}

fn render_entry(v: &StackValue) -> Value {
    match v {
        StackValue::Null => json!(["null"]),
        StackValue::Int(d) => json!(["num", int_to_hex(d).unwrap_or_default()]),
        StackValue::Cell(c) => json!(["cell", {"bytes": boc_b64(c), "object": {}}]),
        StackValue::Tuple(t) => {
            json!(["tuple", {"@type": "tvm.tuple", "elements": t.iter().map(render_entry).collect::<Vec<_>>()}])
        }
        StackValue::Unsupported(name) => json!([name, {}]),
    }
}

fn parse_entry(v: &Value, depth: usize) -> Result<StackValue, String> {
    if depth > MAX_DEPTH {
        return Err("stack: tuples nested too deep".into());
    }
    if v.is_object() {
        return parse_tl_entry(v, depth);
    }
    let kind = v[0].as_str().ok_or("stack: entry is not [type, value]")?;
    Ok(match kind {
        "num" | "int" => {
            let s = v[1].as_str().ok_or("stack: num is not a string")?;
            StackValue::Int(int_from_hex(s).ok_or(format!("stack: bad num {s:?}"))?)
        }
        "cell" | "slice" => {
            let c = parse_boc(&v[1]["bytes"], "stack cell")?.ok_or("stack: empty cell")?;
            StackValue::Cell(c)
        }
        "null" => StackValue::Null,
        "tuple" | "list" => {
            let items = v[1]["elements"]
                .as_array()
                .ok_or("stack: tuple without elements")?;
            StackValue::Tuple(
                items
                    .iter()
                    .map(|e| parse_entry(e, depth + 1))
                    .collect::<Result<_, _>>()?,
            )
        }
        other => StackValue::Unsupported(other.chars().take(32).collect()),
    })
}

/// A stack entry in tonlib's typed form (`{"@type": "tvm.stackEntryNumber", "number":
/// {"number": "123"}}`, …), as toncenter nests it inside tuples.
fn parse_tl_entry(v: &Value, depth: usize) -> Result<StackValue, String> {
    let ty = v["@type"].as_str().ok_or("stack: entry without @type")?;
    Ok(match ty {
        "tvm.stackEntryNumber" => {
            let n = v["number"]["number"].as_str().ok_or("stack: number")?;
            let ok = n.len() <= 100
                && !n.is_empty()
                && n.strip_prefix('-')
                    .unwrap_or(n)
                    .bytes()
                    .all(|b| b.is_ascii_digit());
            if !ok {
                return Err(format!("stack: bad number {n:?}"));
            }
            StackValue::Int(n.to_string())
        }
        "tvm.stackEntryCell" => StackValue::Cell(
            parse_boc(&v["cell"]["bytes"], "stack cell")?.ok_or("stack: empty cell")?,
        ),
        "tvm.stackEntrySlice" => StackValue::Cell(
            parse_boc(&v["slice"]["bytes"], "stack slice")?.ok_or("stack: empty slice")?,
        ),
        "tvm.stackEntryTuple" | "tvm.stackEntryList" => {
            let key = if ty == "tvm.stackEntryTuple" {
                "tuple"
            } else {
                "list"
            };
            let items = v[key]["elements"]
                .as_array()
                .ok_or("stack: tuple elements")?;
            StackValue::Tuple(
                items
                    .iter()
                    .map(|e| parse_entry(e, depth + 1))
                    .collect::<Result<_, _>>()?,
            )
        }
        other => StackValue::Unsupported(other.chars().take(32).collect()),
    })
}

/// `smc.runResult`: the stack, or only the exit code for a failed method.
pub fn render_run_result(r: &Result<Vec<StackValue>, i32>) -> Value {
    let (exit_code, stack) = match r {
        Ok(s) => (0, s.iter().map(render_entry).collect::<Vec<_>>()),
        Err(code) => (*code, Vec::new()),
    };
    json!({"@type": "smc.runResult", "gas_used": 0, "stack": stack, "exit_code": exit_code})
}

/// Parses `smc.runResult`: the stack for exit code 0 or 1, else `Err(exit_code)`.
pub fn parse_run_result(v: &Value) -> Result<Result<Vec<StackValue>, i32>, String> {
    let exit_code: i32 = num(&v["exit_code"], "exit_code")?;
    if exit_code != 0 && exit_code != 1 {
        return Ok(Err(exit_code));
    }
    let entries = v["stack"].as_array().ok_or("stack: not an array")?;
    Ok(Ok(entries
        .iter()
        .map(|e| parse_entry(e, 0))
        .collect::<Result<_, _>>()?))
}

/// `raw.message` of a message BOC (informational: the client reads the transaction BOC).
fn render_msg(boc: &[u8]) -> Value {
    let Ok(cell) = ton::boc::decode(boc) else {
        return Value::Null;
    };
    let Ok(m) = Message::parse(&cell) else {
        return Value::Null;
    };
    let addr = |a: &MsgAddr| a.std().map(|a| a.to_string()).unwrap_or_default();
    let (source, destination, value, fwd_fee, created_lt) = match &m.info {
        MsgInfo::Internal {
            src,
            dst,
            value,
            fwd_fee,
            created_lt,
            ..
        } => (
            addr(src),
            addr(dst),
            value.nano(),
            fwd_fee.nano(),
            *created_lt,
        ),
        MsgInfo::ExternalIn { dst } => (String::new(), addr(dst), 0, 0, 0),
        MsgInfo::ExternalOut { src, created_lt } => (addr(src), String::new(), 0, 0, *created_lt),
    };
    let init = m
        .init
        .as_ref()
        .map(|c| STANDARD.encode(ton::boc::encode(c)))
        .unwrap_or_default();
    json!({
        "@type": "raw.message",
        "source": source,
        "destination": destination,
        "value": value.to_string(),
        "fwd_fee": fwd_fee.to_string(),
        "ihr_fee": "0",
        "created_lt": created_lt.to_string(),
        "body_hash": hash_b64(&m.body.hash()),
        "msg_data": {"@type": "msg.dataRaw", "body": STANDARD.encode(ton::boc::encode(&m.body)), "init_state": init},
        "message": "",
    })
}

/// `raw.transaction` of `t`.
pub fn render_tx(t: &ChainTx) -> Value {
    json!({
        "@type": "raw.transaction",
        "utime": t.utime,
        "data": STANDARD.encode(&t.boc),
        "transaction_id": render_tx_id(Some(t.id)),
        "fee": t.fee.to_string(),
        "storage_fee": "0",
        "other_fee": "0",
        "in_msg": t.in_msg.as_deref().map(render_msg).unwrap_or(Value::Null),
        "out_msgs": t.out_msgs.iter().map(|m| render_msg(m)).collect::<Vec<_>>(),
    })
}

/// Parses `raw.transaction` from its `data` BOC and checks `transaction_id` and `utime`
/// against it.
pub fn parse_tx(v: &Value) -> Result<ChainTx, String> {
    let data = v["data"].as_str().ok_or("data: not a string")?;
    let boc = STANDARD.decode(data).map_err(|e| format!("data: {e}"))?;
    let t = ChainTx::from_boc(&boc)?;
    let id = tx_id(&v["transaction_id"], "transaction_id")?;
    if id != t.id {
        return Err(format!(
            "transaction_id {}:{} does not match data ({}:{})",
            id.lt,
            hex::encode(id.hash),
            t.id.lt,
            hex::encode(t.id.hash)
        ));
    }
    let utime: u32 = num(&v["utime"], "utime")?;
    if utime != t.utime {
        return Err(format!("utime {utime} does not match data ({})", t.utime));
    }
    Ok(t)
}

/// Percent-encodes a query value (RFC 3986 unreserved characters kept).
pub fn query_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Decodes a percent-encoded query value (`+` is a space); `None` if malformed.
pub fn query_decode(s: &str) -> Option<String> {
    let mut out = Vec::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let h = s.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(h, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stack_renders_and_reparses() {
        let cell = ton::contracts::ContractKind::Wallet.code();
        let stack = vec![
            StackValue::Int("-12345678901234567890123".into()),
            StackValue::Cell(cell),
            StackValue::Null,
            StackValue::Tuple(vec![StackValue::Int("7".into())]),
        ];
        let r = render_run_result(&Ok(stack.clone()));
        assert_eq!(parse_run_result(&r).unwrap(), Ok(stack));
        assert_eq!(
            parse_run_result(&render_run_result(&Err(11))).unwrap(),
            Err(11)
        );
        assert!(parse_run_result(&json!({"exit_code": 0, "stack": [["num", "12"]]})).is_err());
        assert!(parse_run_result(&json!({"exit_code": 0, "stack": [[1]]})).is_err());
        // tonlib's typed entries, as toncenter nests them in tuples
        let tl = json!({"exit_code": 0, "stack": [["tuple", {"@type": "tvm.tuple", "elements": [
            {"@type": "tvm.stackEntryNumber", "number": {"@type": "tvm.numberDecimal", "number": "-5"}},
            {"@type": "tvm.stackEntryCell", "cell": {"bytes": STANDARD.encode(ton::boc::encode(&Cell::empty()))}}
        ]}]]});
        assert_eq!(
            parse_run_result(&tl).unwrap(),
            Ok(vec![StackValue::Tuple(vec![
                StackValue::Int("-5".into()),
                StackValue::Cell(Cell::empty())
            ])])
        );
        let bad = json!({"exit_code": 0, "stack": [["tuple", {"elements": [
            {"@type": "tvm.stackEntryNumber", "number": {"number": "1e9"}}
        ]}]]});
        assert!(parse_run_result(&bad).is_err());
    }

    #[test]
    fn account_renders_and_reparses() {
        let a = AccountState {
            balance: 5,
            status: AccountStatus::Active,
            code: Some(ton::contracts::ContractKind::Client.code()),
            data: Some(Cell::empty()),
            last_tx: Some(TxId {
                lt: 9,
                hash: [3; 32],
            }),
        };
        assert_eq!(parse_account(&render_account(&a, 77)).unwrap(), (a, 77));
        let none = AccountState {
            balance: 0,
            status: AccountStatus::NonExist,
            code: None,
            data: None,
            last_tx: None,
        };
        assert_eq!(parse_account(&render_account(&none, 1)).unwrap().0, none);
        assert!(parse_account(&json!({"balance": "x"})).is_err());
    }

    #[test]
    fn envelope_and_query() {
        assert_eq!(open(ok(json!(1))).unwrap(), json!(1));
        assert_eq!(
            open(err(500, "no")).unwrap_err().unwrap(),
            (500, "no".into())
        );
        assert!(open(json!([])).unwrap_err().is_err());
        assert!(open(json!({"result": 1})).unwrap_err().is_err());
        let s = "0:ab+/=";
        assert_eq!(query_decode(&query_encode(s)).as_deref(), Some(s));
        assert_eq!(query_decode("%G1"), None);
        assert_eq!(query_decode("%"), None);
    }
}

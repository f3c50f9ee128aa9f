//! cocoon's RTMR3 runtime event log, format version 1.
//!
//! cocoon's PID 1 (cocoon-init) extends RTMR3 with runtime events and appends each event to a
//! log at `/run/cocoon/rtmr3-log.json` ([`LOG_PATH`]) that travels to verifiers next to the
//! quote. The first event is always the SHA-256 of the host-provided config archive, measured
//! before the archive is parsed (house style rule 14). Verifiers parse the log, replay it and
//! compare the result with the quote's RTMR3 ([`RuntimeLog::check`]); only then do the events
//! say anything. Specified in `docs/eventlogs.md`:
//!
//! * an event is a `name` of 1..=64 bytes from `[a-z0-9._-]` and a `payload` of at most 4096
//!   bytes;
//! * `digest = SHA-384("cocoon/rtmr3-event/v1\0" || u32_le(len(name)) || name || payload)`
//!   (the length prefix makes the encoding injective);
//! * `RTMR3 = SHA-384(RTMR3 || digest)` per event, from 48 zero bytes (what TDG.MR.RTMR.EXTEND
//!   does);
//! * the first event is `config` with the 32-byte SHA-256 of the config archive; `config`
//!   appears nowhere else;
//! * JSON: `{"format":"cocoon-rtmr3-log/v1","events":[{"name":…,"payload":"<hex>",
//!   "digest":"<hex sha-384>"}]}`; unknown fields are rejected, the stored digest must equal the
//!   recomputed one, at most 256 events and 1 MiB.
//!
//! Trust boundary: the log is untrusted input (the host or a network peer hands it over). The
//! parser bounds every size before allocating, and nothing in the log is believed until its
//! replay equals the RTMR3 of a verified quote.

use serde::{Deserialize, Serialize};
use sha2::Digest;

use crate::registers::{extend_sha384, Sha384};

/// Domain tag of the event digest, version 1.
pub const EVENT_DOMAIN_TAG: &[u8] = b"cocoon/rtmr3-event/v1\0";
/// The `format` field of the JSON log.
pub const LOG_FORMAT: &str = "cocoon-rtmr3-log/v1";
/// Where cocoon-init writes the log inside the guest.
pub const LOG_PATH: &str = "/run/cocoon/rtmr3-log.json";
/// Name of the config event (payload: SHA-256 of the config archive).
pub const CONFIG_EVENT: &str = "config";
/// Longest event name, bytes.
pub const MAX_NAME_LEN: usize = 64;
/// Largest event payload, bytes.
pub const MAX_PAYLOAD_LEN: usize = 4096;
/// Most events in one log.
pub const MAX_EVENTS: usize = 256;
/// Largest JSON log, bytes.
pub const MAX_JSON_LEN: usize = 1 << 20;

/// One runtime event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeEvent {
    pub name: String,
    pub payload: Vec<u8>,
}

/// A single event that breaks the naming or size rules.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    #[error("event name {name:?}: must be 1..={MAX_NAME_LEN} bytes of [a-z0-9._-]")]
    Name { name: String },
    #[error("event {name:?}: payload of {size} bytes exceeds {MAX_PAYLOAD_LEN}")]
    PayloadTooLarge { name: String, size: usize },
}

/// Errors from parsing, validating or checking a runtime log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuntimeLogError {
    #[error("rtmr3 log of {size} bytes exceeds {max}")]
    TooLarge { size: usize, max: usize },
    #[error("rtmr3 log json: {0}")]
    Json(String),
    #[error("rtmr3 log format {got:?}, expected {LOG_FORMAT:?}")]
    Format { got: String },
    #[error("rtmr3 log has {count} events, at most {max} allowed")]
    TooManyEvents { count: usize, max: usize },
    #[error("rtmr3 log event {index}: {source}")]
    Event {
        index: usize,
        #[source]
        source: EventError,
    },
    #[error("rtmr3 log event {index}: {field} is not valid hex of the right length")]
    Hex { index: usize, field: &'static str },
    #[error("rtmr3 log event {index} ({name}): stored digest {stored}, recomputed {computed}")]
    DigestMismatch {
        index: usize,
        name: String,
        stored: String,
        computed: String,
    },
    #[error("rtmr3 log: first event is {name:?}, expected \"config\"")]
    FirstEventNotConfig { name: String },
    #[error("rtmr3 log event {index}: \"config\" may only be the first event")]
    ConfigNotFirst { index: usize },
    #[error("rtmr3 log: config payload is {len} bytes, expected a 32-byte sha-256")]
    ConfigPayload { len: usize },
    #[error("rtmr3 mismatch: log replays to {log}, quote has {quote}")]
    Rtmr3Mismatch { log: String, quote: String },
}

impl RuntimeEvent {
    /// A checked event.
    pub fn new(name: impl Into<String>, payload: Vec<u8>) -> Result<Self, EventError> {
        let ev = Self {
            name: name.into(),
            payload,
        };
        ev.check()?;
        Ok(ev)
    }

    /// The config event: the SHA-256 of the host-provided config archive.
    pub fn config(sha256: [u8; 32]) -> Self {
        Self {
            name: CONFIG_EVENT.to_owned(),
            payload: sha256.to_vec(),
        }
    }

    /// Checks the name and payload rules.
    pub fn check(&self) -> Result<(), EventError> {
        let n = self.name.as_bytes();
        let name_ok = (1..=MAX_NAME_LEN).contains(&n.len())
            && n.iter()
                .all(|&b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
        if !name_ok {
            return Err(EventError::Name {
                name: self.name.chars().take(MAX_NAME_LEN + 8).collect(),
            });
        }
        if self.payload.len() > MAX_PAYLOAD_LEN {
            return Err(EventError::PayloadTooLarge {
                name: self.name.clone(),
                size: self.payload.len(),
            });
        }
        Ok(())
    }

    /// `SHA-384("cocoon/rtmr3-event/v1\0" || u32_le(len(name)) || name || payload)`, the value
    /// extended into RTMR3.
    pub fn digest(&self) -> Sha384 {
        let mut h = sha2::Sha384::new();
        h.update(EVENT_DOMAIN_TAG);
        h.update((self.name.len() as u32).to_le_bytes());
        h.update(self.name.as_bytes());
        h.update(&self.payload);
        h.finalize().into()
    }
}

/// The RTMR3 runtime event log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuntimeLog {
    pub events: Vec<RuntimeEvent>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct LogJson {
    format: String,
    events: Vec<EventJson>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct EventJson {
    name: String,
    payload: String,
    digest: String,
}

impl RuntimeLog {
    /// An empty log (RTMR3 still zero).
    pub fn new() -> Self {
        Self::default()
    }

    /// The log a service starts from whose configuration hashes to `config_sha256`: the one
    /// `config` event cocoon-init extends first (a guest) or the service itself (a process on
    /// the simulated platform). Its [`RuntimeLog::replay`] is the RTMR3 a verifier pins for that
    /// configuration (`cocoon-measure eventlog expect-config`).
    pub fn for_config(config_sha256: [u8; 32]) -> Self {
        Self {
            events: vec![RuntimeEvent::config(config_sha256)],
        }
    }

    /// RTMR3 after extending every event's digest, from 48 zero bytes.
    pub fn replay(&self) -> Sha384 {
        self.events
            .iter()
            .fold([0u8; 48], |r, ev| extend_sha384(&r, &ev.digest()))
    }

    /// Appends an event and returns the digest to extend RTMR3 with. Does not check the rules;
    /// use [`RuntimeLog::try_append`] unless the event is built from constants.
    pub fn append(&mut self, ev: RuntimeEvent) -> Sha384 {
        let digest = ev.digest();
        self.events.push(ev);
        digest
    }

    /// Appends an event only if the log stays valid ([`RuntimeLog::validate`]); returns the
    /// digest to extend RTMR3 with.
    pub fn try_append(&mut self, ev: RuntimeEvent) -> Result<Sha384, RuntimeLogError> {
        let digest = self.append(ev);
        if let Err(e) = self.validate() {
            self.events.pop();
            return Err(e);
        }
        Ok(digest)
    }

    /// Checks every rule of the format: event names and sizes, at most 256 events, `config`
    /// first (and only first) with a 32-byte payload, JSON form within 1 MiB.
    pub fn validate(&self) -> Result<(), RuntimeLogError> {
        if self.events.len() > MAX_EVENTS {
            return Err(RuntimeLogError::TooManyEvents {
                count: self.events.len(),
                max: MAX_EVENTS,
            });
        }
        for (index, ev) in self.events.iter().enumerate() {
            ev.check()
                .map_err(|source| RuntimeLogError::Event { index, source })?;
            if index > 0 && ev.name == CONFIG_EVENT {
                return Err(RuntimeLogError::ConfigNotFirst { index });
            }
        }
        if let Some(first) = self.events.first() {
            if first.name != CONFIG_EVENT {
                return Err(RuntimeLogError::FirstEventNotConfig {
                    name: first.name.clone(),
                });
            }
            if first.payload.len() != 32 {
                return Err(RuntimeLogError::ConfigPayload {
                    len: first.payload.len(),
                });
            }
        }
        let size = self.to_json().len();
        if size > MAX_JSON_LEN {
            return Err(RuntimeLogError::TooLarge {
                size,
                max: MAX_JSON_LEN,
            });
        }
        Ok(())
    }

    /// The SHA-256 of the config archive: the payload of the first event, if it is `config`.
    pub fn config_digest(&self) -> Option<[u8; 32]> {
        let first = self.events.first()?;
        if first.name != CONFIG_EVENT {
            return None;
        }
        first.payload.as_slice().try_into().ok()
    }

    /// Compares the replayed log with the RTMR3 of a quote.
    pub fn check(&self, rtmr3: &Sha384) -> Result<(), RuntimeLogError> {
        let log = self.replay();
        if &log != rtmr3 {
            return Err(RuntimeLogError::Rtmr3Mismatch {
                log: hex::encode(log),
                quote: hex::encode(rtmr3),
            });
        }
        Ok(())
    }

    /// The JSON form (compact, one line, lowercase hex).
    pub fn to_json(&self) -> String {
        let v = LogJson {
            format: LOG_FORMAT.to_owned(),
            events: self
                .events
                .iter()
                .map(|ev| EventJson {
                    name: ev.name.clone(),
                    payload: hex::encode(&ev.payload),
                    digest: hex::encode(ev.digest()),
                })
                .collect(),
        };
        // Serializing plain strings into a String cannot fail.
        serde_json::to_string(&v).unwrap_or_default()
    }

    /// Parses and validates a JSON log; every stored digest must equal the recomputed one.
    pub fn from_json(bytes: &[u8]) -> Result<Self, RuntimeLogError> {
        if bytes.len() > MAX_JSON_LEN {
            return Err(RuntimeLogError::TooLarge {
                size: bytes.len(),
                max: MAX_JSON_LEN,
            });
        }
        let v: LogJson =
            serde_json::from_slice(bytes).map_err(|e| RuntimeLogError::Json(e.to_string()))?;
        if v.format != LOG_FORMAT {
            return Err(RuntimeLogError::Format {
                got: v.format.chars().take(64).collect(),
            });
        }
        if v.events.len() > MAX_EVENTS {
            return Err(RuntimeLogError::TooManyEvents {
                count: v.events.len(),
                max: MAX_EVENTS,
            });
        }
        let mut events = Vec::with_capacity(v.events.len());
        for (index, e) in v.events.into_iter().enumerate() {
            if e.payload.len() > 2 * MAX_PAYLOAD_LEN {
                return Err(RuntimeLogError::Event {
                    index,
                    source: EventError::PayloadTooLarge {
                        name: e.name.chars().take(MAX_NAME_LEN).collect(),
                        size: e.payload.len() / 2,
                    },
                });
            }
            let payload = hex::decode(&e.payload).map_err(|_| RuntimeLogError::Hex {
                index,
                field: "payload",
            })?;
            let ev = RuntimeEvent {
                name: e.name,
                payload,
            };
            ev.check()
                .map_err(|source| RuntimeLogError::Event { index, source })?;
            let stored = crate::parse_hex_array::<48>(&e.digest, "digest").map_err(|_| {
                RuntimeLogError::Hex {
                    index,
                    field: "digest",
                }
            })?;
            let computed = ev.digest();
            if stored != computed {
                return Err(RuntimeLogError::DigestMismatch {
                    index,
                    name: ev.name,
                    stored: hex::encode(stored),
                    computed: hex::encode(computed),
                });
            }
            events.push(ev);
        }
        let log = Self { events };
        log.validate()?;
        Ok(log)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha384(parts: &[&[u8]]) -> Sha384 {
        sha2::Sha384::digest(parts.concat()).into()
    }

    fn sample_sha256() -> [u8; 32] {
        std::array::from_fn(|i| i as u8)
    }

    #[test]
    fn digest_matches_hand_built_preimage() {
        let ev = RuntimeEvent::config(sample_sha256());
        let want = sha384(&[
            b"cocoon/rtmr3-event/v1\0",
            &[6, 0, 0, 0],
            b"config",
            &sample_sha256(),
        ]);
        assert_eq!(ev.digest(), want);
        // Pinned, so that a change of the encoding fails review.
        assert_eq!(
            hex::encode(ev.digest()),
            "6c85f1c78f0518e6460a7405414d5a19c4abfd95fafa9c9d4c496a5c7017c7ca\
             46c147288c64b149f14351b0084efef3"
        );
        // The example in docs/eventlogs.md.
        let mut log = RuntimeLog::new();
        log.append(ev);
        assert_eq!(
            hex::encode(log.replay()),
            "45a48a435e49e8a230aa28606dd59d9edbafd8bb57df4d71b10a90680f34234\
             570275de5c232638efb014461c8f7e23b"
        );
        let other = RuntimeEvent::new("model.weights-v2", b"abc".to_vec()).unwrap();
        let want = sha384(&[
            b"cocoon/rtmr3-event/v1\0",
            &[16, 0, 0, 0],
            b"model.weights-v2",
            b"abc",
        ]);
        assert_eq!(other.digest(), want);
    }

    #[test]
    fn replay_extends_from_zero() {
        let mut log = RuntimeLog::new();
        assert_eq!(log.replay(), [0; 48]);
        let d1 = log
            .try_append(RuntimeEvent::config(sample_sha256()))
            .unwrap();
        let d2 = log
            .try_append(RuntimeEvent::new("model", vec![1, 2]).unwrap())
            .unwrap();
        let r1 = sha384(&[&[0u8; 48], &d1]);
        let r2 = sha384(&[&r1, &d2]);
        assert_eq!(log.replay(), r2);
        assert_eq!(log.check(&r2), Ok(()));
        let err = log.check(&r1).unwrap_err();
        assert!(err.to_string().starts_with(&format!(
            "rtmr3 mismatch: log replays to {}, quote has {}",
            hex::encode(r2),
            hex::encode(r1)
        )));
        assert_eq!(log.config_digest(), Some(sample_sha256()));
    }

    #[test]
    fn json_round_trip_and_shape() {
        let mut log = RuntimeLog::new();
        log.append(RuntimeEvent::config(sample_sha256()));
        let json = log.to_json();
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["format"], "cocoon-rtmr3-log/v1");
        assert_eq!(v["events"][0]["name"], "config");
        assert_eq!(v["events"][0]["payload"], hex::encode(sample_sha256()));
        assert_eq!(
            v["events"][0]["digest"],
            hex::encode(RuntimeEvent::config(sample_sha256()).digest())
        );
        assert_eq!(RuntimeLog::from_json(json.as_bytes()), Ok(log));
        let empty = RuntimeLog::from_json(br#"{"format":"cocoon-rtmr3-log/v1","events":[]}"#);
        assert_eq!(empty.map(|l| l.config_digest()), Ok(None));
    }

    #[test]
    fn json_rejections_are_typed() {
        let mut log = RuntimeLog::new();
        log.append(RuntimeEvent::config(sample_sha256()));
        let good = log.to_json();
        let bad_digest = good.replace(&hex::encode(log.events[0].digest())[..4], "0000");
        assert!(matches!(
            RuntimeLog::from_json(bad_digest.as_bytes()),
            Err(RuntimeLogError::DigestMismatch { index: 0, .. })
        ));
        let extra = good.replacen("{\"format\"", "{\"x\":1,\"format\"", 1);
        assert!(matches!(
            RuntimeLog::from_json(extra.as_bytes()),
            Err(RuntimeLogError::Json(_))
        ));
        let format = good.replace("/v1", "/v2");
        assert!(matches!(
            RuntimeLog::from_json(format.as_bytes()),
            Err(RuntimeLogError::Format { .. })
        ));
        let big = vec![b' '; MAX_JSON_LEN + 1];
        assert!(matches!(
            RuntimeLog::from_json(&big),
            Err(RuntimeLogError::TooLarge { .. })
        ));
    }

    #[test]
    fn rules_are_enforced() {
        assert!(RuntimeEvent::new("", vec![]).is_err());
        assert!(RuntimeEvent::new("Config", vec![]).is_err());
        assert!(RuntimeEvent::new("a/b", vec![]).is_err());
        assert!(RuntimeEvent::new("a".repeat(65), vec![]).is_err());
        assert!(RuntimeEvent::new("a".repeat(64), vec![0; 4096]).is_ok());
        assert!(matches!(
            RuntimeEvent::new("a", vec![0; 4097]),
            Err(EventError::PayloadTooLarge { size: 4097, .. })
        ));
        let mut log = RuntimeLog::new();
        assert!(matches!(
            log.try_append(RuntimeEvent::new("model", vec![]).unwrap()),
            Err(RuntimeLogError::FirstEventNotConfig { .. })
        ));
        assert!(log.events.is_empty());
        assert!(matches!(
            log.try_append(RuntimeEvent::new("config", vec![1]).unwrap()),
            Err(RuntimeLogError::ConfigPayload { len: 1 })
        ));
        log.try_append(RuntimeEvent::config([0; 32])).unwrap();
        assert!(matches!(
            log.try_append(RuntimeEvent::config([1; 32])),
            Err(RuntimeLogError::ConfigNotFirst { index: 1 })
        ));
        for i in 1..MAX_EVENTS {
            log.try_append(RuntimeEvent::new(format!("e{i}"), vec![]).unwrap())
                .unwrap();
        }
        assert!(matches!(
            log.try_append(RuntimeEvent::new("more", vec![]).unwrap()),
            Err(RuntimeLogError::TooManyEvents { .. })
        ));
        assert_eq!(log.events.len(), MAX_EVENTS);
    }
}

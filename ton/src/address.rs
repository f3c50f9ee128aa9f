//! Standard addresses (`addr_std`, no anycast) in raw `wc:hex` and user-friendly base64 forms,
//! and `Coins` amounts.
//!
//! User-friendly form (TON docs, "Smart contract addresses"): 36 bytes `flags wc hash[32]
//! crc16[2]`, base64url (standard base64 accepted on input); flags 0x11 bounceable, 0x51
//! non-bounceable, +0x80 testnet-only; CRC16-XMODEM (poly 0x1021, init 0) big-endian.

use std::fmt;
use std::str::FromStr;

use base64::engine::general_purpose::{STANDARD, URL_SAFE};
use base64::Engine;

/// An error while parsing an address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddrError {
    /// Neither raw nor 48-character user-friendly form.
    #[error("address {text:?}: expected `wc:64hex` or a 48-character base64 address")]
    Format { text: String },
    /// Raw form: workchain is not an int8.
    #[error("address {text:?}: workchain is not an integer in -128..=127")]
    Workchain { text: String },
    /// Raw form: hash is not 64 hex digits.
    #[error("address {text:?}: account id must be 64 hex digits")]
    Hash { text: String },
    /// User-friendly form: base64 does not decode to 36 bytes.
    #[error("address {text:?}: invalid base64")]
    Base64 { text: String },
    /// User-friendly form: unknown tag byte.
    #[error("address {text:?}: unknown flags byte {flags:#04x}")]
    Flags { text: String, flags: u8 },
    /// User-friendly form: checksum mismatch.
    #[error("address {text:?}: crc16 mismatch: expected {expected:04x}, got {got:04x}")]
    Crc {
        text: String,
        expected: u16,
        got: u16,
    },
}

/// A standard internal address: workchain and 256-bit account id.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Addr {
    /// Workchain (0 basechain, -1 masterchain).
    pub workchain: i8,
    /// Account id (the representation hash of the StateInit for contracts).
    pub hash: [u8; 32],
}

impl fmt::Debug for Addr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Addr({self})")
    }
}

/// Raw form `wc:hex`.
impl fmt::Display for Addr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.workchain, hex::encode(self.hash))
    }
}

/// Flags of the user-friendly form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FriendlyFlags {
    /// Bounceable (0x11) or not (0x51).
    pub bounceable: bool,
    /// Testnet-only (+0x80).
    pub testnet: bool,
}

/// CRC16-XMODEM.
pub fn crc16_xmodem(data: &[u8]) -> u16 {
    let mut crc = 0u16;
    for &b in data {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

impl Addr {
    /// A basechain address.
    pub fn basechain(hash: [u8; 32]) -> Addr {
        Addr { workchain: 0, hash }
    }

    /// Parses the raw form `wc:64hex`.
    pub fn parse_raw(text: &str) -> Result<Addr, AddrError> {
        let (wc, h) = text
            .split_once(':')
            .ok_or_else(|| AddrError::Format { text: text.into() })?;
        let workchain = wc
            .parse::<i8>()
            .map_err(|_| AddrError::Workchain { text: text.into() })?;
        if h.len() != 64 {
            return Err(AddrError::Hash { text: text.into() });
        }
        let mut hash = [0u8; 32];
        hex::decode_to_slice(h, &mut hash).map_err(|_| AddrError::Hash { text: text.into() })?;
        Ok(Addr { workchain, hash })
    }

    /// Parses the user-friendly form (base64url or standard base64), returning its flags.
    pub fn parse_friendly(text: &str) -> Result<(Addr, FriendlyFlags), AddrError> {
        if text.len() != 48 {
            return Err(AddrError::Format { text: text.into() });
        }
        let bytes = URL_SAFE
            .decode(text)
            .or_else(|_| STANDARD.decode(text))
            .map_err(|_| AddrError::Base64 { text: text.into() })?;
        let b: [u8; 36] = bytes
            .try_into()
            .map_err(|_| AddrError::Base64 { text: text.into() })?;
        let expected = crc16_xmodem(&b[..34]);
        let got = u16::from_be_bytes([b[34], b[35]]);
        if expected != got {
            return Err(AddrError::Crc {
                text: text.into(),
                expected,
                got,
            });
        }
        let testnet = b[0] & 0x80 != 0;
        let bounceable = match b[0] & 0x7f {
            0x11 => true,
            0x51 => false,
            _ => {
                return Err(AddrError::Flags {
                    text: text.into(),
                    flags: b[0],
                })
            }
        };
        let mut hash = [0u8; 32];
        hash.copy_from_slice(&b[2..34]);
        Ok((
            Addr {
                workchain: b[1] as i8,
                hash,
            },
            FriendlyFlags {
                bounceable,
                testnet,
            },
        ))
    }

    /// Parses either form.
    pub fn parse_any(text: &str) -> Result<Addr, AddrError> {
        if text.contains(':') {
            Addr::parse_raw(text)
        } else {
            Ok(Addr::parse_friendly(text)?.0)
        }
    }

    /// User-friendly base64url form.
    pub fn to_friendly(&self, flags: FriendlyFlags) -> String {
        let mut b = [0u8; 36];
        b[0] = if flags.bounceable { 0x11 } else { 0x51 } | if flags.testnet { 0x80 } else { 0 };
        b[1] = self.workchain as u8;
        b[2..34].copy_from_slice(&self.hash);
        let crc = crc16_xmodem(&b[..34]);
        b[34..].copy_from_slice(&crc.to_be_bytes());
        URL_SAFE.encode(b)
    }
}

impl FromStr for Addr {
    type Err = AddrError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Addr::parse_any(s)
    }
}

/// An amount of nanotons (`Coins` = `VarUInteger 16`, below 2^120 on the wire).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Coins(u128);

impl Coins {
    /// Nanotons per TON.
    pub const TON: u128 = 1_000_000_000;
    /// From nanotons (storing a value of 2^120 or more fails).
    pub const fn from_nano(n: u128) -> Coins {
        Coins(n)
    }
    /// Nanotons.
    pub const fn nano(self) -> u128 {
        self.0
    }
}

impl fmt::Display for Coins {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_roundtrip_and_errors() {
        let a = Addr::parse_raw(&format!("-1:{}", "ab".repeat(32))).unwrap();
        assert_eq!(a.workchain, -1);
        assert_eq!(Addr::parse_raw(&a.to_string()).unwrap(), a);
        assert!(matches!(
            Addr::parse_raw("128:00"),
            Err(AddrError::Workchain { .. })
        ));
        assert!(matches!(
            Addr::parse_raw("0:00"),
            Err(AddrError::Hash { .. })
        ));
        assert!(matches!(
            Addr::parse_raw(&format!("0:{}", "zz".repeat(32))),
            Err(AddrError::Hash { .. })
        ));
        assert!(matches!(
            Addr::parse_any("hello"),
            Err(AddrError::Format { .. })
        ));
    }

    #[test]
    fn friendly_crc_and_flags_errors() {
        let a = Addr::basechain([7; 32]);
        let f = FriendlyFlags {
            bounceable: true,
            testnet: false,
        };
        let s = a.to_friendly(f);
        assert_eq!(Addr::parse_friendly(&s).unwrap(), (a, f));
        let mut bad = s.clone().into_bytes();
        bad[10] = if bad[10] == b'A' { b'B' } else { b'A' };
        let bad = String::from_utf8(bad).unwrap();
        assert!(matches!(
            Addr::parse_friendly(&bad),
            Err(AddrError::Crc { .. })
        ));
    }
}

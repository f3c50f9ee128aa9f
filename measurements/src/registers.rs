//! TD measurement registers and the cocoon image hash.
//!
//! # Image hash, version 1
//!
//! The image hash names one measured guest image: everything the TDX module fixes at TD build
//! time and every boot-time measurement, but not RTMR3 (runtime config events, checked by
//! replaying the RTMR3 event log). It is
//!
//! ```text
//! image_hash_v1 = SHA-256( "cocoon/image-hash/v1" || 0x00
//!                          || MRTD || RTMR0 || RTMR1 || RTMR2          (48 bytes each)
//!                          || TD_ATTRIBUTES || XFAM                    (8 bytes each, as in the quote)
//!                          || MRCONFIGID || MROWNER || MROWNERCONFIG ) (48 bytes each)
//! ```
//!
//! All fields have fixed lengths and appear in this order, so the encoding is injective.
//! TD attributes are covered on purpose: a debug TD with otherwise equal registers has a
//! different image hash (Telegram's Cocoon leaves them out). A change to this encoding gets a
//! new domain tag (`v2`), never a silent change.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// A SHA-384 register value.
pub type Sha384 = [u8; 48];

/// Domain tag of the image hash encoding, version 1.
pub const IMAGE_HASH_V1_TAG: &[u8] = b"cocoon/image-hash/v1\0";

/// TD attribute bit 0 (TUD.DEBUG): the TD is debuggable, the host can read its memory.
pub const TD_ATTR_DEBUG: u64 = 1 << 0;
/// TD attribute bits 4..=7 (TUD): performance profiling / reserved debug features.
pub const TD_ATTR_TUD_PROFILING_MASK: u64 = 0x70;
/// TD attribute bit 28 (SEPT_VE_DISABLE): EPT violations are not converted to #VE.
pub const TD_ATTR_SEPT_VE_DISABLE: u64 = 1 << 28;
/// TD attribute bit 29 (MIGRATABLE).
pub const TD_ATTR_MIGRATABLE: u64 = 1 << 29;

/// The registers of a TD that identify what runs in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TdRegisters {
    #[serde(with = "hex48")]
    pub mrtd: Sha384,
    #[serde(with = "hex48x4")]
    pub rtmr: [Sha384; 4],
    #[serde(with = "hex8")]
    pub td_attributes: [u8; 8],
    #[serde(with = "hex8")]
    pub xfam: [u8; 8],
    #[serde(with = "hex48")]
    pub mrconfigid: Sha384,
    #[serde(with = "hex48")]
    pub mrowner: Sha384,
    #[serde(with = "hex48")]
    pub mrownerconfig: Sha384,
}

/// A cocoon image hash (see the module docs for its definition).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ImageHash(pub [u8; 32]);

impl std::fmt::Debug for ImageHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ImageHash({})", hex::encode(self.0))
    }
}

impl std::fmt::Display for ImageHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl std::str::FromStr for ImageHash {
    type Err = crate::HexError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(crate::parse_hex_array(s, "image hash")?))
    }
}

impl Serialize for ImageHash {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(self.0))
    }
}

impl<'de> Deserialize<'de> for ImageHash {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl TdRegisters {
    /// All-zero registers (a TD with nothing measured).
    pub const ZERO: Self = Self {
        mrtd: [0; 48],
        rtmr: [[0; 48]; 4],
        td_attributes: [0; 8],
        xfam: [0; 8],
        mrconfigid: [0; 48],
        mrowner: [0; 48],
        mrownerconfig: [0; 48],
    };

    /// TD attributes as the little-endian integer the TDX module defines.
    pub fn td_attributes_u64(&self) -> u64 {
        u64::from_le_bytes(self.td_attributes)
    }

    /// The canonical version-1 encoding hashed into [`ImageHash`].
    pub fn image_hash_v1_preimage(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(IMAGE_HASH_V1_TAG.len() + 48 * 7 + 16);
        out.extend_from_slice(IMAGE_HASH_V1_TAG);
        out.extend_from_slice(&self.mrtd);
        for rtmr in &self.rtmr[..3] {
            out.extend_from_slice(rtmr);
        }
        out.extend_from_slice(&self.td_attributes);
        out.extend_from_slice(&self.xfam);
        out.extend_from_slice(&self.mrconfigid);
        out.extend_from_slice(&self.mrowner);
        out.extend_from_slice(&self.mrownerconfig);
        out
    }

    /// The image hash (version 1) of these registers. RTMR3 does not contribute.
    pub fn image_hash(&self) -> ImageHash {
        ImageHash(Sha256::digest(self.image_hash_v1_preimage()).into())
    }
}

/// Extends a SHA-384 measurement register: `new = SHA-384(old || digest)`.
pub fn extend_sha384(register: &Sha384, digest: &Sha384) -> Sha384 {
    use sha2::Sha384 as H;
    let mut h = H::new();
    h.update(register);
    h.update(digest);
    h.finalize().into()
}

/// serde helpers for fixed-size byte arrays as hex strings.
macro_rules! hex_array_serde {
    ($name:ident, $n:expr) => {
        pub mod $name {
            use serde::{Deserialize, Deserializer, Serializer};
            pub fn serialize<S: Serializer>(v: &[u8; $n], s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&hex::encode(v))
            }
            pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; $n], D::Error> {
                let s = String::deserialize(d)?;
                crate::parse_hex_array(&s, stringify!($name)).map_err(serde::de::Error::custom)
            }
        }
    };
}
hex_array_serde!(hex8, 8);
hex_array_serde!(hex32, 32);
hex_array_serde!(hex48, 48);
hex_array_serde!(hex64, 64);

pub mod hex48x4 {
    use serde::{Deserialize, Deserializer, Serializer};
    pub fn serialize<S: Serializer>(v: &[[u8; 48]; 4], s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        let mut seq = s.serialize_seq(Some(4))?;
        for r in v {
            seq.serialize_element(&hex::encode(r))?;
        }
        seq.end()
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[[u8; 48]; 4], D::Error> {
        let v = Vec::<String>::deserialize(d)?;
        if v.len() != 4 {
            return Err(serde::de::Error::custom(format!(
                "rtmr: expected 4 registers, got {}",
                v.len()
            )));
        }
        let mut out = [[0u8; 48]; 4];
        for (o, s) in out.iter_mut().zip(&v) {
            *o = crate::parse_hex_array(s, "rtmr").map_err(serde::de::Error::custom)?;
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_hash_covers_attributes_but_not_rtmr3() {
        let base = TdRegisters::ZERO;
        let mut debug = base;
        debug.td_attributes[0] |= 1;
        assert_ne!(base.image_hash(), debug.image_hash());
        let mut rtmr3 = base;
        rtmr3.rtmr[3][0] = 1;
        assert_eq!(base.image_hash(), rtmr3.image_hash());
        for field in 0..9 {
            let mut changed = base;
            match field {
                0 => changed.mrtd[47] = 1,
                1..=3 => changed.rtmr[field - 1][0] = 1,
                4 => changed.xfam[7] = 1,
                5 => changed.mrconfigid[1] = 1,
                6 => changed.mrowner[2] = 1,
                7 => changed.mrownerconfig[3] = 1,
                _ => changed.td_attributes[7] = 1,
            }
            assert_ne!(base.image_hash(), changed.image_hash(), "field {field}");
        }
    }

    #[test]
    fn image_hash_v1_is_pinned() {
        // Pinned so that an accidental change of the encoding fails review.
        assert_eq!(
            TdRegisters::ZERO.image_hash().to_string(),
            hex::encode(Sha256::digest(
                [IMAGE_HASH_V1_TAG, &[0u8; 48 * 4 + 16 + 48 * 3][..]].concat()
            ))
        );
        assert_eq!(
            TdRegisters::ZERO.image_hash_v1_preimage().len(),
            21 + 48 * 7 + 16
        );
    }

    #[test]
    fn extend_matches_definition() {
        let d = [7u8; 48];
        let got = extend_sha384(&[0; 48], &d);
        let want: [u8; 48] = sha2::Sha384::digest([[0u8; 48], d].concat()).into();
        assert_eq!(got, want);
    }
}

//! `model.json` ([`ModelDisk`]): the record of a model disk and the dm-verity table the guest
//! loads from it. Host-controlled in the guest: PID 1 measures the bytes before
//! [`ModelDisk::from_json`] parses and validates them. Typed fields (digests, hex salt, UUID,
//! numbers) keep [`dm_table_params`] free of extra dm-verity arguments.

use serde::{Deserialize, Serialize};

use super::MODEL_DISK_FORMAT;
use super::{Geometry, Salt, VerityError, VerityUuid, BLOCK, BLOCK_SIZE, HASH_START_BLOCK};

/// The hash algorithm of a model disk (only SHA-256).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum HashAlgorithm {
    #[serde(rename = "sha256")]
    Sha256,
}

/// `model.json`: what `cocoon-image model` wrote and what the guest needs to map the model disk.
/// Digests and the salt are lowercase hex; parsing accepts nothing else.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelDisk {
    /// Always [`MODEL_DISK_FORMAT`].
    pub format: String,
    /// The name clients ask for: 1–128 printable ASCII characters, no spaces.
    pub name: String,
    /// SHA-256 of the GGUF file.
    #[serde(with = "hex32")]
    pub source_sha256: [u8; 32],
    /// Size of the GGUF file in bytes (the worker reads this many bytes of the data device).
    pub source_size: u64,
    /// `ceil(source_size / 4096)`.
    pub data_blocks: u64,
    /// Always 4096.
    pub data_block_size: u32,
    /// Always 4096.
    pub hash_block_size: u32,
    pub hash_algorithm: HashAlgorithm,
    pub salt: Salt,
    /// UUID in the hash device superblock.
    pub uuid: VerityUuid,
    #[serde(with = "hex32")]
    pub root_hash: [u8; 32],
    /// Always 1 (block 0 of the hash device is the superblock).
    pub hash_start_block: u64,
    /// SHA-256 of `model.img`.
    #[serde(with = "hex32")]
    pub image_sha256: [u8; 32],
    /// SHA-256 of `model.verity`.
    #[serde(with = "hex32")]
    pub verity_sha256: [u8; 32],
}

/// A `model.json` that does not parse or does not hold together.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ModelDiskError {
    #[error("model.json: {0}")]
    Json(String),
    #[error("model.json {field}: expected {expected}, got {got}")]
    Field {
        field: &'static str,
        expected: String,
        got: String,
    },
}

/// Checks a model name: 1–128 printable ASCII characters without spaces (the rule the protocol
/// applies to the model a client asks for).
pub fn check_model_name(name: &str) -> Result<(), ModelDiskError> {
    if (1..=128).contains(&name.len()) && name.bytes().all(|b| (0x21..0x7f).contains(&b)) {
        Ok(())
    } else {
        Err(ModelDiskError::Field {
            field: "name",
            expected: "1-128 printable ascii characters without spaces".into(),
            got: format!("{:?}", name.chars().take(140).collect::<String>()),
        })
    }
}

impl ModelDisk {
    /// Parses and validates `model.json` bytes (host-controlled in the guest: measure first).
    pub fn from_json(bytes: &[u8]) -> Result<Self, ModelDiskError> {
        let disk: Self =
            serde_json::from_slice(bytes).map_err(|e| ModelDiskError::Json(e.to_string()))?;
        disk.validate()?;
        Ok(disk)
    }

    /// Pretty JSON with a trailing newline; the same value always gives the same bytes.
    pub fn to_json(&self) -> String {
        let mut s = serde_json::to_string_pretty(self).expect("model disk serializes");
        s.push('\n');
        s
    }

    /// Checks the constants and that the sizes agree with each other.
    pub fn validate(&self) -> Result<(), ModelDiskError> {
        let field = |field: &'static str, expected: String, got: String| {
            Err(ModelDiskError::Field {
                field,
                expected,
                got,
            })
        };
        if self.format != MODEL_DISK_FORMAT {
            return field(
                "format",
                MODEL_DISK_FORMAT.into(),
                format!("{:?}", self.format),
            );
        }
        check_model_name(&self.name)?;
        if self.source_size == 0 {
            return field("source_size", "at least 1".into(), "0".into());
        }
        let blocks = self.source_size.div_ceil(BLOCK);
        if self.data_blocks != blocks {
            return field(
                "data_blocks",
                format!("{blocks} (source_size / 4096 rounded up)"),
                self.data_blocks.to_string(),
            );
        }
        for (name, got) in [
            ("data_block_size", self.data_block_size),
            ("hash_block_size", self.hash_block_size),
        ] {
            if got as usize != BLOCK_SIZE {
                return field(name, BLOCK_SIZE.to_string(), got.to_string());
            }
        }
        if self.hash_start_block != HASH_START_BLOCK {
            return field(
                "hash_start_block",
                HASH_START_BLOCK.to_string(),
                self.hash_start_block.to_string(),
            );
        }
        Ok(())
    }

    /// Tree shape (fails only for a disk that does not validate).
    pub fn geometry(&self) -> Result<Geometry, VerityError> {
        Geometry::new(self.data_blocks)
    }

    /// Bytes of `model.img` (the data device): whole blocks.
    pub fn image_size(&self) -> u64 {
        self.data_blocks.saturating_mul(BLOCK)
    }

    /// Size of the dm target in 512-byte sectors.
    pub fn sectors(&self) -> u64 {
        self.data_blocks.saturating_mul(BLOCK / 512)
    }
}

/// The dm-verity target arguments after the two device names:
/// `4096 4096 <data_blocks> 1 sha256 <root_hash> <salt>` (`-` for an empty salt).
///
/// The guest loads the table line
/// `0 <data_blocks*8> verity 1 <data_dev> <hash_dev> <these params>` (see [`dm_table`]).
pub fn dm_table_params(disk: &ModelDisk) -> String {
    format!(
        "{} {} {} {} sha256 {} {}",
        disk.data_block_size,
        disk.hash_block_size,
        disk.data_blocks,
        disk.hash_start_block,
        hex::encode(disk.root_hash),
        disk.salt.dm_arg()
    )
}

/// The whole dm table line for `disk` on `data_dev` / `hash_dev` (paths or `major:minor`).
pub fn dm_table(disk: &ModelDisk, data_dev: &str, hash_dev: &str) -> String {
    format!(
        "0 {} verity 1 {data_dev} {hash_dev} {}",
        disk.sectors(),
        dm_table_params(disk)
    )
}

/// 32 bytes as exactly 64 lowercase hex digits.
mod hex32 {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        let s = String::deserialize(d)?;
        let mut out = [0u8; 32];
        if s.len() != 64 || !s.bytes().all(super::super::is_lower_hex) {
            return Err(serde::de::Error::custom(format!(
                "expected 64 lowercase hex digits, got {:?}",
                s.chars().take(80).collect::<String>()
            )));
        }
        hex::decode_to_slice(&s, &mut out).map_err(serde::de::Error::custom)?;
        Ok(out)
    }
}

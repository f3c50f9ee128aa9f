//! dm-verity hash trees for model disks, their veritysetup-compatible superblock, and
//! `model.json` ([`ModelDisk`]), the record the guest turns into a kernel dm table.
//!
//! Only one configuration exists: hash format version 1, SHA-256, 4096-byte data and hash
//! blocks, hash tree on its own device behind a superblock (so the tree starts at hash block 1).
//!
//! ## On-disk format
//! References: Linux `Documentation/admin-guide/device-mapper/verity.rst` (construction
//! parameters, hash format 1) and cryptsetup's `veritysetup(8)` / dm-verity on-disk format notes
//! (the superblock). Checked byte for byte against `veritysetup format` in `tests/verity.rs`.
//!
//! * Every block (data or hash) is digested as `SHA-256(salt || block)`.
//! * Level 0 holds the digests of the data blocks, level *i+1* the digests of the hash blocks of
//!   level *i*; 4096 / 32 = 128 digests per hash block, the last block of a level zero-padded.
//!   Levels are added until one block remains: `levels = min L with data_blocks <= 128^L` (a
//!   single data block has no levels at all).
//! * The root hash is the digest of the single top block (of the data block if there are no
//!   levels).
//! * Hash device: block 0 is the superblock (512 bytes, rest of the block zero), then the levels
//!   from the top down to level 0.
//! * Superblock, little-endian: `"verity\0\0"`, version u32 = 1, hash_type u32 = 1, uuid [16],
//!   algorithm [32] = `"sha256"` NUL-padded, data_block_size u32, hash_block_size u32,
//!   data_blocks u64, salt_size u16, 6 zero bytes, salt [256] zero-padded, 168 zero bytes.
//!
//! ## Trust boundary
//! On the build side everything here is computed from the GGUF. In the guest, `model.json`
//! arrives from the host: PID 1 measures its bytes before [`ModelDisk::from_json`] parses and
//! validates them, and the root hash it carries is only as trusted as that measurement (the
//! verifier pins the model). Parsed fields are typed (digests, hex salt, UUID, numbers), so the
//! table from [`dm_table_params`] cannot carry extra dm-verity arguments such as
//! `ignore_corruption`. The hash device contents are host-controlled too and need no parsing: the
//! kernel checks every block against the root hash.
//!
//! Nothing here opens files or spawns processes: trees are built from any [`Read`] or by pushing
//! bytes into a [`TreeBuilder`], hash devices are written to any [`Write`].

use std::fmt;
use std::io::{self, Read, Write};

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};

mod model_disk;
mod verify;
pub use model_disk::{
    check_model_name, dm_table, dm_table_params, HashAlgorithm, ModelDisk, ModelDiskError,
};
pub use verify::{verify_block, verify_image, Verifier};

/// Data and hash block size in bytes.
pub const BLOCK_SIZE: usize = 4096;
const BLOCK: u64 = BLOCK_SIZE as u64;
/// SHA-256 digest size; a power of two, so digests are stored without padding.
pub const DIGEST_SIZE: usize = 32;
/// log2 of the digests per hash block (4096 / 32 = 128).
const HASH_PER_BLOCK_BITS: u32 = 7;
/// Largest salt the superblock can hold.
pub const MAX_SALT_SIZE: usize = 256;
/// Bytes of the superblock that carry data (the rest of block 0 is zero).
pub const SUPERBLOCK_SIZE: usize = 512;
/// Hash block at which the tree starts (block 0 is the superblock).
pub const HASH_START_BLOCK: u64 = 1;
/// Largest data device (in blocks) whose size in bytes fits in a u64.
pub const MAX_DATA_BLOCKS: u64 = u64::MAX / BLOCK;
/// `format` of [`ModelDisk`].
pub const MODEL_DISK_FORMAT: &str = "cocoon-model/v1";

const SIGNATURE: &[u8; 8] = b"verity\0\0";
const SALT_LABEL: &[u8] = b"cocoon/verity-salt/v1\0";
const UUID_LABEL: &[u8] = b"cocoon/verity-uuid/v1\0";
const READ_CHUNK: usize = 1 << 20;

/// Hash tree, superblock and verification errors.
#[derive(Debug, thiserror::Error)]
pub enum VerityError {
    #[error("empty data: at least one byte is needed")]
    Empty,
    #[error("data: {blocks} blocks, at most {MAX_DATA_BLOCKS}")]
    TooLarge { blocks: u64 },
    #[error("salt: {got} bytes, at most {MAX_SALT_SIZE}")]
    SaltTooLong { got: usize },
    #[error("salt: not hex: {got:?}")]
    SaltHex { got: String },
    #[error("uuid: expected 8-4-4-4-12 lowercase hex, got {got:?}")]
    Uuid { got: String },
    #[error("data: expected {expected} bytes, got {got}")]
    DataSize { expected: u64, got: u64 },
    #[error("read data: {0}")]
    Read(#[source] io::Error),
    #[error("superblock {field}: expected {expected}, got {got}")]
    Superblock {
        field: &'static str,
        expected: String,
        got: String,
    },
    #[error("hash device: expected {expected} bytes, got {got}")]
    HashDeviceSize { expected: u64, got: u64 },
    #[error("data block {index}: expected {BLOCK_SIZE} bytes, got {got}")]
    BlockSize { index: u64, got: usize },
    #[error("data block {index}: outside the {data_blocks} data blocks")]
    BlockIndex { index: u64, data_blocks: u64 },
    #[error("data block {index}: digest does not match hash tree level {level}")]
    BlockMismatch { index: u64, level: usize },
    #[error("root hash mismatch: expected {expected}, got {got}")]
    RootMismatch { expected: String, got: String },
    #[error("hash tree level {level}: nonzero padding after the last digest")]
    Padding { level: usize },
}

/// Shape of the tree for a number of data blocks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Geometry {
    data_blocks: u64,
    /// Hash blocks per level, level 0 (digests of data blocks) first.
    level_blocks: Vec<u64>,
}

impl Geometry {
    /// The tree over `data_blocks` 4096-byte blocks.
    pub fn new(data_blocks: u64) -> Result<Self, VerityError> {
        if data_blocks == 0 {
            return Err(VerityError::Empty);
        }
        if data_blocks > MAX_DATA_BLOCKS {
            return Err(VerityError::TooLarge {
                blocks: data_blocks,
            });
        }
        let mut level_blocks = Vec::new();
        let mut n = data_blocks;
        while n > 1 {
            n = n.div_ceil(1 << HASH_PER_BLOCK_BITS);
            level_blocks.push(n);
        }
        Ok(Self {
            data_blocks,
            level_blocks,
        })
    }

    /// The tree over `size` bytes of data (the last block zero-padded).
    pub fn for_data_size(size: u64) -> Result<Self, VerityError> {
        Self::new(size.div_ceil(BLOCK))
    }

    pub fn data_blocks(&self) -> u64 {
        self.data_blocks
    }

    /// Number of hash levels (0 for a single data block).
    pub fn levels(&self) -> usize {
        self.level_blocks.len()
    }

    /// Hash blocks in `level` (0 = digests of data blocks). Panics if `level >= levels()`.
    pub fn level_blocks(&self, level: usize) -> u64 {
        self.level_blocks[level]
    }

    /// Hash device block where `level` starts (the top level starts at [`HASH_START_BLOCK`]).
    pub fn level_start(&self, level: usize) -> u64 {
        HASH_START_BLOCK + self.level_blocks[level + 1..].iter().sum::<u64>()
    }

    /// Blocks of the hash device: superblock plus all levels.
    pub fn hash_device_blocks(&self) -> u64 {
        HASH_START_BLOCK + self.level_blocks.iter().sum::<u64>()
    }

    /// Bytes of the hash device.
    pub fn hash_device_size(&self) -> u64 {
        self.hash_device_blocks() * BLOCK
    }

    /// Bytes of the data device (whole blocks).
    pub fn data_size(&self) -> u64 {
        self.data_blocks * BLOCK
    }

    /// Digests stored in `level`: one per block of the level below.
    fn level_entries(&self, level: usize) -> u64 {
        if level == 0 {
            self.data_blocks
        } else {
            self.level_blocks[level - 1]
        }
    }
}

/// The salt prepended to every hashed block (at most [`MAX_SALT_SIZE`] bytes, may be empty).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Salt(Vec<u8>);

impl Salt {
    pub fn new(bytes: Vec<u8>) -> Result<Self, VerityError> {
        if bytes.len() > MAX_SALT_SIZE {
            return Err(VerityError::SaltTooLong { got: bytes.len() });
        }
        Ok(Self(bytes))
    }

    /// The default salt: `SHA-256("cocoon/verity-salt/v1\0" || source_sha256)` (32 bytes, the
    /// raw digest of the source file).
    pub fn derived(source_sha256: &[u8; 32]) -> Self {
        Self(labelled_digest(SALT_LABEL, source_sha256).to_vec())
    }

    /// Hex in either case; `-` or the empty string mean no salt (as for veritysetup).
    pub fn from_hex(s: &str) -> Result<Self, VerityError> {
        if s == "-" {
            return Ok(Self::default());
        }
        let bytes = hex::decode(s).map_err(|_| VerityError::SaltHex {
            got: s.chars().take(80).collect(),
        })?;
        Self::new(bytes)
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Lowercase hex, empty for no salt.
    pub fn to_hex(&self) -> String {
        hex::encode(&self.0)
    }

    /// The salt argument of a dm-verity table: hex, or `-` for no salt.
    pub fn dm_arg(&self) -> String {
        if self.0.is_empty() {
            "-".into()
        } else {
            self.to_hex()
        }
    }
}

impl fmt::Debug for Salt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Salt({})", self.to_hex())
    }
}

/// The hash device UUID recorded in the superblock.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct VerityUuid(pub [u8; 16]);

impl VerityUuid {
    /// The default UUID: the first 16 bytes of `SHA-256("cocoon/verity-uuid/v1\0" ||
    /// source_sha256)` with the RFC 9562 version 8 (custom) and variant bits set.
    pub fn derived(source_sha256: &[u8; 32]) -> Self {
        let d = labelled_digest(UUID_LABEL, source_sha256);
        let mut u = [0u8; 16];
        u.copy_from_slice(&d[..16]);
        u[6] = (u[6] & 0x0f) | 0x80;
        u[8] = (u[8] & 0x3f) | 0x80;
        Self(u)
    }

    /// Parses the canonical lowercase `8-4-4-4-12` form.
    pub fn parse(s: &str) -> Result<Self, VerityError> {
        let err = || VerityError::Uuid {
            got: s.chars().take(80).collect(),
        };
        let b = s.as_bytes();
        if b.len() != 36 {
            return Err(err());
        }
        let mut digits = Vec::with_capacity(32);
        for (i, &c) in b.iter().enumerate() {
            if matches!(i, 8 | 13 | 18 | 23) {
                if c != b'-' {
                    return Err(err());
                }
            } else if is_lower_hex(c) {
                digits.push(c);
            } else {
                return Err(err());
            }
        }
        let mut u = [0u8; 16];
        hex::decode_to_slice(&digits, &mut u).map_err(|_| err())?;
        Ok(Self(u))
    }
}

impl fmt::Display for VerityUuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let h = hex::encode(self.0);
        write!(
            f,
            "{}-{}-{}-{}-{}",
            &h[..8],
            &h[8..12],
            &h[12..16],
            &h[16..20],
            &h[20..]
        )
    }
}

impl fmt::Debug for VerityUuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VerityUuid({self})")
    }
}

fn labelled_digest(label: &[u8], source_sha256: &[u8; 32]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(label);
    h.update(source_sha256);
    h.finalize().into()
}

pub(crate) fn is_lower_hex(c: u8) -> bool {
    c.is_ascii_digit() || (b'a'..=b'f').contains(&c)
}

/// SHA-256 with the salt already absorbed.
#[derive(Clone)]
struct SaltedHasher(Sha256);

impl SaltedHasher {
    fn new(salt: &Salt) -> Self {
        let mut h = Sha256::new();
        h.update(salt.as_bytes());
        Self(h)
    }

    fn digest(&self, block: &[u8]) -> [u8; DIGEST_SIZE] {
        let mut h = self.0.clone();
        h.update(block);
        h.finalize().into()
    }
}

impl fmt::Debug for SaltedHasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SaltedHasher")
    }
}

/// Builds a hash tree from data pushed in pieces of any size: memory is the tree (1/128 of the
/// data) plus one block.
#[derive(Debug)]
pub struct TreeBuilder {
    geometry: Geometry,
    salt: Salt,
    hasher: SaltedHasher,
    data_size: u64,
    received: u64,
    partial: Vec<u8>,
    next_block: u64,
    /// Level 0, zero-padded to whole hash blocks (just the one digest if there are no levels).
    level0: Vec<u8>,
}

impl TreeBuilder {
    /// A builder for exactly `data_size` bytes (the last block is zero-padded by [`finish`]).
    ///
    /// [`finish`]: TreeBuilder::finish
    pub fn new(data_size: u64, salt: Salt) -> Result<Self, VerityError> {
        let geometry = Geometry::for_data_size(data_size)?;
        let level0_len = if geometry.levels() == 0 {
            DIGEST_SIZE as u64
        } else {
            geometry.level_blocks(0) * BLOCK
        };
        let level0_len = usize::try_from(level0_len).map_err(|_| VerityError::TooLarge {
            blocks: geometry.data_blocks(),
        })?;
        Ok(Self {
            hasher: SaltedHasher::new(&salt),
            geometry,
            salt,
            data_size,
            received: 0,
            partial: Vec::with_capacity(BLOCK_SIZE),
            next_block: 0,
            level0: vec![0; level0_len],
        })
    }

    /// Pushes the next bytes of data.
    pub fn update(&mut self, mut data: &[u8]) -> Result<(), VerityError> {
        let got = self.received + data.len() as u64;
        if got > self.data_size {
            return Err(VerityError::DataSize {
                expected: self.data_size,
                got,
            });
        }
        self.received = got;
        if !self.partial.is_empty() {
            let take = (BLOCK_SIZE - self.partial.len()).min(data.len());
            self.partial.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.partial.len() == BLOCK_SIZE {
                let block = std::mem::take(&mut self.partial);
                self.push_block(&block);
                self.partial = block;
                self.partial.clear();
            }
        }
        let mut blocks = data.chunks_exact(BLOCK_SIZE);
        for block in &mut blocks {
            self.push_block(block);
        }
        self.partial.extend_from_slice(blocks.remainder());
        Ok(())
    }

    fn push_block(&mut self, block: &[u8]) {
        let at = self.next_block as usize * DIGEST_SIZE;
        self.level0[at..at + DIGEST_SIZE].copy_from_slice(&self.hasher.digest(block));
        self.next_block += 1;
    }

    /// Pads the last block, hashes the upper levels and returns the tree.
    pub fn finish(mut self) -> Result<HashTree, VerityError> {
        if self.received != self.data_size {
            return Err(VerityError::DataSize {
                expected: self.data_size,
                got: self.received,
            });
        }
        if !self.partial.is_empty() {
            let mut block = std::mem::take(&mut self.partial);
            block.resize(BLOCK_SIZE, 0);
            self.push_block(&block);
        }
        debug_assert_eq!(self.next_block, self.geometry.data_blocks());
        let g = &self.geometry;
        if g.levels() == 0 {
            let mut root = [0u8; DIGEST_SIZE];
            root.copy_from_slice(&self.level0);
            return Ok(HashTree {
                geometry: self.geometry,
                salt: self.salt,
                levels: Vec::new(),
                root,
            });
        }
        let mut levels = vec![self.level0];
        for level in 1..g.levels() {
            let mut cur = vec![0u8; (g.level_blocks(level) * BLOCK) as usize];
            let below = &levels[level - 1];
            for (j, block) in below.chunks_exact(BLOCK_SIZE).enumerate() {
                cur[j * DIGEST_SIZE..(j + 1) * DIGEST_SIZE]
                    .copy_from_slice(&self.hasher.digest(block));
            }
            levels.push(cur);
        }
        let root = self.hasher.digest(&levels[g.levels() - 1]);
        Ok(HashTree {
            geometry: self.geometry,
            salt: self.salt,
            levels,
            root,
        })
    }
}

/// A complete hash tree and its root hash.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HashTree {
    geometry: Geometry,
    salt: Salt,
    /// Level 0 first, each a whole number of hash blocks.
    levels: Vec<Vec<u8>>,
    root: [u8; DIGEST_SIZE],
}

impl HashTree {
    /// Reads exactly `data_size` bytes from `data` (in 1 MiB reads) and builds the tree.
    /// `progress` is called with the bytes read so far after every read.
    pub fn from_reader<R: Read>(
        mut data: R,
        data_size: u64,
        salt: Salt,
        progress: &mut dyn FnMut(u64),
    ) -> Result<Self, VerityError> {
        let mut builder = TreeBuilder::new(data_size, salt)?;
        let mut buf = vec![0u8; READ_CHUNK];
        let mut done = 0u64;
        while done < data_size {
            let want = (data_size - done).min(READ_CHUNK as u64) as usize;
            let n = match data.read(&mut buf[..want]) {
                Ok(0) => {
                    return Err(VerityError::DataSize {
                        expected: data_size,
                        got: done,
                    })
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(VerityError::Read(e)),
            };
            builder.update(&buf[..n])?;
            done += n as u64;
            progress(done);
        }
        builder.finish()
    }

    pub fn root(&self) -> &[u8; DIGEST_SIZE] {
        &self.root
    }

    pub fn geometry(&self) -> &Geometry {
        &self.geometry
    }

    pub fn salt(&self) -> &Salt {
        &self.salt
    }

    /// The hash blocks of `level` (0 = digests of data blocks). Panics if out of range.
    pub fn level(&self, level: usize) -> &[u8] {
        &self.levels[level]
    }

    /// The superblock describing this tree.
    pub fn superblock(&self, uuid: VerityUuid) -> Superblock {
        Superblock {
            uuid,
            data_blocks: self.geometry.data_blocks(),
            salt: self.salt.clone(),
        }
    }

    /// Writes the hash device: superblock block, then the levels from the top down.
    pub fn write_hash_device<W: Write>(&self, uuid: VerityUuid, out: &mut W) -> io::Result<()> {
        let mut block0 = vec![0u8; BLOCK_SIZE];
        block0[..SUPERBLOCK_SIZE].copy_from_slice(&self.superblock(uuid).to_bytes());
        out.write_all(&block0)?;
        for level in self.levels.iter().rev() {
            out.write_all(level)?;
        }
        Ok(())
    }
}

/// The veritysetup superblock at offset 0 of the hash device. The fields not stored here are
/// constants: version 1, hash type 1, `sha256`, 4096-byte blocks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Superblock {
    pub uuid: VerityUuid,
    pub data_blocks: u64,
    pub salt: Salt,
}

impl Superblock {
    pub fn to_bytes(&self) -> [u8; SUPERBLOCK_SIZE] {
        let mut b = [0u8; SUPERBLOCK_SIZE];
        b[0..8].copy_from_slice(SIGNATURE);
        b[8..12].copy_from_slice(&1u32.to_le_bytes());
        b[12..16].copy_from_slice(&1u32.to_le_bytes());
        b[16..32].copy_from_slice(&self.uuid.0);
        b[32..38].copy_from_slice(b"sha256");
        b[64..68].copy_from_slice(&(BLOCK_SIZE as u32).to_le_bytes());
        b[68..72].copy_from_slice(&(BLOCK_SIZE as u32).to_le_bytes());
        b[72..80].copy_from_slice(&self.data_blocks.to_le_bytes());
        let salt = self.salt.as_bytes();
        b[80..82].copy_from_slice(&(salt.len() as u16).to_le_bytes());
        b[88..88 + salt.len()].copy_from_slice(salt);
        b
    }

    /// Parses a superblock (the first [`SUPERBLOCK_SIZE`] bytes of `bytes`), accepting only the
    /// configuration this module writes.
    pub fn parse(bytes: &[u8]) -> Result<Self, VerityError> {
        let bad = |field: &'static str, expected: String, got: String| VerityError::Superblock {
            field,
            expected,
            got,
        };
        if bytes.len() < SUPERBLOCK_SIZE {
            return Err(bad(
                "size",
                format!("{SUPERBLOCK_SIZE} bytes"),
                format!("{} bytes", bytes.len()),
            ));
        }
        let b = &bytes[..SUPERBLOCK_SIZE];
        let u32_at = |at: usize| u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"));
        if &b[0..8] != SIGNATURE {
            return Err(bad("signature", "verity".into(), hex::encode(&b[0..8])));
        }
        for (field, at, want) in [
            ("version", 8, 1),
            ("hash_type", 12, 1),
            ("data_block_size", 64, BLOCK_SIZE as u32),
            ("hash_block_size", 68, BLOCK_SIZE as u32),
        ] {
            let got = u32_at(at);
            if got != want {
                return Err(bad(field, want.to_string(), got.to_string()));
            }
        }
        let mut algorithm = [0u8; 32];
        algorithm[..6].copy_from_slice(b"sha256");
        if b[32..64] != algorithm {
            let got = String::from_utf8_lossy(&b[32..64]);
            return Err(bad("algorithm", "sha256".into(), format!("{got:?}")));
        }
        let data_blocks = u64::from_le_bytes(b[72..80].try_into().expect("8 bytes"));
        if data_blocks == 0 || data_blocks > MAX_DATA_BLOCKS {
            return Err(bad(
                "data_blocks",
                format!("1..={MAX_DATA_BLOCKS}"),
                data_blocks.to_string(),
            ));
        }
        let salt_size = usize::from(u16::from_le_bytes([b[80], b[81]]));
        if salt_size > MAX_SALT_SIZE {
            return Err(bad(
                "salt_size",
                format!("at most {MAX_SALT_SIZE}"),
                salt_size.to_string(),
            ));
        }
        let padding = [&b[82..88], &b[88 + salt_size..]];
        if padding.iter().any(|p| p.iter().any(|&x| x != 0)) {
            return Err(bad("padding", "zero".into(), "nonzero bytes".into()));
        }
        let mut uuid = [0u8; 16];
        uuid.copy_from_slice(&b[16..32]);
        Ok(Self {
            uuid: VerityUuid(uuid),
            data_blocks,
            salt: Salt(b[88..88 + salt_size].to_vec()),
        })
    }
}

impl Serialize for Salt {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for Salt {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if !s.bytes().all(is_lower_hex) {
            return Err(serde::de::Error::custom("salt: expected lowercase hex"));
        }
        Salt::from_hex(&s).map_err(serde::de::Error::custom)
    }
}

impl Serialize for VerityUuid {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for VerityUuid {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        VerityUuid::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn geometry_levels_and_layout() {
        let g = Geometry::new(1).unwrap();
        assert_eq!((g.levels(), g.hash_device_blocks()), (0, 1));
        let g = Geometry::new(128).unwrap();
        assert_eq!((g.levels(), g.hash_device_blocks()), (1, 2));
        let g = Geometry::new(129).unwrap();
        assert_eq!(g.levels(), 2);
        assert_eq!((g.level_start(1), g.level_start(0)), (1, 2));
        assert_eq!(g.hash_device_blocks(), 4);
        let g = Geometry::new(128 * 128 + 1).unwrap();
        assert_eq!(g.levels(), 3);
        assert_eq!(
            (g.level_blocks(0), g.level_blocks(1), g.level_blocks(2)),
            (129, 2, 1)
        );
        assert_eq!(
            (g.level_start(2), g.level_start(1), g.level_start(0)),
            (1, 2, 4)
        );
        assert!(matches!(Geometry::new(0), Err(VerityError::Empty)));
        assert!(Geometry::new(MAX_DATA_BLOCKS).is_ok());
        assert!(Geometry::new(MAX_DATA_BLOCKS + 1).is_err());
    }

    #[test]
    fn uuid_round_trip_and_version_bits() {
        let u = VerityUuid::derived(&[7; 32]);
        let s = u.to_string();
        assert_eq!(s.as_bytes()[14], b'8');
        assert!(matches!(s.as_bytes()[19], b'8' | b'9' | b'a' | b'b'));
        assert_eq!(VerityUuid::parse(&s).unwrap(), u);
        assert!(VerityUuid::parse(&s.to_uppercase()).is_err());
        assert!(VerityUuid::parse(&s.replace('-', "")).is_err());
    }
}

//! Verification of data blocks against a stored hash tree and a trusted root hash: what the
//! kernel does on every read, plus a whole-image check used by tests and tools.

use std::io::{self, Read};

use super::{
    Geometry, Salt, SaltedHasher, Superblock, VerityError, BLOCK, BLOCK_SIZE, DIGEST_SIZE,
    HASH_PER_BLOCK_BITS, SUPERBLOCK_SIZE,
};

/// Checks data blocks against a stored hash tree the way dm-verity does on each read: the
/// block's digest must be in its level-0 block, that block's digest in its level-1 block, and so
/// on up to the trusted root. Hash blocks that reached the root once are remembered.
#[derive(Debug)]
pub struct Verifier<'a> {
    geometry: Geometry,
    hasher: SaltedHasher,
    root: [u8; DIGEST_SIZE],
    hash_device: &'a [u8],
    verified: Vec<bool>,
}

impl<'a> Verifier<'a> {
    /// `hash_device` is the whole hash device, superblock included (its fields are not used).
    pub fn new(
        geometry: Geometry,
        salt: &Salt,
        root: [u8; DIGEST_SIZE],
        hash_device: &'a [u8],
    ) -> Result<Self, VerityError> {
        let expected = geometry.hash_device_size();
        if (hash_device.len() as u64) < expected {
            return Err(VerityError::HashDeviceSize {
                expected,
                got: hash_device.len() as u64,
            });
        }
        Ok(Self {
            verified: vec![false; geometry.hash_device_blocks() as usize],
            geometry,
            hasher: SaltedHasher::new(salt),
            root,
            hash_device,
        })
    }

    fn hash_block(&self, block: u64) -> &'a [u8] {
        let at = (block * BLOCK) as usize;
        &self.hash_device[at..at + BLOCK_SIZE]
    }

    /// Verifies data block `index` (exactly [`BLOCK_SIZE`] bytes).
    pub fn verify_block(&mut self, index: u64, block: &[u8]) -> Result<(), VerityError> {
        if block.len() != BLOCK_SIZE {
            return Err(VerityError::BlockSize {
                index,
                got: block.len(),
            });
        }
        if index >= self.geometry.data_blocks() {
            return Err(VerityError::BlockIndex {
                index,
                data_blocks: self.geometry.data_blocks(),
            });
        }
        let mut digest = self.hasher.digest(block);
        let mut path = Vec::with_capacity(self.geometry.levels());
        for level in 0..self.geometry.levels() {
            let shift = HASH_PER_BLOCK_BITS * level as u32;
            let hash_block =
                self.geometry.level_start(level) + (index >> (shift + HASH_PER_BLOCK_BITS));
            let entry = ((index >> shift) & 127) as usize * DIGEST_SIZE;
            let stored = self.hash_block(hash_block);
            if stored[entry..entry + DIGEST_SIZE] != digest {
                return Err(VerityError::BlockMismatch { index, level });
            }
            if self.verified[hash_block as usize] {
                self.mark(&path);
                return Ok(());
            }
            path.push(hash_block);
            digest = self.hasher.digest(stored);
        }
        if digest != self.root {
            return Err(VerityError::RootMismatch {
                expected: hex::encode(self.root),
                got: hex::encode(digest),
            });
        }
        self.mark(&path);
        Ok(())
    }

    fn mark(&mut self, path: &[u64]) {
        for &b in path {
            self.verified[b as usize] = true;
        }
    }
}

/// Verifies one data block against a stored hash tree and a trusted root (see [`Verifier`]).
pub fn verify_block(
    geometry: &Geometry,
    salt: &Salt,
    root: &[u8; DIGEST_SIZE],
    hash_device: &[u8],
    index: u64,
    block: &[u8],
) -> Result<(), VerityError> {
    Verifier::new(geometry.clone(), salt, *root, hash_device)?.verify_block(index, block)
}

/// Verifies a whole data device (read as a stream) against a hash device with a superblock and a
/// trusted root: the superblock, the hash device size, every data block up the tree, and zero
/// padding after the last digest of each level. Returns the superblock.
pub fn verify_image<R: Read>(
    mut data: R,
    hash_device: &[u8],
    root: &[u8; DIGEST_SIZE],
) -> Result<Superblock, VerityError> {
    let sb = Superblock::parse(hash_device)?;
    let geometry = Geometry::new(sb.data_blocks)?;
    let expected = geometry.hash_device_size();
    if hash_device.len() as u64 != expected {
        return Err(VerityError::HashDeviceSize {
            expected,
            got: hash_device.len() as u64,
        });
    }
    if hash_device[SUPERBLOCK_SIZE..BLOCK_SIZE]
        .iter()
        .any(|&b| b != 0)
    {
        return Err(VerityError::Superblock {
            field: "rest of block 0",
            expected: "zero".into(),
            got: "nonzero bytes".into(),
        });
    }
    for level in 0..geometry.levels() {
        let start = (geometry.level_start(level) * BLOCK) as usize;
        let end = start + (geometry.level_blocks(level) * BLOCK) as usize;
        let used = (geometry.level_entries(level) as usize) * DIGEST_SIZE;
        if hash_device[start + used..end].iter().any(|&b| b != 0) {
            return Err(VerityError::Padding { level });
        }
    }
    let mut verifier = Verifier::new(geometry.clone(), &sb.salt, *root, hash_device)?;
    let mut block = vec![0u8; BLOCK_SIZE];
    for index in 0..geometry.data_blocks() {
        data.read_exact(&mut block).map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                VerityError::DataSize {
                    expected: geometry.data_size(),
                    got: index * BLOCK,
                }
            } else {
                VerityError::Read(e)
            }
        })?;
        verifier.verify_block(index, &block)?;
    }
    Ok(sb)
}

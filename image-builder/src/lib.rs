//! cocoon-image: builds the measured guest appliance reproducibly.
//!
//! * [`verity`] writes dm-verity hash trees (our own code, fixed salt) for model disks.
//! * [`gguf`] writes tiny random-weight llama GGUF models for exact-output and boot tests.
//! * [`manifest`] is the build record (`manifest.json`) next to the artifacts.

pub mod cpio;
pub mod elf;
pub mod erofs;
pub mod gguf;
pub mod kernel;
pub mod manifest;
pub mod registers;
pub mod root_disk;
pub mod verity;

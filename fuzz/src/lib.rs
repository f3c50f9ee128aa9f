//! Support code shared by fuzz targets and the tests that write their seeds. Not part of the
//! main workspace (see `docs/fuzzing.md`).
#![forbid(unsafe_code)]

pub mod ratls_verify;

//! The account key file: `ratls::key_file` (shared with the worker's wallet key).

pub use ratls::key_file::*;

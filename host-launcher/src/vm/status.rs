//! `cocoon-init` status lines on the guest's serial console: the parser lives beside the
//! marker in [`protocol::guest::status`] (where the fuzz target reaches it).

pub use protocol::guest::status::*;

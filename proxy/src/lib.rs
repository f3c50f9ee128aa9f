//! cocoon proxy (in progress).

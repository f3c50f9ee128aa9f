//! cocoon host tool (in progress).

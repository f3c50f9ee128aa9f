//! cocoon worker (in progress).

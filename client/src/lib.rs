//! cocoon client (in progress).

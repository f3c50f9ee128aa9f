//! dm-verity hash trees (placeholder; being written).

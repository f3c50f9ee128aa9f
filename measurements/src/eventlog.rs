//! TCG2 crypto-agile event logs as found in the TDX CCEL area (placeholder; being written).

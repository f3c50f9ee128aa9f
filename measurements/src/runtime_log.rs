//! cocoon's RTMR3 runtime event log (placeholder; being written).

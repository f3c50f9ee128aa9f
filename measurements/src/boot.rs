//! Expected RTMR1/RTMR2 from boot artifacts (placeholder; being written).

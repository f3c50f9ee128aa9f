//! Expected MRTD from a TDVF firmware image (placeholder; being written).

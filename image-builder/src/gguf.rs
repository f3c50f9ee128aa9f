//! Tiny GGUF writer (placeholder; being written).

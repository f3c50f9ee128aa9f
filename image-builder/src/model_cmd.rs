//! `cocoon-image model` and `cocoon-image tiny-gguf` (placeholder; being written).

//! PLACEHOLDER: GGUF v3 reader and streaming writer, being written.

//! PLACEHOLDER: the quantize pipeline, being written.

//! PLACEHOLDER: the decoder forward pass, being written.

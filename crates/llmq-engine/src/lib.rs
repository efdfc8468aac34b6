//! The inference engine: one configurable decoder for every supported architecture
//! (f32 compute on CPU), loading weights from GGUF or safetensors.

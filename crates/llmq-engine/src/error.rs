//! Errors of the inference engine.

/// Everything that can go wrong loading or running a model.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("unsupported architecture `{0}` (supported: Llama, Mistral, Qwen2, Qwen3, Qwen3-MoE, Gemma3, Phi3, Mixtral, DeepSeek-V3, GLM-4.7-Flash)")]
    UnsupportedArch(String),
    /// A setting that changes the model's math and that the engine does not implement.
    #[error("`{key}` = {value} is not implemented (it changes the model's computation, so it cannot be ignored)")]
    UnsupportedValue { key: String, value: String },
    #[error("model metadata lacks `{0}`")]
    MissingKey(String),
    #[error("model metadata `{key}` is unusable: {why}")]
    BadValue { key: String, why: String },
    #[error("model lacks tensor `{0}`")]
    MissingTensor(String),
    #[error("tensor `{name}` has shape {got:?}, expected {want:?}")]
    BadShape {
        name: String,
        got: Vec<usize>,
        want: Vec<usize>,
    },
    #[error("tensor `{name}`: {why}")]
    BadTensor { name: String, why: String },
    #[error("tensor `{name}` is stored as {ty}, a type this engine does not compute")]
    UnsupportedType { name: String, ty: String },
    #[error("tensor `{name}` is stored as {ty}, a type {device} does not compute yet (run the model with --device cpu)")]
    UnsupportedOnDevice {
        name: String,
        ty: String,
        device: String,
    },
    #[error("{0}")]
    Device(String),
    #[error("{0}")]
    Source(String),
    #[error("sequence of {len} tokens exceeds the context of {ctx} tokens")]
    ContextOverflow { len: usize, ctx: usize },
    #[error("token id {id} is outside the vocabulary of {vocab}")]
    BadToken { id: u32, vocab: usize },
}

impl EngineError {
    /// What the kernels said about tensor `name`.
    pub fn tensor(name: &str, e: llmq_kernels::KernelError) -> EngineError {
        match e {
            llmq_kernels::KernelError::UnsupportedType(t) => EngineError::UnsupportedType {
                name: name.into(),
                ty: t.name().into(),
            },
            llmq_kernels::KernelError::Layout(why) => EngineError::BadTensor {
                name: name.into(),
                why,
            },
        }
    }
}

pub type Result<T> = std::result::Result<T, EngineError>;

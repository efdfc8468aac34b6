//! The pipeline's error type. Each variant maps to one exit code of the CLI contract
//! (`../shared/docs/cli-contract.md`): 1 general, 2 invalid arguments, 3 model not
//! found, 4 authentication required, 5 out of memory, 6 validation failed,
//! 7 checkpoint error, 8 unsupported conversion, 9 cancelled.

/// Something that stopped a pipeline run, with what the user can do about it.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("{message}")]
    InvalidArgument { message: String, suggestion: String },
    #[error("{message}")]
    ModelNotFound { message: String, suggestion: String },
    #[error("{message}")]
    AuthRequired { message: String, suggestion: String },
    #[error("{message}")]
    OutOfMemory { message: String, suggestion: String },
    #[error("{message}")]
    Validation { message: String, suggestion: String },
    #[error("{message}")]
    Checkpoint { message: String, suggestion: String },
    #[error("{message}")]
    Unsupported { message: String, suggestion: String },
    #[error("{message}")]
    Cancelled { message: String, suggestion: String },
    #[error("{message}")]
    General { message: String, suggestion: String },
}

macro_rules! ctor {
    ($fn:ident, $variant:ident) => {
        pub fn $fn(message: impl Into<String>, suggestion: impl Into<String>) -> PipelineError {
            PipelineError::$variant {
                message: message.into(),
                suggestion: suggestion.into(),
            }
        }
    };
}

impl PipelineError {
    ctor!(invalid, InvalidArgument);
    ctor!(not_found, ModelNotFound);
    ctor!(auth, AuthRequired);
    ctor!(oom, OutOfMemory);
    ctor!(validation, Validation);
    ctor!(checkpoint, Checkpoint);
    ctor!(unsupported, Unsupported);
    ctor!(cancelled, Cancelled);
    ctor!(general, General);

    /// The error a child process of ours reported through its exit code (the inverse of
    /// [`PipelineError::exit_code`]); codes outside the contract count as general errors.
    pub fn from_exit_code(
        code: i32,
        message: impl Into<String>,
        suggestion: impl Into<String>,
    ) -> PipelineError {
        let ctor = match code {
            2 => PipelineError::invalid,
            3 => PipelineError::not_found,
            4 => PipelineError::auth,
            5 => PipelineError::oom,
            6 => PipelineError::validation,
            7 => PipelineError::checkpoint,
            8 => PipelineError::unsupported,
            9 => PipelineError::cancelled,
            _ => PipelineError::general,
        };
        ctor(message, suggestion)
    }

    /// The process exit code the CLI contract assigns.
    pub fn exit_code(&self) -> i32 {
        match self {
            PipelineError::General { .. } => 1,
            PipelineError::InvalidArgument { .. } => 2,
            PipelineError::ModelNotFound { .. } => 3,
            PipelineError::AuthRequired { .. } => 4,
            PipelineError::OutOfMemory { .. } => 5,
            PipelineError::Validation { .. } => 6,
            PipelineError::Checkpoint { .. } => 7,
            PipelineError::Unsupported { .. } => 8,
            PipelineError::Cancelled { .. } => 9,
        }
    }

    /// The contract's `error_type` name.
    pub fn error_type(&self) -> &'static str {
        match self {
            PipelineError::General { .. } => "QuantizationError",
            PipelineError::InvalidArgument { .. } => "InvalidArgumentError",
            PipelineError::ModelNotFound { .. } => "ModelNotFoundError",
            PipelineError::AuthRequired { .. } => "AuthenticationError",
            PipelineError::OutOfMemory { .. } => "OutOfMemoryError",
            PipelineError::Validation { .. } => "ValidationError",
            PipelineError::Checkpoint { .. } => "CheckpointError",
            PipelineError::Unsupported { .. } => "UnsupportedConversionError",
            PipelineError::Cancelled { .. } => "CancelledError",
        }
    }

    /// What the user can do next.
    pub fn suggestion(&self) -> &str {
        match self {
            PipelineError::InvalidArgument { suggestion, .. }
            | PipelineError::ModelNotFound { suggestion, .. }
            | PipelineError::AuthRequired { suggestion, .. }
            | PipelineError::OutOfMemory { suggestion, .. }
            | PipelineError::Validation { suggestion, .. }
            | PipelineError::Checkpoint { suggestion, .. }
            | PipelineError::Unsupported { suggestion, .. }
            | PipelineError::Cancelled { suggestion, .. }
            | PipelineError::General { suggestion, .. } => suggestion,
        }
    }

    /// An I/O failure on `path`, classified: a full disk or a permission problem gets
    /// its own advice.
    pub fn io(what: &str, path: &std::path::Path, e: &std::io::Error) -> PipelineError {
        let p = path.display();
        match e.raw_os_error() {
            Some(28) => PipelineError::general(
                format!("{what} {p}: no space left on device"),
                "Free disk space or choose another --output-dir; nothing complete was written",
            ),
            Some(13) | Some(30) => PipelineError::invalid(
                format!("{what} {p}: permission denied / read-only"),
                "Choose a writable --output-dir",
            ),
            _ => PipelineError::general(format!("{what} {p}: {e}"), "Check the path and try again"),
        }
    }
}

pub type Result<T> = std::result::Result<T, PipelineError>;

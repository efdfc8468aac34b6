//! The pipeline's error type: what went wrong, by [`ErrorKind`], with a message and
//! what the user can do about it. Exit codes and the contract's `error_type` names are
//! the command line's business (the CLI crate maps kinds to them).

/// The kind of failure, independent of how a front end reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// anything not covered below (e.g. disk full)
    General,
    /// the request itself is wrong
    InvalidArgument,
    /// the model (folder, Hub id, file) does not exist
    ModelNotFound,
    /// a gated or private model needs credentials
    AuthRequired,
    /// the work does not fit the memory budget
    OutOfMemory,
    /// corrupt input or an output that fails its re-check
    Validation,
    /// a checkpoint is missing, corrupt or from another run
    Checkpoint,
    /// an architecture, dtype, format or conversion this version cannot handle
    Unsupported,
    /// stopped by the user (or a test hook standing in for a kill)
    Cancelled,
}

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

    /// An error of `kind` (for callers that classify a failure themselves, e.g. from a
    /// child process's exit status).
    pub fn new(
        kind: ErrorKind,
        message: impl Into<String>,
        suggestion: impl Into<String>,
    ) -> PipelineError {
        let ctor = match kind {
            ErrorKind::InvalidArgument => PipelineError::invalid,
            ErrorKind::ModelNotFound => PipelineError::not_found,
            ErrorKind::AuthRequired => PipelineError::auth,
            ErrorKind::OutOfMemory => PipelineError::oom,
            ErrorKind::Validation => PipelineError::validation,
            ErrorKind::Checkpoint => PipelineError::checkpoint,
            ErrorKind::Unsupported => PipelineError::unsupported,
            ErrorKind::Cancelled => PipelineError::cancelled,
            ErrorKind::General => PipelineError::general,
        };
        ctor(message, suggestion)
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> ErrorKind {
        match self {
            PipelineError::General { .. } => ErrorKind::General,
            PipelineError::InvalidArgument { .. } => ErrorKind::InvalidArgument,
            PipelineError::ModelNotFound { .. } => ErrorKind::ModelNotFound,
            PipelineError::AuthRequired { .. } => ErrorKind::AuthRequired,
            PipelineError::OutOfMemory { .. } => ErrorKind::OutOfMemory,
            PipelineError::Validation { .. } => ErrorKind::Validation,
            PipelineError::Checkpoint { .. } => ErrorKind::Checkpoint,
            PipelineError::Unsupported { .. } => ErrorKind::Unsupported,
            PipelineError::Cancelled { .. } => ErrorKind::Cancelled,
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

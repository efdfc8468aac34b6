//! The CLI contract's view of a failure (`shared/docs/cli-contract.md`): the process
//! exit code and the `error_type` name of each [`ErrorKind`] — 1 general, 2 invalid
//! arguments, 3 model not found, 4 authentication required, 5 out of memory,
//! 6 validation failed, 7 checkpoint error, 8 unsupported conversion, 9 cancelled.

use llmq_pipeline::{ErrorKind, PipelineError};

/// Every kind with its exit code and `error_type` name, in code order.
const TABLE: [(ErrorKind, i32, &str); 9] = [
    (ErrorKind::General, 1, "QuantizationError"),
    (ErrorKind::InvalidArgument, 2, "InvalidArgumentError"),
    (ErrorKind::ModelNotFound, 3, "ModelNotFoundError"),
    (ErrorKind::AuthRequired, 4, "AuthenticationError"),
    (ErrorKind::OutOfMemory, 5, "OutOfMemoryError"),
    (ErrorKind::Validation, 6, "ValidationError"),
    (ErrorKind::Checkpoint, 7, "CheckpointError"),
    (ErrorKind::Unsupported, 8, "UnsupportedConversionError"),
    (ErrorKind::Cancelled, 9, "CancelledError"),
];

fn row(kind: ErrorKind) -> &'static (ErrorKind, i32, &'static str) {
    TABLE
        .iter()
        .find(|r| r.0 == kind)
        .expect("every kind has a row")
}

/// The process exit code the contract assigns to `e`.
pub fn exit_code(e: &PipelineError) -> i32 {
    row(e.kind()).1
}

/// The contract's `error_type` name of `e`.
pub fn error_type(e: &PipelineError) -> &'static str {
    row(e.kind()).2
}

/// The error a child process of ours reported through its exit code (the inverse of
/// [`exit_code`]); codes outside the contract count as general errors.
pub fn from_exit_code(
    code: i32,
    message: impl Into<String>,
    suggestion: impl Into<String>,
) -> PipelineError {
    let kind = TABLE
        .iter()
        .find(|r| r.1 == code)
        .map_or(ErrorKind::General, |r| r.0);
    PipelineError::new(kind, message, suggestion)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_unknown_codes_are_general() {
        for (kind, code, name) in TABLE {
            let e = from_exit_code(code, "m", "s");
            assert_eq!(e.kind(), kind);
            assert_eq!(exit_code(&e), code);
            assert_eq!(error_type(&e), name);
        }
        assert_eq!(exit_code(&from_exit_code(42, "m", "s")), 1);
        assert_eq!(exit_code(&PipelineError::checkpoint("m", "s")), 7);
        assert_eq!(
            error_type(&PipelineError::unsupported("m", "s")),
            "UnsupportedConversionError"
        );
    }
}

//! Errors of the worker library. Each names the file, tensor or field at fault.

use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Spec(#[from] llmprune_shared::SpecError),
    #[error("{path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("{path}: tensor `{name}`: {reason}")]
    Tensor { path: PathBuf, name: String, reason: String },
    #[error("{path}: tokenizer: {reason}")]
    Tokenizer { path: PathBuf, reason: String },
    /// The cause is in the message (not a `source` too, which would print it twice).
    #[error("{path}: {error}")]
    Io { path: PathBuf, error: std::io::Error },
    #[error("{0}")]
    Invalid(String),
    #[error("the plan does not fit the model: {0}")]
    Plan(String),
    #[error(transparent)]
    Planner(#[from] llmprune_shared::planner::PlannerError),
    /// A job's setting is wrong (named by its key).
    #[error(transparent)]
    Job(#[from] llmprune_shared::jobs::JobError),
    #[error("tensor computation: {0}")]
    Compute(#[from] candle_core::Error),
    /// A peer of a collective, or the link to it, failed (or broke its protocol).
    #[error("{context}: {error}")]
    Collective { context: String, error: crate::collective::CommError },
    /// The coordinator could not be reached, refused this worker, or went silent.
    #[error("{context}: {reason}")]
    Coordinator { context: String, reason: String },
}

/// What a failure asks of its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// The request, a file or a setting is wrong: retrying the same thing fails the same way.
    BadInput,
    /// This machine failed (I/O, the computation): look at it.
    Fault,
    /// Another process or the network failed: the same run may succeed again (`--resume`).
    Retryable,
}

impl Error {
    pub(crate) fn file(path: impl Into<PathBuf>, reason: impl std::fmt::Display) -> Self {
        Error::File { path: path.into(), reason: reason.to_string() }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), error: source }
    }

    pub(crate) fn collective(context: impl Into<String>, source: crate::collective::CommError) -> Self {
        Error::Collective { context: context.into(), error: source }
    }

    pub fn class(&self) -> ErrorClass {
        use std::io::ErrorKind;
        match self {
            Error::Spec(_)
            | Error::File { .. }
            | Error::Tensor { .. }
            | Error::Tokenizer { .. }
            | Error::Invalid(_)
            | Error::Plan(_)
            | Error::Planner(_)
            | Error::Job(_) => ErrorClass::BadInput,
            Error::Io { error, .. } if matches!(error.kind(), ErrorKind::NotFound | ErrorKind::PermissionDenied | ErrorKind::AlreadyExists) => {
                ErrorClass::BadInput
            }
            Error::Io { .. } | Error::Compute(_) => ErrorClass::Fault,
            // Asked for what this build or group cannot do (NCCL missing, no such peer).
            Error::Collective { error: crate::collective::CommError::Usage { .. }, .. } => ErrorClass::BadInput,
            Error::Collective { .. } | Error::Coordinator { .. } => ErrorClass::Retryable,
        }
    }
}

/// The one place a worker's errors become gRPC statuses: bad input is the caller's to fix
/// (invalid argument; files the caller named: failed precondition), a fault is internal, and
/// a failed peer or link is unavailable (the coordinator says the run may be resumed).
impl From<Error> for tonic::Status {
    fn from(e: Error) -> Self {
        let msg = e.to_string();
        match (e.class(), &e) {
            (ErrorClass::BadInput, Error::File { .. } | Error::Io { .. } | Error::Tensor { .. } | Error::Tokenizer { .. }) => {
                tonic::Status::failed_precondition(msg)
            }
            (ErrorClass::BadInput, _) => tonic::Status::invalid_argument(msg),
            (ErrorClass::Fault, _) => tonic::Status::internal(msg),
            (ErrorClass::Retryable, _) => tonic::Status::unavailable(msg),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collective::CommError;

    #[test]
    fn classes_become_grpc_codes() {
        let peer = Error::collective("pipeline", CommError::Protocol { rank: 1, reason: "bad frame".into() });
        assert_eq!((peer.class(), tonic::Status::from(peer).code()), (ErrorClass::Retryable, tonic::Code::Unavailable));
        let missing = Error::io("/no/model", std::io::Error::from(std::io::ErrorKind::NotFound));
        assert_eq!((missing.class(), tonic::Status::from(missing).code()), (ErrorClass::BadInput, tonic::Code::FailedPrecondition));
        let disk = Error::io("/out", std::io::Error::other("no space left on device"));
        assert_eq!((disk.class(), tonic::Status::from(disk).code()), (ErrorClass::Fault, tonic::Code::Internal));
        let usage = Error::collective("creating an NCCL id", CommError::Usage { rank: 0, reason: "built without NCCL".into() });
        assert_eq!(tonic::Status::from(usage).code(), tonic::Code::InvalidArgument);
        let bad = Error::Invalid("unknown task".into());
        assert_eq!((bad.class(), tonic::Status::from(bad).code()), (ErrorClass::BadInput, tonic::Code::InvalidArgument));
    }
}

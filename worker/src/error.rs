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
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(String),
    #[error("the plan does not fit the model: {0}")]
    Plan(String),
    #[error(transparent)]
    Planner(#[from] llmprune_shared::planner::PlannerError),
    #[error("tensor computation: {0}")]
    Compute(#[from] candle_core::Error),
}

impl Error {
    pub(crate) fn file(path: impl Into<PathBuf>, reason: impl std::fmt::Display) -> Self {
        Error::File { path: path.into(), reason: reason.to_string() }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }
}

impl From<Error> for tonic::Status {
    fn from(e: Error) -> Self {
        let msg = e.to_string();
        match e {
            Error::Invalid(_) | Error::Plan(_) | Error::Planner(_) | Error::Spec(_) => tonic::Status::invalid_argument(msg),
            Error::File { .. } | Error::Io { .. } | Error::Tensor { .. } | Error::Tokenizer { .. } => tonic::Status::failed_precondition(msg),
            Error::Compute(_) => tonic::Status::internal(msg),
        }
    }
}

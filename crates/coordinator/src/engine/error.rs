//! The one error type of the engine boundary.

use crate::model::InvalidInput;
use crate::store::StoreError;

/// Why an engine operation did not succeed. The API layers map each variant
/// to dtm's codes: `InvalidArgument` → HTTP 400 / gRPC `InvalidArgument`,
/// `Failure` and `Conflict` → 409 / `Aborted`, `Ongoing` → 425 /
/// `FailedPrecondition`, `NotFound` and `Store` → 500 (dtm answers missing
/// gids with 500 too). `Store` carries an internal cause: log it, never send it.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The request is malformed; retrying it unchanged cannot help.
    #[error("invalid {field}: {message}")]
    InvalidArgument {
        /// The offending field (`steps[0].action`, `gid`, …).
        field: String,
        /// What is wrong with it.
        message: String,
    },
    /// `wait_result`: the transaction ended `failed` (message = rollback reason).
    #[error("{0}")]
    Failure(String),
    /// `wait_result`: the transaction is still in progress after one pass.
    #[error("transaction is still in progress")]
    Ongoing,
    /// No transaction with that gid.
    #[error("transaction not found")]
    NotFound,
    /// The transaction's status forbids the operation (dtm's 409 texts).
    #[error("{0}")]
    Conflict(String),
    /// The database failed; internal, logged, answered with 500.
    #[error("storage error: {0}")]
    Store(#[from] StoreError),
}

impl From<InvalidInput> for EngineError {
    fn from(e: InvalidInput) -> EngineError {
        EngineError::InvalidArgument { field: e.field, message: e.message }
    }
}

impl EngineError {
    /// Shorthand for [`EngineError::InvalidArgument`].
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> EngineError {
        EngineError::InvalidArgument { field: field.into(), message: message.into() }
    }
}

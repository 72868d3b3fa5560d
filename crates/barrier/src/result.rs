//! [`BranchError`]: what a branch handler returns, and how it is answered.
//!
//! The four results a branch can give and the markers they travel with
//! (`FAILURE`, `ONGOING`) are dtm's protocol and live in `dtm_protocol`
//! ([`dtm_protocol::BranchResult`]); this is the branch's side of it.
//! [`BranchError`] has no `From` conversion into [`BranchError::Failure`]:
//! the only way to roll a saga back is to write
//! `BranchError::failure("insufficient stock")`. Every `?` on a database or
//! network error lands in [`BranchError::Retry`], so an outage can never be
//! mistaken for a business "no" (the Go demo's trap: a plain error becomes
//! `Unknown` and retries forever, a wrong `Aborted` rolls back an order that
//! only hit a timeout).

use std::fmt;

use dtm_protocol::{FAILURE, ONGOING};

/// The error a branch handler returns. See the module docs for why there is
/// no implicit way to build a `Failure`.
#[derive(Debug)]
pub enum BranchError {
    /// Business failure: roll the saga back. Sent as `Aborted("FAILURE")` / 409.
    Failure(String),
    /// Not finished: call again later. Sent as `FailedPrecondition` / 425.
    Ongoing,
    /// The request itself is malformed (missing dtm metadata, bad payload).
    /// Sent as `InvalidArgument` / 400; the coordinator retries it with backoff,
    /// which is right: only a fixed deployment can make it succeed.
    InvalidArgument(String),
    /// Anything else: a database error, a timeout… Sent as `Unavailable` /
    /// 503 so the coordinator retries. The cause is logged, never sent.
    Retry(Box<dyn std::error::Error + Send + Sync>),
}

impl BranchError {
    /// A business failure that rolls the saga back.
    pub fn failure(reason: impl Into<String>) -> BranchError {
        BranchError::Failure(reason.into())
    }

    /// A retryable error from any cause.
    pub fn retry(cause: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> BranchError {
        BranchError::Retry(cause.into())
    }

    /// The gRPC status dtm expects for this error. Internal causes are logged
    /// here and replaced by a generic message.
    pub fn into_status(self) -> tonic::Status {
        match self {
            BranchError::Failure(reason) => {
                tracing::info!(%reason, "branch answered FAILURE");
                tonic::Status::aborted(FAILURE)
            }
            BranchError::Ongoing => tonic::Status::failed_precondition(ONGOING),
            BranchError::InvalidArgument(message) => tonic::Status::invalid_argument(message),
            BranchError::Retry(cause) => {
                tracing::warn!(error = %cause, "branch failed with a retryable error");
                tonic::Status::unavailable("temporary failure, retry later")
            }
        }
    }

    /// The HTTP status and JSON body dtm's HTTP SDKs return for this error.
    pub fn into_http(self) -> (http::StatusCode, String) {
        match self {
            BranchError::Failure(reason) => {
                tracing::info!(%reason, "branch answered FAILURE");
                (
                    http::StatusCode::CONFLICT,
                    format!(r#"{{"dtm_result":"FAILURE","message":{}}}"#, json_string(&reason)),
                )
            }
            BranchError::Ongoing => {
                (http::StatusCode::TOO_EARLY, r#"{"dtm_result":"ONGOING","message":"ONGOING"}"#.to_string())
            }
            BranchError::InvalidArgument(message) => {
                (http::StatusCode::BAD_REQUEST, format!(r#"{{"message":{}}}"#, json_string(&message)))
            }
            BranchError::Retry(cause) => {
                tracing::warn!(error = %cause, "branch failed with a retryable error");
                (
                    http::StatusCode::SERVICE_UNAVAILABLE,
                    r#"{"message":"temporary failure, retry later"}"#.to_string(),
                )
            }
        }
    }
}

impl fmt::Display for BranchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BranchError::Failure(reason) => write!(f, "business failure: {reason}"),
            BranchError::Ongoing => f.write_str("ongoing"),
            BranchError::InvalidArgument(message) => write!(f, "invalid argument: {message}"),
            BranchError::Retry(cause) => write!(f, "retryable: {cause}"),
        }
    }
}

impl std::error::Error for BranchError {}

/// Database errors are never business failures.
impl From<sqlx::Error> for BranchError {
    fn from(error: sqlx::Error) -> BranchError {
        BranchError::Retry(Box::new(error))
    }
}

impl From<dtm_protocol::ProtocolError> for BranchError {
    fn from(error: dtm_protocol::ProtocolError) -> BranchError {
        BranchError::InvalidArgument(error.to_string())
    }
}

impl From<BranchError> for tonic::Status {
    fn from(error: BranchError) -> tonic::Status {
        error.into_status()
    }
}

fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_errors_become_retries_not_failures() {
        let error: BranchError = sqlx::Error::PoolTimedOut.into();
        assert_eq!(error.into_status().code(), tonic::Code::Unavailable);
        assert_eq!(BranchError::failure("no stock").into_status().code(), tonic::Code::Aborted);
        assert_eq!(BranchError::failure("no stock").into_status().message(), FAILURE);
        let (status, body) = BranchError::failure("say \"no\"").into_http();
        assert_eq!(status, http::StatusCode::CONFLICT);
        assert!(body.contains(r#""message":"say \"no\"""#), "{body}");
    }
}

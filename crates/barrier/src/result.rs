//! The four results of a branch call, and how they travel.
//!
//! | result  | gRPC status               | HTTP status / body            | coordinator does          |
//! |---------|---------------------------|-------------------------------|---------------------------|
//! | Success | `OK`                      | 200                           | marks the branch done     |
//! | Failure | `Aborted` "FAILURE"       | 409, or body has `FAILURE`    | saga action: roll back    |
//! | Ongoing | `FailedPrecondition`      | 425, or body has `ONGOING`    | retry at a fixed interval |
//! | Retry   | anything else             | anything else, or no answer   | retry with backoff        |
//!
//! A branch handler returns `Result<T, BranchError>`. [`BranchError`] has no
//! `From` conversion into [`BranchError::Failure`]: the only way to roll a
//! saga back is to write `BranchError::failure("insufficient stock")`. Every
//! `?` on a database or network error lands in [`BranchError::Retry`], so an
//! outage can never be mistaken for a business "no" (the Go demo's trap: a
//! plain error becomes `Unknown` and retries forever, a wrong `Aborted` rolls
//! back an order that only hit a timeout).

use std::fmt;

/// The message dtm expects with `Aborted` for a business failure.
pub const FAILURE: &str = "FAILURE";
/// The message/body marker of an unfinished branch.
pub const ONGOING: &str = "ONGOING";
/// The body marker of success, kept for old dtm SDKs.
pub const SUCCESS: &str = "SUCCESS";

/// How a branch call ended, as the coordinator classifies it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BranchResult {
    /// Done; never call this (gid, branch, op) again.
    Success,
    /// A definite business "no". For a saga action it starts the rollback;
    /// for any other op dtm treats it as a retry (compensations must succeed).
    Failure(String),
    /// Not finished yet; ask again after the retry interval.
    Ongoing,
    /// Unknown outcome (timeout, unavailable, internal error…); retry with backoff.
    Retry(String),
}

impl BranchResult {
    /// Classifies a gRPC branch reply (dtm's `GrpcError2DtmError`).
    pub fn from_grpc(status: Result<(), &tonic::Status>) -> BranchResult {
        let Err(status) = status else { return BranchResult::Success };
        match status.code() {
            tonic::Code::Ok => BranchResult::Success,
            // Legacy clients sent Aborted("ONGOING").
            tonic::Code::Aborted if status.message() == ONGOING => BranchResult::Ongoing,
            tonic::Code::Aborted => BranchResult::Failure(status.message().to_string()),
            tonic::Code::FailedPrecondition => BranchResult::Ongoing,
            code => BranchResult::Retry(format!("{code:?}: {}", status.message())),
        }
    }

    /// Classifies an HTTP branch reply (dtm's `HTTPResp2DtmError`): the
    /// ONGOING check comes first, then FAILURE, then non-200 → retry.
    pub fn from_http(status: u16, body: &str) -> BranchResult {
        if status == 425 || body.contains(ONGOING) {
            BranchResult::Ongoing
        } else if status == 409 || body.contains(FAILURE) {
            BranchResult::Failure(body.to_string())
        } else if status != 200 {
            BranchResult::Retry(format!("HTTP {status}: {body}"))
        } else {
            BranchResult::Success
        }
    }

    /// Whether the coordinator may stop calling this branch.
    pub fn is_final(&self) -> bool {
        matches!(self, BranchResult::Success | BranchResult::Failure(_))
    }
}

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

impl From<crate::ProtocolError> for BranchError {
    fn from(error: crate::ProtocolError) -> BranchError {
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
    fn grpc_codes_map_as_dtm_does() {
        assert_eq!(BranchResult::from_grpc(Ok(())), BranchResult::Success);
        let aborted = tonic::Status::aborted(FAILURE);
        assert_eq!(BranchResult::from_grpc(Err(&aborted)), BranchResult::Failure(FAILURE.into()));
        let legacy_ongoing = tonic::Status::aborted(ONGOING);
        assert_eq!(BranchResult::from_grpc(Err(&legacy_ongoing)), BranchResult::Ongoing);
        let ongoing = tonic::Status::failed_precondition("x");
        assert_eq!(BranchResult::from_grpc(Err(&ongoing)), BranchResult::Ongoing);
        for status in [
            tonic::Status::unavailable("x"),
            tonic::Status::internal("x"),
            tonic::Status::unknown("FAILURE"),
            tonic::Status::deadline_exceeded("x"),
            tonic::Status::invalid_argument("x"),
        ] {
            assert!(matches!(BranchResult::from_grpc(Err(&status)), BranchResult::Retry(_)), "{status:?}");
        }
    }

    #[test]
    fn http_statuses_and_bodies_map_as_dtm_does() {
        assert_eq!(BranchResult::from_http(200, "{}"), BranchResult::Success);
        assert_eq!(BranchResult::from_http(200, r#"{"dtm_result":"SUCCESS"}"#), BranchResult::Success);
        assert!(matches!(BranchResult::from_http(409, ""), BranchResult::Failure(_)));
        assert!(matches!(
            BranchResult::from_http(200, r#"{"dtm_result":"FAILURE"}"#),
            BranchResult::Failure(_)
        ));
        assert!(matches!(BranchResult::from_http(500, "FAILURE"), BranchResult::Failure(_)));
        assert_eq!(BranchResult::from_http(425, ""), BranchResult::Ongoing);
        assert_eq!(BranchResult::from_http(200, "ONGOING"), BranchResult::Ongoing);
        assert!(matches!(BranchResult::from_http(500, "oops"), BranchResult::Retry(_)));
        assert!(matches!(BranchResult::from_http(503, ""), BranchResult::Retry(_)));
    }

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

//! The four results of a branch call, and how they travel.
//!
//! | result  | gRPC status               | HTTP status / body            | coordinator does          |
//! |---------|---------------------------|-------------------------------|---------------------------|
//! | Success | `OK`                      | 200                           | marks the branch done     |
//! | Failure | `Aborted` "FAILURE"       | 409, or body has `FAILURE`    | saga action: roll back    |
//! | Ongoing | `FailedPrecondition`      | 425, or body has `ONGOING`    | retry at a fixed interval |
//! | Retry   | anything else             | anything else, or no answer   | retry with backoff        |
//!
//! The caller's side (the coordinator, an AP's TCC try) classifies a reply
//! with [`BranchResult::from_grpc`] / [`BranchResult::from_http`]; the
//! branch's side answers through `barrier::BranchError`, which writes these
//! same markers, so both ends agree on what FAILURE and ONGOING look like.

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
}

//! The one error type of the client, with dtm's result codes mapped in.

use discovery::DiscoveryError;

/// What calling dtm can end in, besides success.
///
/// The split is the one an API in front of dtm needs: a business
/// [`Failure`](ClientError::Failure) (the saga was rolled back: tell the user,
/// HTTP 409), [`Unavailable`](ClientError::Unavailable) (the coordinator
/// could not be reached or did not answer in time: HTTP 503, try again with
/// the *same* gid — a resubmitted saga is accepted again, not duplicated),
/// and the rest.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// dtm answered FAILURE: gRPC `Aborted`, HTTP 409, or (pre-v1.10 servers)
    /// a body containing `FAILURE`. With `wait_result` it means the saga was
    /// compensated; the reason is dtm's message (e.g. the rollback reason).
    #[error("transaction failed: {0}")]
    Failure(String),

    /// dtm answered ONGOING: gRPC `FailedPrecondition`, HTTP 425.
    #[error("transaction still ongoing")]
    Ongoing,

    /// The coordinator could not be reached or did not answer in time
    /// (connection refused, no live instance in etcd, deadline exceeded).
    /// After a timeout the request may or may not have been applied.
    #[error("dtm unavailable: {0}")]
    Unavailable(String),

    /// The request was refused as malformed (by us before sending, or by
    /// dtm with gRPC `InvalidArgument` / HTTP 400).
    #[error("invalid request: {0}")]
    InvalidArgument(String),

    /// Anything else dtm answered (e.g. a storage error: HTTP 500, gRPC
    /// `Unknown`/`Internal`), or a reply we could not understand.
    #[error("dtm error: {0}")]
    Other(String),
}

impl ClientError {
    /// Maps a gRPC status from the `dtmgimp.Dtm` service (dtm's
    /// `DtmError2GrpcError`: FAILURE → `Aborted`, ONGOING → `FailedPrecondition`).
    pub fn from_status(status: &tonic::Status) -> ClientError {
        use tonic::Code;
        let message = status.message().to_string();
        match status.code() {
            // Legacy servers sent ONGOING as Aborted with that exact message.
            Code::Aborted if message == dtm_protocol::ONGOING => ClientError::Ongoing,
            Code::Aborted => ClientError::Failure(message),
            Code::FailedPrecondition => ClientError::Ongoing,
            Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled => ClientError::Unavailable(message),
            Code::InvalidArgument => ClientError::InvalidArgument(message),
            code => ClientError::Other(format!("{code:?}: {message}")),
        }
    }

    /// Maps an HTTP answer of dtm's `/api/dtmsvr/*` routes; `None` means
    /// success (200 without `FAILURE` in the body, dtm's own rule).
    pub fn from_http(status: u16, body: &str) -> Option<ClientError> {
        let message = || {
            serde_json::from_str::<serde_json::Value>(body)
                .ok()
                .and_then(|v| v.get("message").and_then(|m| m.as_str()).map(str::to_string))
                .unwrap_or_else(|| body.to_string())
        };
        match status {
            425 => Some(ClientError::Ongoing),
            409 => Some(ClientError::Failure(message())),
            _ if body.contains(dtm_protocol::FAILURE) => Some(ClientError::Failure(message())),
            200 => None,
            400 | 422 => Some(ClientError::InvalidArgument(message())),
            502..=504 => Some(ClientError::Unavailable(format!("HTTP {status}: {}", message()))),
            _ => Some(ClientError::Other(format!("HTTP {status}: {}", message()))),
        }
    }

    /// Maps a failure to find or dial the coordinator.
    pub fn from_discovery(err: DiscoveryError) -> ClientError {
        match err {
            DiscoveryError::Config(reason) => ClientError::InvalidArgument(reason),
            other => ClientError::Unavailable(other.to_string()),
        }
    }

    /// Maps a reqwest transport error (no HTTP answer at all).
    pub(crate) fn from_reqwest(err: &reqwest::Error) -> ClientError {
        if err.is_builder() {
            ClientError::InvalidArgument(err.to_string())
        } else if err.is_decode() {
            ClientError::Other(format!("unreadable reply: {err}"))
        } else {
            // Connect errors, timeouts, resets: the coordinator is not there.
            ClientError::Unavailable(err.to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_codes_map_like_dtm() {
        let failure = ClientError::from_status(&tonic::Status::aborted("FAILURE"));
        assert!(matches!(failure, ClientError::Failure(m) if m == "FAILURE"));
        assert!(matches!(ClientError::from_status(&tonic::Status::aborted("ONGOING")), ClientError::Ongoing));
        assert!(matches!(
            ClientError::from_status(&tonic::Status::failed_precondition("x")),
            ClientError::Ongoing
        ));
        assert!(matches!(
            ClientError::from_status(&tonic::Status::unavailable("refused")),
            ClientError::Unavailable(_)
        ));
        assert!(matches!(
            ClientError::from_status(&tonic::Status::deadline_exceeded("late")),
            ClientError::Unavailable(_)
        ));
        assert!(matches!(
            ClientError::from_status(&tonic::Status::invalid_argument("bad")),
            ClientError::InvalidArgument(_)
        ));
        assert!(matches!(ClientError::from_status(&tonic::Status::unknown("db")), ClientError::Other(_)));
    }

    #[test]
    fn http_answers_map_like_dtm() {
        assert!(ClientError::from_http(200, r#"{"dtm_result":"SUCCESS"}"#).is_none());
        let failure = ClientError::from_http(409, r#"{"dtm_result":"FAILURE","message":"out of stock"}"#);
        assert!(matches!(failure, Some(ClientError::Failure(m)) if m == "out of stock"));
        // Pre-v1.10 servers: FAILURE with status 200.
        assert!(matches!(
            ClientError::from_http(200, r#"{"dtm_result":"FAILURE"}"#),
            Some(ClientError::Failure(_))
        ));
        assert!(matches!(ClientError::from_http(425, "{}"), Some(ClientError::Ongoing)));
        assert!(matches!(ClientError::from_http(503, "busy"), Some(ClientError::Unavailable(_))));
        assert!(matches!(
            ClientError::from_http(500, r#"{"message":"gid not found"}"#),
            Some(ClientError::Other(m)) if m.contains("gid not found")
        ));
    }
}

//! The coordinator's two front doors, both speaking dtm's protocol.
//!
//! * [`http`] — dtm's JSON API under `/api/dtmsvr/…` (axum), plus
//!   `/api/ping` and `/api/metrics`;
//! * [`admin`] — the console's JSON API under `/api/admin/…` (ours);
//! * `kv` — dtm's topic, KV and `resetCronTime` routes, merged into the
//!   HTTP API;
//! * [`grpc`] — dtm's `dtmgimp.Dtm` service (tonic), with gRPC health and
//!   reflection.
//!
//! Both layers are thin: they turn wire input into the model's validated
//! types ([`crate::model::TransRequest::from_input`],
//! [`crate::model::RegisterBranchRequest::from_map`]), call the
//! [`Engine`](crate::engine::Engine), and map [`EngineError`] to the protocol's
//! codes with [`Outcome`]. Internal causes (database errors) are logged here
//! and never sent to clients.

pub mod admin;
pub mod grpc;
pub mod http;
mod kv;

use crate::engine::EngineError;

/// How dtm classifies the result of an API call; each wire protocol turns
/// this into its own status code (HTTP 200/400/409/425/500, gRPC
/// OK/InvalidArgument/Aborted/FailedPrecondition/Internal).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The caller's input is malformed: HTTP 400 / `InvalidArgument`.
    /// dtm answers 500 here; we are stricter so that clients can tell a
    /// bug in their request from an outage.
    Invalid {
        /// The offending field, e.g. `steps[0].action`.
        field: String,
        /// What is wrong with it.
        message: String,
    },
    /// dtm's FAILURE: HTTP 409 / `Aborted`.
    Failure(String),
    /// dtm's ONGOING: HTTP 425 / `FailedPrecondition`.
    Ongoing(String),
    /// Anything else: HTTP 500 / `Internal`, with a message safe to show.
    Error(String),
}

impl Outcome {
    /// Classifies an engine error. Internal causes are logged here, once,
    /// and replaced by a generic message.
    pub fn from_engine(error: EngineError, api: &'static str) -> Outcome {
        match error {
            EngineError::InvalidArgument { field, message } => Outcome::Invalid { field, message },
            EngineError::Failure(message) => Outcome::Failure(message),
            // dtm answers a status conflict ("current status 'succeed', cannot
            // sumbmit") with FAILURE as well.
            EngineError::Conflict(message) => Outcome::Failure(message),
            EngineError::Ongoing => Outcome::Ongoing("transaction is still in progress".into()),
            // dtm answers 500 for an unknown gid; the message is harmless.
            EngineError::NotFound => Outcome::Error("transaction not found".into()),
            EngineError::Store(cause) => {
                tracing::error!(api, error = %cause, "storage failure while serving an API call");
                Outcome::Error("internal error, see the coordinator log".into())
            }
        }
    }
}

/// Checks an `Authorization` value against the configured token.
///
/// Accepts exactly `Bearer <token>` (scheme case-insensitive, as RFC 6750
/// allows). The comparison looks at every byte whatever the mismatch, so
/// the answer time does not reveal how much of a guessed token was right.
pub(crate) fn bearer_matches(expected: &str, header: Option<&str>) -> bool {
    let Some(value) = header else { return false };
    let Some((scheme, token)) = value.split_once(' ') else { return false };
    if !scheme.eq_ignore_ascii_case("bearer") {
        return false;
    }
    let (a, b) = (expected.as_bytes(), token.trim().as_bytes());
    let mut diff = a.len() ^ b.len();
    for i in 0..a.len().max(b.len()) {
        diff |= usize::from(a.get(i).copied().unwrap_or(0) ^ b.get(i).copied().unwrap_or(0xff));
    }
    diff == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens_must_match_exactly() {
        assert!(bearer_matches("s3cret", Some("Bearer s3cret")));
        assert!(bearer_matches("s3cret", Some("bearer s3cret")));
        for wrong in
            [None, Some("Bearer s3cre"), Some("Bearer s3cret2"), Some("Basic s3cret"), Some("s3cret")]
        {
            assert!(!bearer_matches("s3cret", wrong), "{wrong:?}");
        }
    }
}

//! When to try again: pure functions, so that the timing rules can be read
//! and tested without a clock.
//!
//! dtm's rules (`dtmsvr/trans_process.go`): a new transaction starts at the base interval; after
//! a pass that made progress the interval resets to the base; after ONGOING
//! it stays; after any other error it DOUBLES — without a cap in dtm, so a
//! branch that was down for a day is retried roughly once a day afterwards.
//! We cap the doubling at [`EngineSettings::max_retry_interval`] and jitter
//! the delay downwards by up to a quarter, so that many transactions that
//! failed together (one branch service restarting) do not all come back in
//! the same second.
//!
//! [`EngineSettings::max_retry_interval`]: super::EngineSettings::max_retry_interval

use std::time::Duration;

use dtm_protocol::{BranchResult, Op, TransType};

use crate::model::TransOptions;

/// Why a branch operation will be called again (the answer was not final).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryCause {
    /// A transient error: an error status, a timeout, no connection. The
    /// pass backs off (the interval doubles, up to the cap).
    Error,
    /// FAILURE from an operation that must eventually succeed (a
    /// compensation, a TCC confirm or cancel, a message's action): retried
    /// and backed off like an error, as in dtm.
    Failure,
    /// ONGOING: asked again after the same interval, no backoff.
    Ongoing,
}

impl RetryCause {
    /// The label of the `dtm_branch_retries_total` metric.
    pub fn as_str(self) -> &'static str {
        match self {
            RetryCause::Error => "error",
            RetryCause::Failure => "failure",
            RetryCause::Ongoing => "ongoing",
        }
    }

    /// Whether this answer makes the transaction back off. These are the
    /// calls a retry alert counts (dtm's retry count grows only with the
    /// backoff; ONGOING keeps the interval).
    pub fn backs_off(self) -> bool {
        !matches!(self, RetryCause::Ongoing)
    }
}

/// Why `op` of a `trans_type` transaction will be called again after
/// answering `result`; `None` when the answer is final: SUCCESS, a saga
/// action's FAILURE (the saga rolls back), a message check-back's FAILURE
/// (the message fails).
pub fn retry_cause(trans_type: TransType, op: Op, result: &BranchResult) -> Option<RetryCause> {
    match result {
        BranchResult::Success => None,
        BranchResult::Failure(_)
            if matches!((trans_type, op), (TransType::Saga, Op::Action) | (_, Op::Msg)) =>
        {
            None
        }
        BranchResult::Failure(_) => Some(RetryCause::Failure),
        BranchResult::Ongoing => Some(RetryCause::Ongoing),
        BranchResult::Retry(_) => Some(RetryCause::Error),
    }
}

/// How the last pass over a still-unfinished transaction ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PassOutcome {
    /// Some branch made progress, nothing failed: come back at the base interval.
    Progress,
    /// A branch answered ONGOING: come back after the same interval.
    Ongoing,
    /// A branch failed transiently (error, timeout, non-final FAILURE): back off.
    Error,
}

/// The base interval of a transaction (dtm's "reset" interval): its own
/// `retry_interval`; else its `timeout_to_fail` when that is shorter than
/// the server interval; else the server interval.
pub fn base_interval(options: &TransOptions, server_retry_interval: Duration) -> Duration {
    if let Some(own) = options.retry_interval {
        return own;
    }
    match options.timeout_to_fail {
        Some(t) if !t.is_zero() && t < server_retry_interval => t,
        _ => server_retry_interval,
    }
}

/// The next `next_cron_interval` after a pass.
pub fn next_interval(current: Duration, base: Duration, max: Duration, outcome: PassOutcome) -> Duration {
    match outcome {
        PassOutcome::Progress => base,
        PassOutcome::Ongoing => current.max(base),
        PassOutcome::Error => current.max(base).saturating_mul(2).min(max.max(base)),
    }
}

/// The actual delay before the next attempt: `interval` shortened by up to
/// 25 % (`unit` is a random number in `[0, 1)`). Never below one second
/// (times are stored with second precision) unless the interval is.
pub fn jittered(interval: Duration, unit: f64) -> Duration {
    let cut = interval.mul_f64(0.25 * unit.clamp(0.0, 1.0));
    (interval - cut).max(interval.min(Duration::from_secs(1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn base_interval_follows_dtm() {
        let mut o = TransOptions::default();
        assert_eq!(base_interval(&o, S(10)), S(10));
        o.timeout_to_fail = Some(S(4));
        assert_eq!(base_interval(&o, S(10)), S(4));
        o.timeout_to_fail = Some(S(40));
        assert_eq!(base_interval(&o, S(10)), S(10));
        o.retry_interval = Some(S(2));
        assert_eq!(base_interval(&o, S(10)), S(2));
    }

    #[test]
    fn errors_double_up_to_the_cap_and_progress_resets() {
        let mut i = S(10);
        let mut seen = vec![];
        for _ in 0..6 {
            i = next_interval(i, S(10), S(60), PassOutcome::Error);
            seen.push(i.as_secs());
        }
        assert_eq!(seen, [20, 40, 60, 60, 60, 60]);
        assert_eq!(next_interval(i, S(10), S(60), PassOutcome::Ongoing), S(60));
        assert_eq!(next_interval(S(10), S(10), S(60), PassOutcome::Ongoing), S(10));
        assert_eq!(next_interval(i, S(10), S(60), PassOutcome::Progress), S(10));
        // A cap below the base never shrinks the base.
        assert_eq!(next_interval(S(10), S(10), S(5), PassOutcome::Error), S(10));
    }

    #[test]
    fn final_answers_are_not_retries() {
        let failure = BranchResult::Failure("no".into());
        assert_eq!(retry_cause(TransType::Saga, Op::Action, &failure), None);
        assert_eq!(retry_cause(TransType::Msg, Op::Msg, &failure), None);
        assert_eq!(retry_cause(TransType::Saga, Op::Compensate, &failure), Some(RetryCause::Failure));
        assert_eq!(retry_cause(TransType::Tcc, Op::Confirm, &failure), Some(RetryCause::Failure));
        assert_eq!(retry_cause(TransType::Saga, Op::Action, &BranchResult::Success), None);
        let error = BranchResult::Retry("503".into());
        assert_eq!(retry_cause(TransType::Saga, Op::Action, &error), Some(RetryCause::Error));
        assert_eq!(
            retry_cause(TransType::Saga, Op::Action, &BranchResult::Ongoing),
            Some(RetryCause::Ongoing)
        );
        assert!(!RetryCause::Ongoing.backs_off() && RetryCause::Failure.backs_off());
    }

    #[test]
    fn jitter_shortens_by_at_most_a_quarter() {
        assert_eq!(jittered(S(60), 0.0), S(60));
        assert_eq!(jittered(S(60), 0.999_999).as_secs(), 45);
        assert_eq!(jittered(S(1), 0.9), S(1));
        assert_eq!(jittered(Duration::from_millis(200), 0.5), Duration::from_millis(200));
    }
}

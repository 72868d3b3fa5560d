//! What the application's side of TCC ([`crate::Tcc`]) and XA
//! ([`crate::Xa`]) share: the same options, and the same frame around the
//! branch calls — `prepare`, the calls, then `submit` if they all
//! succeeded or `abort` with the error as the rollback reason (dtm's
//! `TccGlobalTransaction` and `XaHandleGlobalTrans`).

use crate::ClientError;

/// dtm's `rollback_reason` column is 1024 bytes wide; longer reasons would
/// make the abort itself be refused.
pub(crate) const MAX_REASON_BYTES: usize = 1000;

/// A global transaction the application prepares, then submits or aborts.
pub(crate) trait TwoPhase {
    /// `prepare`.
    fn prepare(&self) -> impl Future<Output = Result<(), ClientError>>;
    /// `submit`.
    fn submit(&self) -> impl Future<Output = Result<(), ClientError>>;
    /// `abort`, recording `reason`.
    fn abort(&self, reason: &str) -> impl Future<Output = Result<(), ClientError>>;
    /// For the log line of a failed abort.
    fn gid(&self) -> &dtm_protocol::Gid;
}

/// Prepare, run `body`, then submit on `Ok` or abort on `Err`. Returns
/// `body`'s value, or its error (after the abort; a failed abort is logged:
/// the transaction's `timeout_to_fail` rolls it back instead). If `body`
/// panics nothing is aborted here either: the timeout does it.
pub(crate) async fn run<G: TwoPhase, T>(
    global: G,
    body: impl AsyncFnOnce(&G) -> Result<T, ClientError>,
) -> Result<T, ClientError> {
    global.prepare().await?;
    match body(&global).await {
        Ok(value) => {
            global.submit().await?;
            Ok(value)
        }
        Err(err) => {
            if let Err(abort) = global.abort(&err.to_string()).await {
                tracing::warn!(gid = %global.gid(), %abort, "abort failed; the timeout will roll the transaction back");
            }
            Err(err)
        }
    }
}

/// The longest prefix of `text` of at most `max` bytes, on a char boundary.
pub(crate) fn truncate(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// For a two-phase transaction type with fields `gid` and `options:
/// TransOptions` and inherent `prepare`, `submit` and `abort`: its option
/// setters and its [`TwoPhase`] impl. `$phase2` names what the coordinator
/// calls in phase 2 and `$first` the application's calls, for the docs.
macro_rules! two_phase_type {
    ($type:ident, $phase2:literal, $first:literal) => {
        impl $crate::two_phase::TwoPhase for $type {
            fn prepare(&self) -> impl Future<Output = Result<(), $crate::ClientError>> {
                $type::prepare(self)
            }
            fn submit(&self) -> impl Future<Output = Result<(), $crate::ClientError>> {
                $type::submit(self)
            }
            fn abort(&self, reason: &str) -> impl Future<Output = Result<(), $crate::ClientError>> {
                $type::abort(self, reason)
            }
            fn gid(&self) -> &dtm_protocol::Gid {
                &self.gid
            }
        }

        impl $type {
            #[doc = concat!("submit/abort return after the ", $phase2, " ran once.")]
            pub fn wait_result(mut self, wait: bool) -> $type {
                self.options.wait_result = wait;
                self
            }

            /// Roll the transaction back if it is still `prepared` this
            /// long after `prepare` (server default: 35 s).
            pub fn timeout_to_fail(mut self, timeout: std::time::Duration) -> $type {
                self.options.timeout_to_fail = Some(timeout);
                self
            }

            #[doc = concat!("Deadline of every branch call: the ", $first, " calls made here and the coordinator's ", $phase2, " calls.")]
            pub fn request_timeout(mut self, timeout: std::time::Duration) -> $type {
                self.options.request_timeout = Some(timeout);
                self
            }

            #[doc = concat!("Base retry interval of the ", $phase2, ".")]
            pub fn retry_interval(mut self, interval: std::time::Duration) -> $type {
                self.options.retry_interval = Some(interval);
                self
            }

            /// A header (HTTP) or metadata entry (gRPC) on every branch call.
            pub fn branch_header(mut self, name: impl Into<String>, value: impl Into<String>) -> $type {
                self.options.branch_headers.insert(name.into(), value.into());
                self
            }
        }
    };
}

pub(crate) use two_phase_type;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_cut_on_a_char_boundary() {
        assert_eq!(truncate("abc", 10), "abc");
        assert_eq!(truncate("aé", 2), "a");
    }
}

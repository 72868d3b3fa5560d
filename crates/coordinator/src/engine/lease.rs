//! The lease a pass holds, seen from inside the pass.
//!
//! The store grants a lease by writing a fresh [`LeaseToken`] into `owner`
//! and an expiry into `next_cron_time`, on the **database's** clock (see
//! [`crate::store`]). Other instances judge the expiry on that clock; the
//! holder cannot read it without a round trip, so it keeps a conservative
//! copy on its own monotonic clock instead: the instant it *sent* the write
//! that granted or extended the lease. The database computed the expiry
//! after that instant, from a time truncated to whole seconds, so
//!
//! ```text
//! expiry (db clock) ≥ sent + length − 1 s
//! ```
//!
//! and nobody can take the transaction over while `sent.elapsed() < length
//! − 1 s`. A pass calls a branch only while the lease covers the whole call
//! plus [`MARGIN`]; otherwise it extends the lease first — a write fenced by
//! its token, which fails if someone else owns the transaction by then, and
//! the pass stops before the call. A coordinator paused for longer than its
//! lease (SIGSTOP, a VM migration, a long GC-like stall) therefore wakes up
//! to a refused write, not to a branch call on a transaction it no longer
//! owns. What no lease can prevent — a call already sent that the branch
//! executes late — is what the branch's barrier is for.

use std::time::Duration;

use tokio::time::Instant;

use super::settings::EngineSettings;
use crate::store::{Fence, LeaseToken};

/// Slack kept between the end of a call and the end of the lease: one
/// second for the database's whole-second truncation, and half a second for
/// everything else (scheduling, the clock rates of two machines).
pub const MARGIN: Duration = Duration::from_millis(1500);

/// A pass's lease on its transaction.
#[derive(Debug, Clone)]
pub struct Lease {
    /// The token in `owner`; every write of the pass is fenced by it.
    token: LeaseToken,
    /// When the lease ends at the earliest, on this process's monotonic
    /// clock: the send time of the write that granted or last extended it,
    /// plus the length that write asked for.
    expires: Instant,
    /// How long an extension asks for.
    length: Duration,
}

impl Lease {
    /// A lease of `length` whose granting write is about to be sent now.
    pub fn new(token: LeaseToken, length: Duration) -> Lease {
        Lease::sent_at(token, length, Instant::now())
    }

    /// A lease of `length` whose granting write was sent at `sent`.
    pub fn sent_at(token: LeaseToken, length: Duration, sent: Instant) -> Lease {
        Lease { token, expires: sent + length, length }
    }

    /// The same lease, extended by `length` from now on (a transaction whose
    /// calls need a longer lease than the poller granted).
    pub fn with_length(mut self, length: Duration) -> Lease {
        self.length = length;
        self
    }

    /// The token.
    pub fn token(&self) -> &LeaseToken {
        &self.token
    }

    /// The fence of this pass's writes.
    pub fn fence(&self) -> Fence {
        Fence::Owner(self.token.clone())
    }

    /// How long an extension lasts.
    pub fn length(&self) -> Duration {
        self.length
    }

    /// Whether a call that starts now and lasts at most `call` surely ends
    /// (with [`MARGIN`] to spare) before anyone else may take the transaction.
    pub fn covers(&self, call: Duration) -> bool {
        Instant::now() + call + MARGIN <= self.expires
    }

    /// Records an extension whose write was sent at `sent` and succeeded.
    pub fn extended(&mut self, sent: Instant) {
        self.expires = sent + self.length;
    }
}

/// The lease length for a transaction whose branch calls may take `call`:
/// the configured lease, but never so short that one call does not fit in
/// it with room for a few more (a lease shorter than a call protects nothing).
pub fn length_for(settings: &EngineSettings, call: Duration) -> Duration {
    settings.lease_duration.max(call * 2 + MARGIN)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_lease_covers_a_call_only_while_call_and_margin_fit_before_it_ends() {
        let lease = Lease::new(LeaseToken::random(), Duration::from_secs(10));
        assert!(lease.covers(Duration::from_secs(3)));
        tokio::time::sleep(Duration::from_millis(5400)).await;
        assert!(lease.covers(Duration::from_secs(3)), "5.4 + 3 + 1.5 ≤ 10");
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!lease.covers(Duration::from_secs(3)), "5.6 + 3 + 1.5 > 10");
    }

    #[tokio::test(start_paused = true)]
    async fn an_extension_restarts_the_lease_from_when_its_write_was_sent() {
        let mut lease = Lease::new(LeaseToken::random(), Duration::from_secs(10));
        tokio::time::sleep(Duration::from_secs(9)).await;
        assert!(!lease.covers(Duration::from_secs(1)));
        let sent = Instant::now();
        tokio::time::sleep(Duration::from_secs(2)).await;
        lease.extended(sent);
        assert!(lease.covers(Duration::from_secs(6)), "2 + 6 + 1.5 ≤ 10");
        assert!(!lease.covers(Duration::from_secs(7)));
    }

    #[test]
    fn the_lease_is_never_shorter_than_two_calls_and_the_margin() {
        let settings =
            EngineSettings { lease_duration: Duration::from_secs(10), ..EngineSettings::default() };
        assert_eq!(length_for(&settings, Duration::from_secs(3)), Duration::from_secs(10));
        assert_eq!(length_for(&settings, Duration::from_secs(60)), Duration::from_millis(121_500));
    }
}

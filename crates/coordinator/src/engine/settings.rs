//! Engine tuning knobs, with dtm's defaults where dtm has one.

use std::time::Duration;

use crate::alert::AlertSettings;
use crate::attempts::AttemptSettings;

/// How the engine retries, times out and shares work. The config layer
/// fills it from YAML / environment; tests shrink the intervals.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineSettings {
    /// Base retry interval (dtm `RetryInterval`, 10 s) when a transaction sets
    /// none. Also the first `next_cron_interval` of a new transaction.
    pub retry_interval: Duration,
    /// Default timeout of prepared TCC/XA/msg transactions (dtm `TimeoutToFail`,
    /// 35 s). Sagas only time out when they set their own `timeout_to_fail`.
    pub timeout_to_fail: Duration,
    /// Branch call timeout when the transaction sets none (dtm `RequestTimeout`, 3 s).
    pub request_timeout: Duration,
    /// Cap of the exponential backoff (dtm has none; we default to 60 s so a
    /// branch that was down for an hour is retried within a minute of coming back).
    pub max_retry_interval: Duration,
    /// How long the recovery poller sleeps when it found nothing to do
    /// (dtm `TransCronInterval`, 3 s; we subtract up to 1 s of jitter like dtm).
    pub trans_cron_interval: Duration,
    /// How far a lease pushes `next_cron_time` ahead. An instance that dies
    /// while holding a transaction delays it by at most this much. dtm uses
    /// `RetryInterval`; so do we by default.
    pub lease_duration: Duration,
    /// Most transactions processed at once by one instance (submits and
    /// recovery together). Bounds memory and connection use under load.
    pub max_in_flight: usize,
    /// Most due transactions leased by one poller query.
    pub lease_batch: u32,
    /// How long `shutdown` waits for in-flight passes before releasing their leases.
    pub shutdown_timeout: Duration,
    /// Retry alerts (dtm's `AlertRetryLimit`, `AlertWebHook`); off unless a
    /// webhook is set.
    pub alert: AlertSettings,
    /// Recording of branch calls for the console's timeline (on by
    /// default, bounded; `crate::attempts`).
    pub attempts: AttemptSettings,
}

impl Default for EngineSettings {
    fn default() -> Self {
        EngineSettings {
            retry_interval: Duration::from_secs(10),
            timeout_to_fail: Duration::from_secs(35),
            request_timeout: Duration::from_secs(3),
            max_retry_interval: Duration::from_secs(60),
            trans_cron_interval: Duration::from_secs(3),
            lease_duration: Duration::from_secs(10),
            max_in_flight: 256,
            lease_batch: 32,
            shutdown_timeout: Duration::from_secs(10),
            alert: AlertSettings::default(),
            attempts: AttemptSettings::default(),
        }
    }
}

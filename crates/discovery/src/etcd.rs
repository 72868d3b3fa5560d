//! Connecting to etcd with go-zero's client settings.

use std::future::Future;
use std::time::Duration;

use etcd_client::{Client, ConnectOptions};

use crate::DiscoveryError;

/// go-zero's `DialTimeout`.
pub const DIAL_TIMEOUT: Duration = Duration::from_secs(5);

/// go-zero's per-request timeout for etcd calls (`RequestTimeout`).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);

/// How long to wait before retrying after an etcd error (go-zero: 1 s).
pub const RETRY_DELAY: Duration = Duration::from_secs(1);

/// A lazily-connecting etcd client for `hosts` (`host:port` each).
///
/// HTTP/2 keepalive pings every 5 s (etcd's minimum allowed interval, and
/// go-zero's `DialKeepAliveTime`) so that a dead server breaks our watch and
/// keepalive streams promptly instead of leaving them hanging.
pub async fn connect(hosts: &[String], account: Option<(String, String)>) -> Result<Client, DiscoveryError> {
    let mut options = ConnectOptions::new()
        .with_connect_timeout(DIAL_TIMEOUT)
        .with_keep_alive(Duration::from_secs(5), REQUEST_TIMEOUT)
        .with_keep_alive_while_idle(true);
    if let Some((user, pass)) = account {
        options = options.with_user(user, pass);
    }
    with_timeout("connect", Client::connect(hosts, Some(options))).await
}

/// Runs one etcd request with [`REQUEST_TIMEOUT`], naming it in errors.
pub(crate) async fn with_timeout<T>(
    context: &'static str,
    request: impl Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, DiscoveryError> {
    match tokio::time::timeout(REQUEST_TIMEOUT, request).await {
        Ok(result) => result.map_err(DiscoveryError::etcd(context)),
        Err(_) => Err(DiscoveryError::Timeout(context)),
    }
}

//! Registering a server in etcd the way go-zero does.
//!
//! One instance = one etcd key under a lease:
//!
//! ```text
//! order.rpc/7587869876543210123  →  172.17.0.5:9001      (lease TTL 10 s)
//! ```
//!
//! * the key is `<Key>/<lease id in decimal>` (or `<Key>/<ID>` when a fixed
//!   id is configured), the value the plain `host:port`;
//! * a background task keeps the lease alive (every TTL/3);
//! * when the lease is lost (etcd restarted, network cut longer than the TTL,
//!   lease revoked by someone else) it registers again with a **new** lease,
//!   hence a new key, retrying every second, like go-zero ≥ v1.4.4;
//! * when the key is deleted while the lease lives (an operator's
//!   `etcdctl del`), it is put back, like go-zero ≥ v1.9;
//! * [`Registration::deregister`] revokes the lease so the key disappears at
//!   once. Call it *before* draining the server on shutdown, so clients stop
//!   sending new calls while the old ones finish.
//!
//! If the process dies without deregistering, the key disappears when the
//! lease expires, at most [`LEASE_TTL_SECS`] later.

use std::time::Duration;

use etcd_client::{Client, EventType, PutOptions, WatchOptions};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};

use crate::etcd::{self, RETRY_DELAY, with_timeout};
use crate::{DiscoveryError, EtcdConf, publish_address};

/// Lease time-to-live in seconds (go-zero's `TimeToLive`).
pub const LEASE_TTL_SECS: i64 = 10;

/// A live registration; dropping it stops the keepalive (the key then
/// expires with its lease), [`Registration::deregister`] removes it at once.
#[derive(Debug)]
pub struct Registration {
    /// The published value (`ip:port` or the literal endpoint).
    value: String,
    /// The current full key; it changes when the lease is replaced.
    key: watch::Receiver<String>,
    /// Tells the background task to revoke the lease and stop.
    stop: Option<oneshot::Sender<()>>,
    /// The background task; it returns the result of the final revoke.
    task: Option<JoinHandle<Result<(), DiscoveryError>>>,
}

impl Registration {
    /// Registers a server listening on `listen_on`, publishing
    /// [`publish_address`]`(listen_on)` (so `0.0.0.0:9001` becomes
    /// `<pod or interface ip>:9001`), as go-zero's `zrpc` server does.
    ///
    /// Fails if etcd cannot be reached now: a service that cannot be found
    /// should not start (go-zero fails in `Start()` too).
    pub async fn register(conf: &EtcdConf, listen_on: &str) -> Result<Registration, DiscoveryError> {
        let value = publish_address(listen_on)?;
        Registration::register_value(conf, value).await
    }

    /// Registers `value` verbatim, without address substitution. dtm
    /// registers its configured `EndPoint` this way (`dtmservice/<lease>` →
    /// `localhost:36790`), and so does our coordinator.
    pub async fn register_value(
        conf: &EtcdConf,
        value: impl Into<String>,
    ) -> Result<Registration, DiscoveryError> {
        conf.validate()?;
        let value = value.into();
        if value.is_empty() {
            return Err(DiscoveryError::Config("cannot register an empty address".into()));
        }
        let client = etcd::connect(&conf.hosts, conf.account()).await?;
        let mut publisher =
            Publisher { client, key: conf.key.clone(), fixed_id: conf.fixed_id(), value: value.clone() };
        let lease = publisher.register_once().await?;
        tracing::info!(key = %lease.key, %value, "registered in etcd");
        let (key_tx, key_rx) = watch::channel(lease.key.clone());
        let (stop_tx, stop_rx) = oneshot::channel();
        let task = tokio::spawn(publisher.run(lease, key_tx, stop_rx));
        Ok(Registration { value, key: key_rx, stop: Some(stop_tx), task: Some(task) })
    }

    /// The full etcd key right now, e.g. `order.rpc/7587869876543210123`.
    pub fn key(&self) -> String {
        self.key.borrow().clone()
    }

    /// A receiver that sees every new key (after a re-registration).
    pub fn key_updates(&self) -> watch::Receiver<String> {
        self.key.clone()
    }

    /// The published value.
    pub fn value(&self) -> &str {
        &self.value
    }

    /// Revokes the lease (the key disappears at once) and stops the
    /// keepalive task. Returns the revoke's error, if any: the key then
    /// still disappears when its lease expires.
    pub async fn deregister(mut self) -> Result<(), DiscoveryError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.task.take() {
            Some(task) => task.await.unwrap_or_else(|err| {
                tracing::error!(%err, "registration task panicked");
                Ok(())
            }),
            None => Ok(()),
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            // Not deregistered: stop renewing, the key expires with the lease.
            task.abort();
        }
    }
}

/// One granted lease and the key put under it.
struct Lease {
    id: i64,
    key: String,
    /// Store revision of our put: the key watch starts right after it, so
    /// a delete that happens before the watch is set up is not missed.
    put_revision: i64,
}

/// Why [`Publisher::keep_alive`] returned.
enum KeepAliveEnd {
    /// [`Registration::deregister`] was called.
    Stopped,
    /// The lease or our connection to etcd is gone.
    Lost(String),
}

/// The background side of a [`Registration`].
struct Publisher {
    client: Client,
    /// Service key (`order.rpc`).
    key: String,
    /// `Etcd.ID` if configured, instead of the lease id.
    fixed_id: Option<i64>,
    /// What is published.
    value: String,
}

impl Publisher {
    /// go-zero's `makeEtcdKey`: `<key>/<id>` with the id in decimal.
    fn full_key(&self, lease_id: i64) -> String {
        format!("{}/{}", self.key, self.fixed_id.unwrap_or(lease_id))
    }

    /// Grants a lease and puts our key under it.
    async fn register_once(&mut self) -> Result<Lease, DiscoveryError> {
        let grant = with_timeout("grant lease", self.client.lease_grant(LEASE_TTL_SECS, None)).await?;
        let mut lease = Lease { id: grant.id(), key: self.full_key(grant.id()), put_revision: 0 };
        lease.put_revision = self.put(&lease).await?;
        Ok(lease)
    }

    /// Puts our key under `lease`; returns the store revision of the put.
    async fn put(&mut self, lease: &Lease) -> Result<i64, DiscoveryError> {
        let options = PutOptions::new().with_lease(lease.id);
        let put = self.client.put(lease.key.clone(), self.value.clone(), Some(options));
        let response = with_timeout("put key", put).await?;
        Ok(response.header().map_or(0, |h| h.revision()))
    }

    /// Keeps registrations alive until told to stop; then revokes.
    async fn run(
        mut self,
        mut lease: Lease,
        key_tx: watch::Sender<String>,
        mut stop: oneshot::Receiver<()>,
    ) -> Result<(), DiscoveryError> {
        let mut stale_lease = None;
        loop {
            match self.keep_alive(&lease, &mut stop).await {
                KeepAliveEnd::Stopped => {
                    let revoked = with_timeout("revoke lease", self.client.lease_revoke(lease.id)).await;
                    tracing::info!(key = %lease.key, ok = revoked.is_ok(), "deregistered from etcd");
                    return revoked.map(drop);
                }
                KeepAliveEnd::Lost(reason) => {
                    tracing::warn!(key = %lease.key, %reason, "etcd lease lost, registering again");
                    // Like go-zero: give up the old lease explicitly, so a lease
                    // that survived (e.g. etcd restarted) does not leave a twin key.
                    // If etcd is down right now, try again once we are back.
                    if with_timeout("revoke lease", self.client.lease_revoke(lease.id)).await.is_err() {
                        stale_lease = Some(lease.id);
                    }
                }
            }
            lease = loop {
                tokio::select! {
                    _ = &mut stop => return Ok(()),
                    _ = tokio::time::sleep(RETRY_DELAY) => {}
                }
                match self.register_once().await {
                    Ok(new) => break new,
                    Err(err) => {
                        tracing::warn!(%err, key = %self.key, "etcd registration failed, retrying in 1s")
                    }
                }
            };
            tracing::info!(key = %lease.key, value = %self.value, "registered in etcd again");
            if let Some(stale) = stale_lease.take() {
                // Still alive only if etcd kept it across a restart; its key
                // would otherwise linger as a twin until the lease expires.
                if let Err(err) = with_timeout("revoke lease", self.client.lease_revoke(stale)).await {
                    tracing::debug!(%err, stale, "old lease already gone");
                }
            }
            key_tx.send_replace(lease.key.clone());
        }
    }

    /// Renews `lease` every TTL/3 and re-puts its key if someone deletes it.
    async fn keep_alive(&mut self, lease: &Lease, stop: &mut oneshot::Receiver<()>) -> KeepAliveEnd {
        let (mut keeper, mut responses) =
            match with_timeout("keepalive", self.client.lease_keep_alive(lease.id)).await {
                Ok(pair) => pair,
                Err(err) => return KeepAliveEnd::Lost(err.to_string()),
            };
        let from_put = WatchOptions::new().with_start_revision(lease.put_revision + 1);
        let mut own_key =
            match with_timeout("watch own key", self.client.watch(lease.key.clone(), Some(from_put))).await {
                Ok(stream) => stream,
                Err(err) => return KeepAliveEnd::Lost(err.to_string()),
            };
        let ttl = Duration::from_secs(LEASE_TTL_SECS as u64);
        let mut ticker = tokio::time::interval(ttl / 3);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut last_renewed = Instant::now();
        loop {
            tokio::select! {
                _ = &mut *stop => return KeepAliveEnd::Stopped,
                _ = ticker.tick() => {
                    if last_renewed.elapsed() >= ttl {
                        return KeepAliveEnd::Lost("no keepalive answer for a whole TTL".into());
                    }
                    if let Err(err) = keeper.keep_alive().await {
                        return KeepAliveEnd::Lost(err.to_string());
                    }
                }
                answer = responses.message() => match answer {
                    Ok(Some(answer)) if answer.ttl() > 0 => last_renewed = Instant::now(),
                    Ok(Some(_)) => return KeepAliveEnd::Lost("lease expired or revoked".into()),
                    Ok(None) => return KeepAliveEnd::Lost("keepalive stream closed".into()),
                    Err(err) => return KeepAliveEnd::Lost(err.to_string()),
                },
                event = own_key.message() => match event {
                    Ok(Some(response)) if response.canceled() => {
                        return KeepAliveEnd::Lost(format!("watch canceled: {}", response.cancel_reason()));
                    }
                    Ok(Some(response)) => {
                        if response.events().iter().any(|e| e.event_type() == EventType::Delete) {
                            tracing::warn!(key = %lease.key, "our key was deleted while the lease lives, putting it back");
                            if let Err(err) = self.put(lease).await {
                                // Most likely the lease is gone too: start over.
                                return KeepAliveEnd::Lost(err.to_string());
                            }
                        }
                    }
                    Ok(None) => return KeepAliveEnd::Lost("watch stream closed".into()),
                    Err(err) => return KeepAliveEnd::Lost(err.to_string()),
                },
            }
        }
    }
}

//! Following the live instances of a service in etcd, as go-zero's
//! `discov.Subscriber` does.
//!
//! 1. `Get` every key with prefix `<key>/` (so `order.rpc/…` matches but
//!    `order.rpc2/…` does not) and remember the store revision;
//! 2. `Watch` the same prefix from revision + 1, so no event between the two
//!    is missed: a PUT adds or updates an instance, a DELETE (revoke, lease
//!    expiry, `etcdctl del`) removes it;
//! 3. if the watch breaks (etcd restarted, connection lost, revision
//!    compacted), wait a second, load everything again and watch anew.
//!
//! The live set is the set of distinct *values* (`host:port`): two keys with
//! the same value (an instance that re-registered with a new lease before
//! its old key expired) are one instance. Unlike go-zero we do not cut the
//! set down to a random subset of 32.

use std::collections::{BTreeSet, HashMap};

use etcd_client::{Client, EventType, GetOptions, WatchOptions};
use tokio::sync::watch;

use crate::etcd::{self, RETRY_DELAY, with_timeout};
use crate::{DiscoveryError, EtcdConf};

/// The live addresses of one service key, kept up to date by a background
/// task that stops when the `Resolver` is dropped.
#[derive(Debug)]
pub struct Resolver {
    /// The service key being followed (`order.rpc`).
    key: String,
    /// Latest address set; every change is published here.
    addresses: watch::Receiver<BTreeSet<String>>,
    /// The watch loop; aborted on drop.
    task: tokio::task::JoinHandle<()>,
}

impl Resolver {
    /// Connects to the etcd cluster of `conf` and follows `conf.key`.
    pub async fn connect(conf: &EtcdConf) -> Result<Resolver, DiscoveryError> {
        conf.validate()?;
        let client = etcd::connect(&conf.hosts, conf.account()).await?;
        Resolver::start(client, &conf.key).await
    }

    /// Follows `key` with an existing client (clients are shared per
    /// cluster). The first load happens before this returns, so an etcd
    /// that cannot be reached is an error here, not an empty set later.
    pub async fn start(client: Client, key: &str) -> Result<Resolver, DiscoveryError> {
        let mut follower = Follower { client, prefix: format!("{key}/"), instances: HashMap::new() };
        let revision = follower.load().await?;
        let (tx, rx) = watch::channel(follower.addresses());
        tracing::debug!(key, addresses = ?*rx.borrow(), "resolver loaded");
        let task = tokio::spawn(follower.run(revision, tx));
        Ok(Resolver { key: key.to_string(), addresses: rx, task })
    }

    /// The service key being followed.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// A receiver of the live address set (`changed()` fires on updates).
    pub fn addresses(&self) -> watch::Receiver<BTreeSet<String>> {
        self.addresses.clone()
    }

    /// The live addresses right now.
    pub fn current(&self) -> BTreeSet<String> {
        self.addresses.borrow().clone()
    }
}

impl Drop for Resolver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The background side of a [`Resolver`].
struct Follower {
    client: Client,
    /// `<key>/`.
    prefix: String,
    /// etcd key → value, for every instance under the prefix.
    instances: HashMap<String, String>,
}

impl Follower {
    /// Replaces the known instances by a fresh prefix `Get`; returns the
    /// store revision it saw.
    async fn load(&mut self) -> Result<i64, DiscoveryError> {
        let options = GetOptions::new().with_prefix();
        let response =
            with_timeout("get prefix", self.client.get(self.prefix.clone(), Some(options))).await?;
        self.instances = response
            .kvs()
            .iter()
            .filter_map(|kv| Some((kv.key_str().ok()?.to_string(), kv.value_str().ok()?.to_string())))
            .collect();
        Ok(response.header().map_or(0, |h| h.revision()))
    }

    /// The distinct non-empty values.
    fn addresses(&self) -> BTreeSet<String> {
        self.instances.values().filter(|v| !v.is_empty()).cloned().collect()
    }

    /// Watches, and reloads after every break, until the receiver side is gone.
    async fn run(mut self, mut revision: i64, tx: watch::Sender<BTreeSet<String>>) {
        loop {
            let reason = self.watch(revision, &tx).await;
            if tx.is_closed() {
                return;
            }
            tracing::warn!(prefix = %self.prefix, %reason, "etcd watch broken, reloading");
            revision = loop {
                tokio::time::sleep(RETRY_DELAY).await;
                match self.load().await {
                    Ok(revision) => break revision,
                    Err(err) => {
                        tracing::warn!(prefix = %self.prefix, %err, "etcd reload failed, retrying in 1s")
                    }
                }
            };
            tx.send_if_modified(|current| replace_if_changed(&self.prefix, current, self.addresses()));
        }
    }

    /// Applies watch events from `revision + 1` until the watch breaks;
    /// returns why it broke.
    async fn watch(&mut self, revision: i64, tx: &watch::Sender<BTreeSet<String>>) -> String {
        let options = WatchOptions::new().with_prefix().with_start_revision(revision + 1);
        let mut stream =
            match with_timeout("watch", self.client.watch(self.prefix.clone(), Some(options))).await {
                Ok(stream) => stream,
                Err(err) => return err.to_string(),
            };
        loop {
            let response = tokio::select! {
                response = stream.message() => response,
                _ = tx.closed() => return "resolver dropped".into(),
            };
            let response = match response {
                Ok(Some(response)) => response,
                Ok(None) => return "watch stream closed".into(),
                Err(err) => return err.to_string(),
            };
            if response.canceled() {
                return format!(
                    "watch canceled (compacted at {}): {}",
                    response.compact_revision(),
                    response.cancel_reason()
                );
            }
            for event in response.events() {
                let Some(kv) = event.kv() else { continue };
                let Ok(key) = kv.key_str() else { continue };
                match event.event_type() {
                    EventType::Put => {
                        let value = kv.value_str().unwrap_or_default().to_string();
                        self.instances.insert(key.to_string(), value);
                    }
                    EventType::Delete => {
                        self.instances.remove(key);
                    }
                }
            }
            tx.send_if_modified(|current| replace_if_changed(&self.prefix, current, self.addresses()));
        }
    }
}

/// Publishes `new` if it differs from `current` (watchers wake only on real changes).
fn replace_if_changed(prefix: &str, current: &mut BTreeSet<String>, new: BTreeSet<String>) -> bool {
    if *current == new {
        return false;
    }
    tracing::info!(prefix, addresses = ?new, "instances changed");
    *current = new;
    true
}

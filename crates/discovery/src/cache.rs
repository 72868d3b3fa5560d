//! One channel per server string, shared by everything in a process.
//!
//! dtm dials each branch server once and keeps the connection in a map
//! (`dtmgimp.GetGrpcConn`); go-zero shares one etcd client per cluster.
//! [`ChannelCache`] does both: `get("etcd://h:2379/order.rpc")` creates, on
//! first use, one etcd client for the cluster `h:2379` (shared by every key
//! on it), one [`Resolver`] for `order.rpc/`, and one balanced channel; later
//! calls return clones of that channel (cheap: a handle to the same pool).

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, PoisonError};

use etcd_client::Client;
use tokio::sync::watch;
use tonic::transport::Channel;

use crate::balance::{direct_channel, resolver_channel};
use crate::target::EtcdTarget;
use crate::{DiscoveryError, Resolver, Target, etcd};

/// A cloneable, process-wide cache of channels keyed by server string.
#[derive(Clone, Default)]
pub struct ChannelCache {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Canonical target → channel (plus the live set for etcd targets).
    channels: Mutex<HashMap<String, Cached>>,
    /// Sorted, comma-joined host list → shared etcd client.
    clients: Mutex<HashMap<String, Client>>,
    /// Sorted, comma-joined host list → etcd account (go-zero's
    /// `discov.RegisterAccount`): target URLs carry no credentials.
    accounts: Mutex<HashMap<String, (String, String)>>,
}

#[derive(Clone)]
struct Cached {
    channel: Channel,
    /// The resolver's live set, to refuse a target with no instance.
    addresses: Option<watch::Receiver<BTreeSet<String>>>,
}

impl std::fmt::Debug for ChannelCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let targets: Vec<String> = lock(&self.inner.channels).keys().cloned().collect();
        f.debug_struct("ChannelCache").field("targets", &targets).finish()
    }
}

impl ChannelCache {
    /// An empty cache.
    pub fn new() -> ChannelCache {
        ChannelCache::default()
    }

    /// Credentials for the etcd cluster `hosts` (any order); must be set
    /// before the first `get` on that cluster.
    pub fn set_account(&self, hosts: &[String], user: impl Into<String>, pass: impl Into<String>) {
        let cluster = EtcdTarget { hosts: hosts.to_vec(), key: String::new() }.cluster_id();
        lock(&self.inner.accounts).insert(cluster, (user.into(), pass.into()));
    }

    /// The channel for `server`: `host:port`, `h1:p,h2:p`, `direct:///…`,
    /// or `etcd://h1:2379,h2:2379/<key>` (the server half of
    /// [`crate::parse_server_method`]).
    ///
    /// Errors: a malformed target ([`DiscoveryError::Config`]), etcd
    /// unreachable on first use (not cached: the next call tries again), or
    /// an etcd target with no live instance ([`DiscoveryError::NoInstances`]).
    pub async fn get(&self, server: &str) -> Result<Channel, DiscoveryError> {
        let target = Target::parse(server)?;
        let canonical = match &target {
            Target::Direct(list) => format!("direct:///{}", list.join(",")),
            Target::Etcd(etcd) => format!("etcd://{}/{}", etcd.cluster_id(), etcd.key),
        };
        let cached = lock(&self.inner.channels).get(&canonical).cloned();
        let cached = match cached {
            Some(cached) => cached,
            None => {
                // Built outside the lock: a slow etcd must not block other
                // targets. Two racing builders: the first insert wins.
                let built = self.build(target).await?;
                lock(&self.inner.channels).entry(canonical).or_insert(built).clone()
            }
        };
        if let Some(addresses) = &cached.addresses
            && addresses.borrow().is_empty()
        {
            return Err(DiscoveryError::NoInstances(server.to_string()));
        }
        Ok(cached.channel)
    }

    /// The shared etcd client of a cluster, connecting on first use.
    pub async fn etcd_client(&self, hosts: &[String]) -> Result<Client, DiscoveryError> {
        let cluster = EtcdTarget { hosts: hosts.to_vec(), key: String::new() }.cluster_id();
        if let Some(client) = lock(&self.inner.clients).get(&cluster) {
            return Ok(client.clone());
        }
        let account = lock(&self.inner.accounts).get(&cluster).cloned();
        let client = etcd::connect(hosts, account).await?;
        Ok(lock(&self.inner.clients).entry(cluster).or_insert(client).clone())
    }

    async fn build(&self, target: Target) -> Result<Cached, DiscoveryError> {
        match target {
            Target::Direct(list) => Ok(Cached { channel: direct_channel(&list)?, addresses: None }),
            Target::Etcd(etcd) => {
                let client = self.etcd_client(&etcd.hosts).await?;
                let resolver = Resolver::start(client, &etcd.key).await?;
                let addresses = resolver.addresses();
                Ok(Cached { channel: resolver_channel(resolver), addresses: Some(addresses) })
            }
        }
    }
}

/// Locks a mutex, ignoring poisoning (the maps stay consistent: every
/// critical section is a single insert or lookup).
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

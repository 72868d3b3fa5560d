//! Load-balanced tonic channels over a target.
//!
//! tonic's [`Channel::balance_channel`] gives a channel plus a sender of
//! [`Change`]s; a small feeder task turns each change of a [`Resolver`]'s
//! address set into `Insert`/`Remove` changes. tonic then spreads calls over
//! the ready connections, and drops the connection of an instance whose key
//! disappeared from etcd. (tonic's balancer is tower's power-of-two-choices
//! with a constant load, so in effect each call goes to a random ready
//! instance; go-zero's `p2c_ewma` also weighs latency and in-flight calls.)
//!
//! Channels connect lazily and carry no deadline: callers set one per call.
//! While a target has no live instance, calls wait (for a ready instance or
//! the caller's deadline); [`crate::ChannelCache::get`] refuses such targets
//! up front with [`DiscoveryError::NoInstances`].

use std::collections::BTreeSet;
use std::time::Duration;

use tonic::transport::channel::Change;
use tonic::transport::{Channel, Endpoint};

use crate::etcd::{self, DIAL_TIMEOUT};
use crate::{DiscoveryError, Resolver, RpcClientConf, Target};

/// How many address changes may queue up before the feeder waits.
const CHANGE_BUFFER: usize = 64;

/// A channel balanced over every instance of `target` (any form accepted by
/// [`Target::parse`]). An etcd target gets its own etcd client and resolver,
/// which live as long as the channel (or a clone of it) does.
pub async fn balanced_channel(target: &str) -> Result<Channel, DiscoveryError> {
    match Target::parse(target)? {
        Target::Direct(addresses) => direct_channel(&addresses),
        Target::Etcd(etcd_target) => {
            let client = etcd::connect(&etcd_target.hosts, None).await?;
            let resolver = Resolver::start(client, &etcd_target.key).await?;
            Ok(resolver_channel(resolver))
        }
    }
}

/// The channel a go-zero style client configuration asks for:
/// [`RpcClientConf::build_target`], with the `Etcd` block's credentials.
///
/// With `NonBlock: false` an etcd target must have a live instance within
/// [`DIAL_TIMEOUT`], or this fails with [`DiscoveryError::NoInstances`] (go-zero
/// then refuses to start); with the default `true` the channel is returned at
/// once and finds instances as they appear.
pub async fn rpc_client_channel(conf: &RpcClientConf) -> Result<Channel, DiscoveryError> {
    let target_string = conf.build_target()?;
    let Target::Etcd(target) = Target::parse(&target_string)? else {
        return balanced_channel(&target_string).await;
    };
    // Only the Etcd block carries credentials (a Target string cannot).
    let account = conf.etcd.as_ref().filter(|e| e.target() == target_string).and_then(|e| e.account());
    let client = etcd::connect(&target.hosts, account).await?;
    let resolver = Resolver::start(client, &target.key).await?;
    if !conf.non_block {
        let mut addresses = resolver.addresses();
        let found = tokio::time::timeout(DIAL_TIMEOUT, addresses.wait_for(|set| !set.is_empty())).await;
        if !matches!(found, Ok(Ok(_))) {
            return Err(DiscoveryError::NoInstances(target_string));
        }
    }
    Ok(resolver_channel(resolver))
}

/// A lazily connecting channel over a fixed list of `host:port` addresses.
pub fn direct_channel(addresses: &[String]) -> Result<Channel, DiscoveryError> {
    let endpoints = addresses.iter().map(|a| endpoint(a)).collect::<Result<Vec<_>, _>>()?;
    match endpoints.as_slice() {
        [] => Err(DiscoveryError::Config("empty address list".into())),
        [one] => Ok(one.connect_lazy()),
        _ => Ok(Channel::balance_list(endpoints.into_iter())),
    }
}

/// A channel fed by `resolver`; the resolver is owned by the feeder task,
/// which ends when every clone of the channel is dropped.
pub fn resolver_channel(resolver: Resolver) -> Channel {
    let (channel, changes) = Channel::balance_channel::<String>(CHANGE_BUFFER);
    tokio::spawn(async move {
        let mut addresses = resolver.addresses();
        let mut known = BTreeSet::new();
        loop {
            let wanted = addresses.borrow_and_update().clone();
            let gone: Vec<String> = known.difference(&wanted).cloned().collect();
            let new: Vec<String> = wanted.difference(&known).cloned().collect();
            for gone in gone {
                tracing::debug!(address = %gone, key = resolver.key(), "removing instance");
                known.remove(&gone);
                if changes.send(Change::Remove(gone)).await.is_err() {
                    return;
                }
            }
            for new in new {
                match endpoint(&new) {
                    Ok(endpoint) => {
                        tracing::debug!(address = %new, key = resolver.key(), "adding instance");
                        known.insert(new.clone());
                        if changes.send(Change::Insert(new, endpoint)).await.is_err() {
                            return;
                        }
                    }
                    Err(err) => tracing::warn!(%err, key = resolver.key(), "ignoring a bad address in etcd"),
                }
            }
            tokio::select! {
                changed = addresses.changed() => if changed.is_err() { return },
                _ = changes.closed() => return,
            }
        }
    });
    channel
}

/// The tonic endpoint for a `host:port` (plain HTTP/2, as go-zero and dtm
/// dial with insecure credentials).
pub fn endpoint(address: &str) -> Result<Endpoint, DiscoveryError> {
    let uri = if address.contains("://") { address.to_string() } else { format!("http://{address}") };
    let endpoint = Endpoint::from_shared(uri)
        .map_err(|source| DiscoveryError::Endpoint { address: address.to_string(), source })?;
    Ok(endpoint
        .connect_timeout(DIAL_TIMEOUT)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(20))
        .keep_alive_timeout(Duration::from_secs(5)))
}

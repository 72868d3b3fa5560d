//! The gRPC channels of the branch caller, bounded.
//!
//! One tonic `Channel` per `host:port` named in a branch URL. Without a
//! bound, every distinct host ever submitted would keep a map entry (and a
//! connection task) for the life of the process: a slow leak that anyone
//! able to submit can speed up. The map keeps at most `capacity` channels
//! and drops the least recently used one to make room.
//!
//! Hand-written rather than a crate: a few dozen lines, a lookup per branch
//! call under a mutex that is never held across an await, and eviction only
//! when a new server appears while the map is full (a linear scan, fine for
//! a few hundred entries). Dropping a `Channel` here does not break calls
//! already holding a clone: they share the connection until they finish.

use std::collections::HashMap;

use tonic::transport::Channel;

/// A bounded map `server → Channel`, least recently used evicted first.
#[derive(Debug)]
pub(super) struct ChannelMap {
    capacity: usize,
    /// Bumped on every hit and insert: the recency order.
    clock: u64,
    entries: HashMap<String, (Channel, u64)>,
}

impl ChannelMap {
    /// An empty map keeping at most `capacity` (at least 1) channels.
    pub(super) fn new(capacity: usize) -> ChannelMap {
        ChannelMap { capacity: capacity.max(1), clock: 0, entries: HashMap::new() }
    }

    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    /// The channel of `server`, marked as just used.
    pub(super) fn get(&mut self, server: &str) -> Option<Channel> {
        let now = self.tick();
        let (channel, used) = self.entries.get_mut(server)?;
        *used = now;
        Some(channel.clone())
    }

    /// Adds (or replaces) the channel of `server`, evicting the least
    /// recently used entry when the map is full.
    pub(super) fn insert(&mut self, server: &str, channel: Channel) {
        if !self.entries.contains_key(server) && self.entries.len() >= self.capacity {
            let oldest = self.entries.iter().min_by_key(|(_, (_, used))| *used).map(|(k, _)| k.clone());
            if let Some(oldest) = oldest {
                tracing::debug!(server = %oldest, capacity = self.capacity, "gRPC channel evicted (least recently used)");
                self.entries.remove(&oldest);
            }
        }
        let now = self.tick();
        self.entries.insert(server.to_string(), (channel, now));
    }

    /// Channels kept now.
    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }

    #[cfg(test)]
    fn contains(&self, server: &str) -> bool {
        self.entries.contains_key(server)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::transport::Endpoint;

    fn channel(server: &str) -> Channel {
        Endpoint::from_shared(format!("http://{server}")).unwrap().connect_lazy()
    }

    #[tokio::test]
    async fn keeps_at_most_capacity_and_evicts_the_least_recently_used() {
        let mut map = ChannelMap::new(3);
        for i in 0..3 {
            let server = format!("10.0.0.{i}:9000");
            map.insert(&server, channel(&server));
        }
        assert_eq!(map.len(), 3);
        // Touch .0: .1 becomes the least recently used.
        assert!(map.get("10.0.0.0:9000").is_some());
        map.insert("10.0.0.3:9000", channel("10.0.0.3:9000"));
        assert_eq!(map.len(), 3);
        assert!(!map.contains("10.0.0.1:9000"), "the least recently used goes");
        assert!(
            map.contains("10.0.0.0:9000") && map.contains("10.0.0.2:9000") && map.contains("10.0.0.3:9000")
        );
        // Replacing an entry evicts nothing.
        map.insert("10.0.0.2:9000", channel("10.0.0.2:9000"));
        assert_eq!(map.len(), 3);
        assert!(map.contains("10.0.0.0:9000"));
        // A thousand distinct servers later, still three.
        for i in 0..1000 {
            let server = format!("10.1.{}.{}:9000", i / 256, i % 256);
            map.insert(&server, channel(&server));
            assert!(map.len() <= 3);
        }
        assert!(map.get("10.0.0.0:9000").is_none());
        assert_eq!(ChannelMap::new(0).capacity, 1);
    }
}

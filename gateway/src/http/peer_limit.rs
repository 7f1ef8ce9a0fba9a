//! Connections per client address (`remote_mcp.max_connections_per_peer`).
//!
//! A count per [`ClientKey`] (an IPv4 address or an IPv6 /64), taken by a [`PeerGuard`] and
//! given back when the guard drops. The listener takes one per accepted connection from an
//! untrusted peer, held until the connection closes (an upgraded relay websocket included);
//! behind a trusted proxy, `http::request_limits` takes one per request in progress for the
//! forwarded client address. Entries exist only while a guard holds them, so the map is
//! bounded by the connections and requests the other limits allow.

use crate::http::net::ClientKey;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

#[derive(Debug)]
pub struct PeerLimit {
    limit: usize,
    counts: Mutex<HashMap<ClientKey, usize>>,
}

impl PeerLimit {
    pub fn new(limit: usize) -> Arc<PeerLimit> {
        Arc::new(PeerLimit {
            limit: limit.max(1),
            counts: Mutex::new(HashMap::new()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<ClientKey, usize>> {
        // Counters only, each update whole under the lock.
        self.counts.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// One more for `key`, or `None` when it already holds `limit`.
    pub fn try_acquire(self: &Arc<Self>, key: ClientKey) -> Option<PeerGuard> {
        let mut counts = self.lock();
        let count = counts.entry(key).or_insert(0);
        if *count >= self.limit {
            return None;
        }
        *count += 1;
        Some(PeerGuard {
            owner: Arc::clone(self),
            key,
        })
    }

    /// What `key` holds now.
    pub fn count(&self, key: ClientKey) -> usize {
        self.lock().get(&key).copied().unwrap_or(0)
    }
}

/// One connection (or proxied request) of a client address.
#[derive(Debug)]
pub struct PeerGuard {
    owner: Arc<PeerLimit>,
    key: ClientKey,
}

impl Drop for PeerGuard {
    fn drop(&mut self) {
        let mut counts = self.owner.lock();
        if let Some(count) = counts.get_mut(&self.key) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                counts.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(text: &str) -> ClientKey {
        ClientKey::of(text.parse().unwrap())
    }

    #[test]
    fn each_address_gets_its_limit_and_entries_go_away() {
        let limit = PeerLimit::new(2);
        let a1 = limit.try_acquire(key("192.0.2.1")).unwrap();
        let _a2 = limit.try_acquire(key("192.0.2.1")).unwrap();
        assert!(limit.try_acquire(key("192.0.2.1")).is_none());
        // Another address, and another /64, are not affected.
        let _b = limit.try_acquire(key("192.0.2.2")).unwrap();
        let v6 = limit.try_acquire(key("2001:db8:0:1::1")).unwrap();
        let _v6b = limit.try_acquire(key("2001:db8:0:1::2")).unwrap();
        // The same /64 under another interface id is the same client.
        assert!(limit.try_acquire(key("2001:db8:0:1::3")).is_none());
        assert!(limit.try_acquire(key("2001:db8:0:2::1")).is_some());
        drop(a1);
        assert_eq!(limit.count(key("192.0.2.1")), 1);
        assert!(limit.try_acquire(key("192.0.2.1")).is_some());
        drop(v6);
        assert_eq!(limit.count(key("2001:db8:0:1::9")), 1);
    }

    #[test]
    fn the_map_holds_only_addresses_with_guards() {
        let limit = PeerLimit::new(1);
        for i in 0..=255u8 {
            drop(limit.try_acquire(key(&format!("198.51.100.{i}"))).unwrap());
        }
        assert!(limit.lock().is_empty());
        // A refused attempt leaves nothing behind either.
        let held = limit.try_acquire(key("203.0.113.1")).unwrap();
        assert!(limit.try_acquire(key("203.0.113.1")).is_none());
        drop(held);
        assert!(limit.lock().is_empty());
    }
}

//! The per-call pairing lookup, served from memory while the pairings are unchanged.
//!
//! Every relayed call needs the caller's active pairings. They change rarely (a pairing made,
//! revoked, or ended by a key rotation), but a revoke must count from the very next call,
//! also when the `ibkr-gateway pairing revoke` CLI makes it from another process. So:
//!
//! - **The pairings generation.** A one-row table, `pairings_generation`, holds a counter that
//!   SQLite triggers on `pairings` raise on every INSERT, UPDATE and DELETE, in the writer's
//!   own transaction, whichever process and code path writes. (`PRAGMA data_version` is no
//!   use as the key: the audit trail commits through its own connection on every call.)
//! - **One read per call.** A lookup reads the generation on a small read connection of its
//!   own (its own mutex, a cached prepared statement, WAL: a reader never waits for a writer),
//!   directly on the async thread: a one-row read by primary key, microseconds.
//! - **Entries tagged with the generation they were read at.** A miss reads the user's active
//!   pairings and the generation in one read transaction (one snapshot) on the blocking pool,
//!   and stores them tagged with that generation. An entry is served only when its tag equals
//!   the generation just read. The generation only grows and every change of `pairings`
//!   raises it, so an equal tag means the entry is what the table holds now.
//! - **Races.** A lookup that read its snapshot before a revoke and stores its entry after it
//!   stores an entry tagged with the pre-revoke generation: never served again, since every
//!   later lookup reads the post-revoke one. An entry never replaces one read at a newer
//!   generation.
//! - **Writes from this process** (`complete_pairing`, `revoke_pairing`,
//!   `revoke_all_for_key_rotation`) also empty the cache before they return.
//! - **Bounded.** At most [`MAX_CACHED_USERS`] users; when full, entries from older
//!   generations go first, then arbitrary ones (a dropped entry only costs one read).
//!
//! Gateway pairings do not expire by time; anything time-dependent is decided from the
//! records by the caller, never cached as a verdict.

use super::records::PairingRecord;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// How many users' pairings are kept in memory.
pub const MAX_CACHED_USERS: usize = 10_000;

/// What the per-call lookup needs to know about a user's pairings.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UserPairings {
    /// The active pairings, newest first.
    pub active: Vec<PairingRecord>,
    /// When there is none: the time the newest pairing was revoked, if a gateway key rotation
    /// revoked it.
    pub ended_by_key_rotation: Option<i64>,
}

struct Entry {
    generation: i64,
    pairings: Arc<UserPairings>,
}

/// Users' pairings, each tagged with the pairings generation it was read at.
pub(crate) struct PairingCache {
    entries: Mutex<HashMap<String, Entry>>,
    capacity: usize,
}

impl PairingCache {
    pub(crate) fn new(capacity: usize) -> PairingCache {
        PairingCache {
            entries: Mutex::new(HashMap::new()),
            capacity: capacity.max(1),
        }
    }

    /// The entry for `user_id`, only if it was read at `generation` (the current one).
    pub(crate) fn get(&self, user_id: &str, generation: i64) -> Option<Arc<UserPairings>> {
        let entries = self.entries.lock().ok()?;
        entries
            .get(user_id)
            .filter(|entry| entry.generation == generation)
            .map(|entry| Arc::clone(&entry.pairings))
    }

    /// Stores what was read at `generation`, unless an entry read at a newer generation is
    /// already there.
    pub(crate) fn insert(&self, user_id: &str, generation: i64, pairings: Arc<UserPairings>) {
        let Ok(mut entries) = self.entries.lock() else {
            return;
        };
        if let Some(existing) = entries.get_mut(user_id) {
            if existing.generation <= generation {
                *existing = Entry {
                    generation,
                    pairings,
                };
            }
            return;
        }
        if entries.len() >= self.capacity {
            entries.retain(|_, entry| entry.generation >= generation);
            if entries.len() >= self.capacity
                && let Some(victim) = entries.keys().next().cloned()
            {
                entries.remove(&victim);
            }
        }
        entries.insert(
            user_id.to_string(),
            Entry {
                generation,
                pairings,
            },
        );
    }

    /// Forgets everything (after a write to `pairings` from this process).
    pub(crate) fn clear(&self) {
        if let Ok(mut entries) = self.entries.lock() {
            entries.clear();
        }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries
            .lock()
            .map(|entries| entries.len())
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn some(ended: i64) -> Arc<UserPairings> {
        Arc::new(UserPairings {
            active: Vec::new(),
            ended_by_key_rotation: Some(ended),
        })
    }

    #[test]
    fn an_entry_is_served_only_at_the_generation_it_was_read_at() {
        let cache = PairingCache::new(8);
        cache.insert("alice", 3, some(1));
        assert_eq!(cache.get("alice", 3), Some(some(1)));
        assert_eq!(cache.get("alice", 4), None);
        assert_eq!(cache.get("bob", 3), None);
    }

    #[test]
    fn a_late_insert_from_an_older_snapshot_never_replaces_a_newer_entry() {
        let cache = PairingCache::new(8);
        cache.insert("alice", 5, some(5));
        cache.insert("alice", 4, some(4));
        assert_eq!(cache.get("alice", 5), Some(some(5)));
        // Stored alone, the old snapshot's entry is still never served at the newer one.
        cache.clear();
        cache.insert("alice", 4, some(4));
        assert_eq!(cache.get("alice", 5), None);
    }

    #[test]
    fn the_cache_is_bounded_and_drops_stale_entries_first() {
        let cache = PairingCache::new(3);
        cache.insert("a", 1, some(1));
        cache.insert("b", 2, some(2));
        cache.insert("c", 2, some(2));
        cache.insert("d", 2, some(2));
        assert_eq!(cache.len(), 3);
        assert_eq!(cache.get("a", 1), None, "the stale entry went first");
        for user in 0..100 {
            cache.insert(&format!("user-{user}"), 2, some(2));
        }
        assert_eq!(cache.len(), 3);
    }
}

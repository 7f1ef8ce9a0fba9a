//! The general connection pool (`remote_mcp.max_connections`), and which connection gives up
//! its slot when the pool is full.
//!
//! Every accepted connection holds a [`Slot`] until it closes or upgrades to `/relay` (relay
//! websockets have a budget of their own, `http::request_limits`). A slot is *busy* while a
//! request is in progress on it, from its parsed head until its response body has ended (a
//! streamed response included), and *idle* otherwise: waiting for its first request head, or
//! between keep-alive requests.
//!
//! When the pool is full, a new connection takes the slot of the connection that has been
//! idle longest, and that connection is told to close ([`Slot::eviction`]). A busy connection
//! is never evicted; only when every slot is busy is the new connection refused. So sockets
//! that send nothing, or trickle a request head, can never keep out a client that sends its
//! request at once (a health check, a sidecar reconnecting, an agent): to push a newcomer out
//! before its head arrives, a flood would have to open a whole pool of connections within the
//! newcomer's round trip.
//!
//! The victim's slot passes to the newcomer at once; the victim's socket closes moments later,
//! when its task sees the eviction (`http::server` bounds that). A request whose head the
//! victim had already read when it was evicted is not run: [`Slot::begin_request`] says no.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use tokio_util::sync::CancellationToken;

/// What [`Pool::admit`] did.
#[derive(Debug)]
pub enum Admission {
    /// A free slot.
    Free(Slot),
    /// The pool was full: the longest-idle connection was evicted and this one has its slot.
    Evicted(Slot),
    /// The pool is full and every connection in it is busy.
    Full,
}

#[derive(Debug)]
struct Held {
    /// Requests in progress (HTTP/1.1 runs one at a time; a count is robust anyway).
    busy: usize,
    /// This slot's key in [`State::idle`] while it is idle.
    idle_since: Option<u64>,
    eviction: CancellationToken,
}

#[derive(Debug, Default)]
struct State {
    /// Slot ids and idle sequence numbers, from one counter.
    next: u64,
    held: HashMap<u64, Held>,
    /// Idle slots, longest idle first: the sequence number at which each became idle -> id.
    idle: BTreeMap<u64, u64>,
}

impl State {
    fn tick(&mut self) -> u64 {
        self.next += 1;
        self.next
    }

    fn set_idle(&mut self, id: u64) {
        let seq = self.tick();
        if let Some(held) = self.held.get_mut(&id) {
            held.idle_since = Some(seq);
            self.idle.insert(seq, id);
        }
    }

    fn remove(&mut self, id: u64) -> Option<Held> {
        let held = self.held.remove(&id)?;
        if let Some(seq) = held.idle_since {
            self.idle.remove(&seq);
        }
        Some(held)
    }
}

#[derive(Debug)]
pub struct Pool {
    capacity: usize,
    state: Mutex<State>,
}

impl Pool {
    pub fn new(capacity: usize) -> Arc<Pool> {
        Arc::new(Pool {
            capacity: capacity.max(1),
            state: Mutex::new(State::default()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Bookkeeping only, and every update completes under the lock: keep using it after a
        // panic elsewhere rather than refusing every connection.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A slot for a new connection (idle until its first request), evicting the longest-idle
    /// connection when the pool is full.
    pub fn admit(self: &Arc<Self>) -> Admission {
        let mut state = self.lock();
        let evicted = if state.held.len() < self.capacity {
            false
        } else {
            let Some((_, victim)) = state.idle.pop_first() else {
                return Admission::Full;
            };
            if let Some(held) = state.held.remove(&victim) {
                held.eviction.cancel();
            }
            true
        };
        let id = state.tick();
        let eviction = CancellationToken::new();
        state.held.insert(
            id,
            Held {
                busy: 0,
                idle_since: None,
                eviction: eviction.clone(),
            },
        );
        state.set_idle(id);
        drop(state);
        let slot = Slot {
            pool: Arc::clone(self),
            id,
            eviction,
        };
        if evicted {
            Admission::Evicted(slot)
        } else {
            Admission::Free(slot)
        }
    }

    /// Slots held (busy or idle).
    pub fn held(&self) -> usize {
        self.lock().held.len()
    }
}

/// A connection's place in the pool; dropping it frees the place.
#[derive(Debug)]
pub struct Slot {
    pool: Arc<Pool>,
    id: u64,
    eviction: CancellationToken,
}

impl Slot {
    /// Cancelled when this connection has been evicted: it must close.
    pub fn eviction(&self) -> CancellationToken {
        self.eviction.clone()
    }

    /// Marks a request in progress until the returned guard drops; `None` when the
    /// connection has been evicted (the request must not run).
    pub fn begin_request(&self) -> Option<Busy> {
        let mut state = self.pool.lock();
        let held = state.held.get_mut(&self.id)?;
        held.busy += 1;
        if let Some(seq) = held.idle_since.take() {
            state.idle.remove(&seq);
        }
        Some(Busy {
            pool: Arc::clone(&self.pool),
            id: self.id,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.pool.lock().remove(self.id);
    }
}

/// A request in progress on a slot; the slot turns idle again when the last one drops.
#[derive(Debug)]
pub struct Busy {
    pool: Arc<Pool>,
    id: u64,
}

impl Drop for Busy {
    fn drop(&mut self) {
        let mut state = self.pool.lock();
        let Some(held) = state.held.get_mut(&self.id) else {
            // The slot was released (connection closed or upgraded) meanwhile.
            return;
        };
        held.busy = held.busy.saturating_sub(1);
        if held.busy == 0 {
            state.set_idle(self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(admission: Admission) -> Slot {
        match admission {
            Admission::Free(slot) | Admission::Evicted(slot) => slot,
            Admission::Full => panic!("no slot"),
        }
    }

    fn evicting(admission: Admission) -> Slot {
        match admission {
            Admission::Evicted(slot) => slot,
            other => panic!("expected an eviction, got {other:?}"),
        }
    }

    #[test]
    fn a_full_pool_evicts_the_longest_idle_connection_and_never_a_busy_one() {
        let pool = Pool::new(3);
        let oldest = slot(pool.admit());
        let busy_one = slot(pool.admit());
        let newer = slot(pool.admit());
        let request = busy_one.begin_request().unwrap();
        // The busy connection was admitted before `newer`, but only idle ones may go, and
        // `oldest` has been idle longest.
        let first = evicting(pool.admit());
        assert!(oldest.eviction().is_cancelled());
        assert!(!busy_one.eviction().is_cancelled());
        assert!(!newer.eviction().is_cancelled());
        assert_eq!(pool.held(), 3);
        // An evicted connection may not start a request.
        assert!(oldest.begin_request().is_none());
        // Dropping the evicted slot later frees nothing (its place was handed over).
        drop(oldest);
        assert_eq!(pool.held(), 3);

        // Next in line: `newer` (idle since its admission), then `first`; never `busy_one`.
        let second = evicting(pool.admit());
        assert!(newer.eviction().is_cancelled());
        assert!(!first.eviction().is_cancelled());
        let third = evicting(pool.admit());
        assert!(first.eviction().is_cancelled());
        assert!(!busy_one.eviction().is_cancelled());

        // A request ending makes its connection idle again, the most recently idle one.
        drop(request);
        let _fourth = evicting(pool.admit());
        assert!(second.eviction().is_cancelled());
        let _fifth = evicting(pool.admit());
        assert!(third.eviction().is_cancelled());
        assert!(!busy_one.eviction().is_cancelled());
        let _sixth = evicting(pool.admit());
        assert!(busy_one.eviction().is_cancelled());
    }

    #[test]
    fn a_pool_of_busy_connections_is_full() {
        let pool = Pool::new(2);
        let a = slot(pool.admit());
        let b = slot(pool.admit());
        let _ra = a.begin_request().unwrap();
        let _rb = b.begin_request().unwrap();
        assert!(matches!(pool.admit(), Admission::Full));
        assert!(!a.eviction().is_cancelled() && !b.eviction().is_cancelled());
        // A closed connection frees its slot.
        drop(b);
        assert!(matches!(pool.admit(), Admission::Free(_)));
    }

    #[test]
    fn idle_order_follows_the_end_of_each_request() {
        let pool = Pool::new(2);
        let a = slot(pool.admit());
        let b = slot(pool.admit());
        // `a` serves a request after `b` became idle: `b` is now the longest idle.
        drop(a.begin_request().unwrap());
        assert!(matches!(pool.admit(), Admission::Evicted(_)));
        assert!(b.eviction().is_cancelled());
        assert!(!a.eviction().is_cancelled());
    }

    #[test]
    fn released_slots_leave_no_trace() {
        let pool = Pool::new(1);
        for _ in 0..1000 {
            let slot = slot(pool.admit());
            let request = slot.begin_request().unwrap();
            // The slot can go first (an upgraded connection); the guard then finds nothing.
            drop(slot);
            drop(request);
        }
        let state = pool.lock();
        assert!(state.held.is_empty());
        assert!(state.idle.is_empty());
    }
}

//! The idle connections of one worker's pool to one upstream, for both HTTP/1.1 paths
//! ([`super::http1`], [`super::fast`]): a list taken from its end (the connection
//! returned last, the warmest: LIFO), and the sweep that closes a connection left unused
//! for [`IDLE_TIMEOUT`].
//!
//! The sweep keeps its own clock, a count of sweeps, so that no clock is read per
//! request: a connection records the count when it is put back, and a sweep closes those
//! that stayed in the list through [`IDLE_SWEEPS`] sweeps (so 90–135 s unused).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// How long an idle connection is kept at least.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// How often idle connections are looked at: one idle for [`IDLE_TIMEOUT`] is closed at
/// the next look.
pub const IDLE_SWEEP: Duration = Duration::from_secs(45);
/// Looks (of [`IDLE_SWEEP`]) a connection must have stayed idle through to be closed.
pub(super) const IDLE_SWEEPS: u64 = IDLE_TIMEOUT.as_secs().div_ceil(IDLE_SWEEP.as_secs());

/// What a pool does with a listed connection when it wants one.
pub(super) enum Pick {
    /// Use it.
    Take,
    /// Close it (it closed, or bytes wait on it), and look further.
    Close,
    /// Leave it listed (still busy), and look further.
    Skip,
}

/// What a sweep finds a listed connection to be.
pub(super) enum Seen {
    /// Unused since it was put back: closed once it stayed so for long enough.
    Idle,
    /// Still streaming a response body: not idle, its clock starts again.
    Busy,
    /// Closed already: dropped from the list.
    Closed,
}

/// The list of one pool.
pub(super) struct IdleList<C> {
    entries: Mutex<Vec<Entry<C>>>,
    /// Sweeps so far (the list's clock).
    sweeps: AtomicU64,
}

struct Entry<C> {
    conn: C,
    /// The sweep count when it was put back (or last seen busy).
    since: u64,
}

impl<C> IdleList<C> {
    pub(super) fn new() -> Self {
        IdleList { entries: Mutex::new(Vec::new()), sweeps: AtomicU64::new(0) }
    }

    fn entries(&self) -> MutexGuard<'_, Vec<Entry<C>>> {
        // A panic while the lock was held leaves a list that is still a list.
        self.entries.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Puts `conn` back, last.
    pub(super) fn put(&self, conn: C) {
        let since = self.sweeps.load(Ordering::Relaxed);
        self.entries().push(Entry { conn, since });
    }

    /// The last-returned connection that `pick` takes; those it closes on the way are
    /// dropped, those it skips stay.
    pub(super) fn take(&self, mut pick: impl FnMut(&mut C) -> Pick) -> Option<C> {
        let mut entries = self.entries();
        let mut at = entries.len();
        while at > 0 {
            at -= 1;
            match pick(&mut entries[at].conn) {
                Pick::Take => return Some(entries.remove(at).conn),
                Pick::Close => drop(entries.remove(at)),
                Pick::Skip => {}
            }
        }
        None
    }

    /// One sweep: drops the connections `seen` finds closed, and those idle through
    /// [`IDLE_SWEEPS`] sweeps.
    pub(super) fn sweep(&self, mut seen: impl FnMut(&mut C) -> Seen) {
        let now = self.sweeps.fetch_add(1, Ordering::Relaxed) + 1;
        self.entries().retain_mut(|entry| match seen(&mut entry.conn) {
            Seen::Closed => false,
            Seen::Busy => {
                entry.since = now;
                true
            }
            Seen::Idle => now - entry.since <= IDLE_SWEEPS,
        });
    }

    /// Connections in the list now (tests).
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.entries().len()
    }

    /// Calls `each` with every listed connection (tests).
    #[cfg(test)]
    pub(super) fn for_each(&self, mut each: impl FnMut(&mut C)) {
        self.entries().iter_mut().for_each(|entry| each(&mut entry.conn));
    }
}

/// Runs `sweep` on `pool` every [`IDLE_SWEEP`] on the current runtime, if any, for as
/// long as the pool lives (the task holds it weakly and ends when it is dropped).
pub(super) fn spawn_sweeps<P: Send + Sync + 'static>(pool: &Arc<P>, sweep: fn(&P)) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
    let pool = Arc::downgrade(pool);
    runtime.spawn(async move {
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + IDLE_SWEEP, IDLE_SWEEP);
        loop {
            tick.tick().await;
            match pool.upgrade() {
                Some(pool) => sweep(&pool),
                None => return,
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_returned_is_taken_closed_ones_dropped_and_skipped_ones_kept() {
        let list = IdleList::new();
        for conn in [1, 2, 3, 4] {
            list.put(conn);
        }
        // 4 is busy, 3 closed: 2 is taken, 4 stays, 3 is gone.
        let taken = list.take(|c| match *c {
            4 => Pick::Skip,
            3 => Pick::Close,
            _ => Pick::Take,
        });
        assert_eq!(taken, Some(2));
        assert_eq!(list.len(), 2);
        assert_eq!(list.take(|_| Pick::Take), Some(4));
        assert_eq!(list.take(|_| Pick::Take), Some(1));
        assert_eq!(list.take(|_| Pick::Take), None);
    }

    #[test]
    fn a_connection_idle_through_the_sweeps_is_closed_and_a_busy_one_restarts_its_clock() {
        let list = IdleList::new();
        list.put("idle");
        list.put("busy");
        for sweep in 1..=IDLE_SWEEPS {
            list.sweep(|c| if *c == "busy" { Seen::Busy } else { Seen::Idle });
            assert_eq!(list.len(), 2, "after {sweep} sweeps");
        }
        list.sweep(|c| if *c == "busy" { Seen::Busy } else { Seen::Idle });
        assert_eq!(list.take(|_| Pick::Take), Some("busy"));
        assert_eq!(list.len(), 0);
        list.put("closed");
        list.sweep(|_| Seen::Closed);
        assert_eq!(list.len(), 0);
    }
}

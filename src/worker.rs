//! Which proxy worker thread the caller runs on: per-worker state (upstream pools, Redis
//! connections, limiter batches) is indexed by it, without locks shared across threads.

use std::cell::Cell;

thread_local! {
    /// This thread's index, on a worker thread.
    static WORKER: Cell<Option<usize>> = const { Cell::new(None) };
}

/// The index (`0..server.workers`) of the worker running the caller, if it runs on one.
pub fn current() -> Option<usize> {
    WORKER.with(Cell::get)
}

/// Marks the calling thread as worker `index` (the server does this once per worker).
pub(crate) fn enter(index: usize) {
    WORKER.with(|w| w.set(Some(index)));
}

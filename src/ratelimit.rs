//! Plan rate limits (docs/reference.md §4.4): the [`Limit`] of a plan, the limiter's [`Decision`], and
//! the response headers every request that reached the limiter carries.
//!
//! The window is sliding and exact: it is split into [`SUB_WINDOWS`] sub-windows with one
//! counter each, and the oldest, partly expired sub-window is counted whole, so the
//! estimate can only err on the side of refusing. In any span of one window at most
//! `requests` are admitted; a client at saturation gets at least
//! `SUB_WINDOWS / (SUB_WINDOWS + 1)` of the limit.
//!
//! # The algorithm
//!
//! Let `W` be the window in milliseconds and `S = W / SUB_WINDOWS` the length of a
//! sub-window. Sub-window `k` is the interval `[k·S, (k+1)·S)` of milliseconds since the
//! Unix epoch (aligned to multiples of `S`, so every replica and the store agree on the
//! boundaries). At time `now` the *count* is the sum of the counters of every sub-window
//! that overlaps `[now − W, now]`: sub-windows `⌊(now − W)/S⌋ ..= ⌊now/S⌋`, which is
//! `SUB_WINDOWS + 1` of them, the oldest partly expired but counted whole.
//!
//! A request of `cost` is admitted iff `count + cost ≤ requests`; an admitted request adds
//! `cost` to the counter of the current sub-window `⌊now/S⌋`. A refused request adds
//! nothing, so a client that keeps retrying is never locked out (the trap of counting
//! refusals).
//!
//! **At most `requests` in any span of length `W`.** Take any closed span `[a, a + W]` and
//! let `t` be the time of the last admission in it. Every admission in the span happened
//! at a time in `[a, t] ⊆ [t − W, t]` (because `a ≥ t − W`), so it was recorded in a
//! sub-window with index between `⌊(t − W)/S⌋` and `⌊t/S⌋`, exactly the sub-windows the
//! check at `t` summed. Admissions are serialised (one lock per tenant, one script in the
//! store), so that sum included every earlier admission of the span, and the check at `t`
//! admitted only because `sum + cost ≤ requests`. Hence the span holds at most
//! `requests`. Counting the oldest sub-window whole is what makes this hold: it may count
//! up to `S` of requests older than `now − W`, which only ever refuses more.
//!
//! **With leases** ([`lease`]: the shared limiter's busy tenants) the same argument holds
//! with grants in place of admissions. A grant of `g` units at time `t` is decided like an
//! admission of cost `g` (counted at `t` in sub-window `⌊t/S⌋`, only if the sum plus `g`
//! fits), and its units are admitted only at times in that same sub-window (the replica
//! ends the lease early, never late). Take a span `[a, a + W]` and the last grant, at
//! `t*`, whose units were admitted in it: `t* ≤ a + W`, so the check at `t*` summed every
//! sub-window from `⌊(t* − W)/S⌋ ≤ ⌊a/S⌋` on, which holds every grant admitted from in the
//! span (each lies in a sub-window that meets the span); it fitted, so those grants, and
//! with them the admissions, are at most `requests`. A hand-back lowers a counter by units
//! of that sub-window's own leases that were never admitted, after the lease ended: every
//! counter stays at least what was admitted in its sub-window, and the check at `t*` still
//! saw at least that.
//!
//! **At least `SUB_WINDOWS / (SUB_WINDOWS + 1)` of the limit at saturation.** The count
//! covers at most `W + S = W·(SUB_WINDOWS + 1)/SUB_WINDOWS`, so a client that always has
//! a request waiting is refused only while the last `W + S` hold more than
//! `requests − cost`: over a long run it is admitted about `requests` per `W + S`, i.e.
//! `20/21` of the limit (each aligned run of 21 sub-windows ends with a check that sums
//! exactly those 21, and the client fills them up to `requests − cost + 1` at least).
//!
//! Memory is `SUB_WINDOWS + 1` counters per tenant whatever the limit, unlike a log of
//! every request.
//!
//! # Several limits
//!
//! A plan may have several limits (`limits = [...]`): sliding windows as above, and
//! calendar quotas (`period = "day" | "month"`), one count per UTC day or month (from its
//! `reset_day`), started from nothing when the next period begins. A request is admitted
//! only if every limit has room for its cost, and then counted in all of them; a refusal
//! is counted in none, decided in one step (one critical section in the local limiter,
//! one script call in Redis). The argument above holds for each window on its own: every
//! admission, and every lease's units, is counted in each window's sub-window before it
//! is admitted, and each window's lease ends before that window's sub-window does. A quota
//! admits at most `requests` per period for the same reason: whatever a period admitted
//! was counted in that period's count first.

pub mod concurrency;
mod decision;
pub mod front;
pub mod lease;
pub mod local;
pub mod redis;
mod scope;

pub use crate::policy::{Limit, LimitKind, Rule, SUB_WINDOWS};
pub use decision::{
    Decision, PlanHeaders, RATELIMIT, RATELIMIT_POLICY, X_RATELIMIT_LIMIT, X_RATELIMIT_REMAINING, X_RATELIMIT_RESET,
};
pub use local::LocalLimiter;
pub use scope::KeyScope;

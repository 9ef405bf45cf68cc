//! What usage counts: a tenant's (and each key's) admitted requests, their cost and
//! refusals by reason on one UTC day, and how counts add up.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

/// Milliseconds in a day: usage days are UTC days since the Unix epoch.
const DAY_MS: u64 = 86_400_000;

/// The UTC day (days since 1970-01-01) of `millis` since the epoch.
pub fn day_of(millis: u64) -> i64 {
    i64::try_from(millis / DAY_MS).unwrap_or(i64::MAX)
}

/// Counts of one tenant, or one key, on one day.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Counts {
    /// Admitted requests.
    #[serde(default)]
    pub requests: u64,
    /// Their summed route `cost` (what the plan's limits counted).
    #[serde(default)]
    pub cost: u64,
    /// Refused requests, by the access line's `decision`.
    #[serde(default)]
    pub refused: BTreeMap<Cow<'static, str>, u64>,
}

impl Counts {
    /// Adds `other` to these counts.
    pub fn add(&mut self, other: &Counts) {
        self.requests = self.requests.saturating_add(other.requests);
        self.cost = self.cost.saturating_add(other.cost);
        for (reason, n) in &other.refused {
            let count = self.refused.entry(reason.clone()).or_default();
            *count = count.saturating_add(*n);
        }
    }

    pub(super) fn record(&mut self, outcome: Outcome) {
        match outcome {
            Outcome::Admitted { cost } => {
                self.requests = self.requests.saturating_add(1);
                self.cost = self.cost.saturating_add(cost);
            }
            Outcome::Refused(reason) => match self.refused.get_mut(reason) {
                Some(n) => *n = n.saturating_add(1),
                None => {
                    self.refused.insert(Cow::Borrowed(reason), 1);
                }
            },
        }
    }

    /// Nothing counted.
    pub fn is_empty(&self) -> bool {
        self.requests == 0 && self.cost == 0 && self.refused.values().all(|n| *n == 0)
    }

    /// Refusals of every reason.
    pub fn refused_total(&self) -> u64 {
        self.refused.values().fold(0, |sum, n| sum.saturating_add(*n))
    }
}

/// One tenant's counts on one day: the tenant's total and each key's.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantDay {
    #[serde(default)]
    pub total: Counts,
    #[serde(default)]
    pub keys: BTreeMap<String, Counts>,
}

impl TenantDay {
    /// Adds `other` to this day.
    pub fn add(&mut self, other: &TenantDay) {
        self.total.add(&other.total);
        for (key, counts) in &other.keys {
            match self.keys.get_mut(key) {
                Some(mine) => mine.add(counts),
                None => {
                    self.keys.insert(key.clone(), counts.clone());
                }
            }
        }
    }

    /// The entries it holds (itself and one per key), for [`MAX_PENDING_ENTRIES`].
    pub(super) fn entries(&self) -> usize {
        1 + self.keys.len()
    }
}

/// Counts not yet written: UTC day (days since the epoch) → tenant → its day.
pub type Batch = HashMap<i64, HashMap<String, TenantDay>>;

/// How a request of a known tenant ended, for its usage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Admitted and forwarded (whatever the upstream answered), counting `cost`.
    Admitted { cost: u64 },
    /// Refused before it was forwarded; the access line's `decision`.
    Refused(&'static str),
}

//! The limits of a check that a key counts alone ([`KeyScope`]), which every limiter
//! takes beside the tenant.

/// The limits of a check that a key counts alone (its own overrides: docs/reference.md
/// §4.4, "Overrides"): bit `i` of `mask` set means rule `i` is counted in counters of
/// `key` (kept beside the tenant's, on the tenant's Redis slot), not in the tenant's. A
/// check without one (`None`) counts every rule in the tenant's counters, as every check
/// of a principal without key overrides does. Only the first 64 rules can be scoped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyScope<'a> {
    pub key: &'a str,
    pub mask: u64,
}

impl KeyScope<'_> {
    /// Whether rule `index` is counted for the key alone.
    pub fn covers(&self, index: usize) -> bool {
        index < 64 && self.mask & (1 << index) != 0
    }
}

//! Every metric keygate exports (SPEC 5.1), registered in one place on an explicit
//! registry, with bounded labels only.

/// All metrics, registered on their own registry.
pub struct Metrics {}

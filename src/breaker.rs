//! A small circuit breaker (being written).

//! The shared Redis client (being written).

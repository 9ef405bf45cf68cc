//! The properties keygate's fuzz targets check, one module per target. Each module's
//! `check(data)` takes the raw bytes libFuzzer hands over and panics when a property
//! fails.
//!
//! The same code runs in two places: the `cargo fuzz` targets in `fuzz_targets/` (this
//! file is their library), and the main crate's `tests/fuzz_corpus.rs`, which includes
//! this file as a module and replays every committed corpus file through it on stable
//! Rust. So every module here uses only `keygate`, `http`, `sha2`, `time` and `std`
//! (crates the main crate's tests can reach too), and siblings through `super::`.
//!
//! - [`path`]: path normalisation against an independent model, and its invariants.
//! - [`key`]: the key parser against a model of the format, generated keys, and
//!   mutated keys that the checksum must refuse.
//! - [`settings`] and [`policy`]: `keygate.toml` and `routes.toml` never panic, and
//!   every diagnostic has a position inside the text.
//! - [`codec`]: the Redis record codec round-trips and never panics.
//! - [`headers`]: the `Authorization` and `x-request-id` parsers accept only their
//!   grammar.

#![forbid(unsafe_code)]

pub mod codec;
pub mod headers;
pub mod input;
pub mod key;
pub mod path;
pub mod policy;
pub mod settings;

//! keygate: an auth-enforcing reverse-proxy sidecar. API keys, scopes and plan rate
//! limits in front of a service (see SPEC.md). The binary in `main.rs` only parses the
//! command line and calls into this library, so tests run the real server in-process.

#![forbid(unsafe_code)]

pub mod cli;
pub mod diag;
pub mod duration;
pub mod keys;
pub mod metrics;
pub mod path;
pub mod policy;
pub mod ratelimit;
pub mod settings;

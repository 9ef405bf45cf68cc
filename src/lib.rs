//! keygate: an auth-enforcing reverse-proxy sidecar. API keys, scopes and plan rate
//! limits in front of a service (see SPEC.md). The binary in `main.rs` only parses the
//! command line and calls into this library, so tests run the real server in-process.
//!
//! The request pipeline, phase by phase, is in [`pipeline`].

#![forbid(unsafe_code)]

pub mod admin;
pub mod admin_api;
pub mod app;
pub mod auth;
pub mod body;
pub mod breaker;
pub mod cli;
pub mod clock;
pub mod diag;
pub mod duration;
pub mod error;
pub mod io;
pub mod keys;
pub mod metrics;
pub mod path;
pub mod pipeline;
pub mod policy;
pub mod ratelimit;
pub mod redis_client;
pub mod reload;
pub mod server;
pub mod settings;
pub mod tls;
pub mod toml_check;
pub mod upstream;
pub mod worker;

pub use app::{start, Options, Running, StartError};
pub use settings::Settings;

//! keygate: an auth-enforcing reverse-proxy sidecar. API keys, scopes and plan rate
//! limits in front of a service (see `docs/reference.md`). The binary in `main.rs` only
//! parses the command line and calls into this library, so tests run the real server
//! in-process.
//!
//! The request pipeline, phase by phase, is in [`pipeline`].
//!
//! # Layout
//!
//! The modules stand on floors; a module imports only from its own floor or below, and
//! the imports between files form no circle (`tests/layout.rs` reads this drawing and
//! checks both, and that no file holds more than 600 lines of non-test code):
//!
//! ```text
//! floor 11 start-up: app cli
//! floor 10 admin surfaces: admin admin_api
//! floor 9  server: server
//! floor 8  pipeline: pipeline authorizer
//! floor 7  shared state: state
//! floor 6  forwarding: upstream
//! floor 5  admission: admission
//! floor 4  keys, limits, stores: keys auth address_budget ratelimit redis_client breaker tls reload access_log usage
//! floor 3  metrics: metrics
//! floor 2  config: settings policy
//! floor 1  utilities: clock duration path io diag toml_check encoding hashing worker bearer connection request_id body error
//! ```
//!
//! - utilities: time ([`clock`]), the duration grammar, path normalisation, I/O byte
//!   observers, diagnostics with file:line:column, hex and percent-encoding, the request
//!   path's hash maps ([`hashing`]), the worker
//!   index, the `Bearer` parser, connection facts, request ids, the body type, and every
//!   refusal with its one mapping to HTTP ([`error`]).
//! - config: `keygate.toml` ([`settings`]) and the hot-reloaded policy ([`policy`]).
//! - [`metrics`]: every metric, on an explicit registry.
//! - keys, limits, stores: the key format and stores ([`keys`]), authentication through
//!   the cache ([`auth`]), the per-client-address budgets ([`address_budget`]), the
//!   limiters ([`ratelimit`]), the Redis client and its breaker, TLS certificates, file
//!   watching, the access log, and the usage per tenant and key ([`usage`]).
//! - [`admission`]: the rules a request must pass, and the proof that it passed them.
//! - [`upstream`]: forwarding an admitted request.
//! - [`state`]: what every request reads ([`state::App`]).
//! - [`pipeline`]: one request's phases, in order; [`authorizer`]: the same decision
//!   answered to another proxy instead of forwarded.
//! - [`server`]: the proxy and authorizer listeners and their worker threads.
//! - admin surfaces: health and metrics ([`admin`]), the key and tenant API ([`admin_api`]).
//! - start-up: [`app`] builds and starts everything; [`cli`] is the command line.

#![forbid(unsafe_code)]

pub mod access_log;
pub mod address_budget;
pub mod admin;
pub mod admin_api;
pub mod admission;
pub mod app;
pub mod auth;
pub mod authorizer;
pub mod bearer;
pub mod body;
pub mod breaker;
pub mod cli;
pub mod clock;
pub mod connection;
pub mod diag;
pub mod duration;
pub mod encoding;
pub mod error;
pub mod hashing;
pub mod io;
pub mod keys;
pub mod metrics;
pub mod path;
pub mod pipeline;
pub mod policy;
pub mod ratelimit;
pub mod redis_client;
pub mod reload;
pub mod request_id;
pub mod server;
pub mod settings;
pub mod state;
pub mod tls;
pub mod toml_check;
pub mod upstream;
pub mod usage;
pub mod worker;

pub use app::{start, Options, Polls, Running, StartError};
pub use settings::Settings;

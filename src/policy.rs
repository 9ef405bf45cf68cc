//! `routes.toml`: the hot-reloaded policy (docs/reference.md §2.2), parsed into `Raw*` structs and
//! compiled into one immutable [`Policy`] snapshot. Pure: no I/O beyond [`Policy::load`].
//!
//! This file is the way in ([`Policy::load`], [`Policy::parse`]) and the module's public
//! names. The parts, one job each: `model` (the compiled types), `limit` (a plan's rate limit), `upstream` (an upstream), `raw` (the file as
//! written), `compile` and `compile_routes` (checks and conversion into the model),
//! `validate` (single values), `overlap` (routes that collide) and [`routes`] (the
//! route table).

mod compile;
mod compile_routes;
mod limit;
mod model;
mod overlap;
pub mod overrides;
mod rate_headers;
mod raw;
pub mod routes;
mod upstream;
mod validate;

use std::path::Path;

use crate::diag::Diagnostic;
use crate::toml_check::{deserialize, Checker};

pub use limit::{
    civil_from_days, days_from_civil, days_in_month, Limit, LimitKind, PlanLimit, Rule, LEGACY_LIMIT_NAME, SUB_WINDOWS,
};
pub use model::{Plan, Policy};
pub use rate_headers::{ceil_secs, header_number, into_header_value, PlanHeaders};
pub use routes::{Route, RouteAuth, RouteMatch, RouteMode, RouteTable};
pub use upstream::{Upstream, UpstreamProtocol};

impl Policy {
    /// Reads and compiles `path`. On success also returns warnings.
    pub fn load(path: &Path) -> Result<(Policy, Vec<Diagnostic>), Vec<Diagnostic>> {
        let bytes = std::fs::read(path).map_err(|e| vec![Diagnostic::file_error(path, format!("cannot read: {e}"))])?;
        let text = String::from_utf8(bytes).map_err(|_| vec![Diagnostic::file_error(path, "not valid UTF-8")])?;
        Self::parse(&text, path)
    }

    /// Parses, validates and compiles `text` as the content of `path`. Every error is
    /// collected (not just the first), each with file:line:column.
    ///
    /// A syntax error stops the parse and is the one error returned; every unknown field,
    /// every value of the wrong type and every other finding is collected. Errors come back
    /// sorted by position; warnings (a plan without a limit, a route that costs more than
    /// a plan's whole limit, settings ignored on a public route, an unused upstream) are
    /// only returned with a valid policy.
    pub fn parse(text: &str, path: &Path) -> Result<(Policy, Vec<Diagnostic>), Vec<Diagnostic>> {
        let read = deserialize::<raw::RawPolicy>(path, text)?;
        let mut check = Checker::new(path, text);
        let raw = check.take(read);
        let policy = compile::compile(raw, &mut check);
        let (errors, warnings) = check.finish();
        if errors.is_empty() {
            Ok((policy, warnings))
        } else {
            Err(errors)
        }
    }
}

#[cfg(test)]
mod tests;

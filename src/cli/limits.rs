//! `keygate tenants set-limits|limits` and `keygate keys set-limits|limits`: a tenant's or
//! a key's limit overrides, and the effective limits they give (docs/reference.md §1).
//!
//! `--limit NAME=SPEC` is repeatable; SPEC is `REQUESTS/WINDOW` (a sliding window, e.g.
//! `600/60s`), `REQUESTS/day`, `REQUESTS/month` or `REQUESTS/month@DAY` (a month resetting
//! on that day). The limits given replace the overrides held before, all of them;
//! `--clear` removes them.

use std::fmt::Write as _;

use super::{CliError, Context};
use crate::keys::audit::{self, Via};
use crate::keys::json;
use crate::keys::manage::ManageError;
use crate::policy::overrides::{parse_cli_limit, LimitOverrides, RawOverrides};

/// The overrides of a `set-limits` command.
#[derive(Debug, clap::Args)]
pub struct LimitArgs {
    /// A limit that replaces the plan's of the same name, or is added:
    /// NAME=REQUESTS/WINDOW (e.g. `minute=600/60s`), NAME=REQUESTS/day,
    /// NAME=REQUESTS/month, NAME=REQUESTS/month@RESET_DAY. Repeatable.
    #[arg(long = "limit", value_name = "NAME=SPEC")]
    pub limits: Vec<String>,
    /// Requests in flight at once, in place of the plan's `concurrency`.
    #[arg(long, value_name = "N")]
    pub concurrency: Option<u32>,
    /// Removes every override: the plan's limits apply again.
    #[arg(long, conflicts_with_all = ["limits", "concurrency"])]
    pub clear: bool,
}

impl LimitArgs {
    /// The overrides asked for (empty with `--clear`), validated.
    pub fn overrides(&self) -> Result<LimitOverrides, CliError> {
        if self.clear {
            return Ok(LimitOverrides::default());
        }
        if self.limits.is_empty() && self.concurrency.is_none() {
            return Err(CliError::input(
                "set-limits needs --limit NAME=SPEC (repeatable), --concurrency N, or --clear",
            ));
        }
        let limits = self.limits.iter().map(|text| parse_cli_limit(text)).collect::<Result<Vec<_>, _>>();
        let raw = RawOverrides { limits: limits.map_err(CliError::input)?, concurrency: self.concurrency };
        LimitOverrides::from_raw(raw).map_err(|e| CliError::input(ManageError::InvalidLimits(e)))
    }
}

/// `tenants set-limits ID ...`.
pub fn set_tenant(context: &Context, id: &str, args: &LimitArgs) -> Result<(), CliError> {
    let overrides = args.overrides()?;
    let tenant =
        context.block_on(context.store.set_tenant_limits(&context.policy, id, &overrides)).map_err(CliError::input)?;
    audit::limits_set(Via::Cli, &tenant.id, None, &tenant.overrides);
    show_tenant(context, id)
}

/// `keys set-limits ID ...`.
pub fn set_key(context: &Context, id: &str, args: &LimitArgs) -> Result<(), CliError> {
    let overrides = args.overrides()?;
    let key =
        context.block_on(context.store.set_key_limits(&context.policy, id, &overrides)).map_err(CliError::input)?;
    audit::limits_set(Via::Cli, &key.tenant, Some(&key.id), &key.overrides);
    show_key(context, id)
}

/// `tenants limits ID`: the tenant's effective limits.
pub fn show_tenant(context: &Context, id: &str) -> Result<(), CliError> {
    let data = context.block_on(context.store.tenant_data(id)).map_err(CliError::input)?;
    let tenant = data.tenants.get(id).ok_or_else(|| CliError::input(ManageError::UnknownTenant(id.to_string())))?;
    print(context, &json::effective_limits(&context.policy, tenant, None));
    Ok(())
}

/// `keys limits ID`: a key's effective limits.
pub fn show_key(context: &Context, id: &str) -> Result<(), CliError> {
    let data = context.block_on(context.store.key_data(id)).map_err(CliError::input)?;
    let key = data.keys.get(id).ok_or_else(|| CliError::input(ManageError::UnknownKey(id.to_string())))?;
    let tenant =
        data.tenants.get(&key.tenant).ok_or_else(|| CliError::input(ManageError::UnknownTenant(key.tenant.clone())))?;
    print(context, &json::effective_limits(&context.policy, tenant, Some(key)));
    Ok(())
}

/// The view of [`json::effective_limits`], as JSON or for people.
fn print(context: &Context, view: &serde_json::Value) {
    if context.json {
        println!("{view}");
        return;
    }
    let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
    let mut out = String::new();
    let who = match view.get("key") {
        Some(key) => format!("key {} of tenant {}", text(key), text(&view["tenant"])),
        None => format!("tenant {}", text(&view["tenant"])),
    };
    let _ = writeln!(out, "Effective limits of {who} (plan {}):", text(&view["plan"]));
    let limits = view["limits"].as_array().cloned().unwrap_or_default();
    if limits.is_empty() {
        let _ = writeln!(out, "  none (no rate limit)");
    }
    for limit in &limits {
        let per = match (limit.get("window"), limit.get("period"), limit.get("reset_day")) {
            (Some(window), _, _) => format!("per {} (sliding)", text(window)),
            (None, Some(period), Some(day)) => format!("per {} (resets on day {day})", text(period)),
            (None, Some(period), None) => format!("per {}", text(period)),
            _ => String::new(),
        };
        let _ = writeln!(out, "  {}: {} {per}  [{}]", text(&limit["name"]), limit["requests"], text(&limit["source"]));
    }
    match view["concurrency"].get("value") {
        Some(n) => {
            let _ = writeln!(out, "  concurrency: {n}  [{}]", text(&view["concurrency"]["source"]));
        }
        None => {
            let _ = writeln!(out, "  concurrency: the plan's");
        }
    }
    print!("{out}");
}

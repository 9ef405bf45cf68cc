//! `keygate usage --tenant T [--key ID] [--from DATE] [--to DATE] [--json|--csv]`: a
//! tenant's usage per UTC day from the store named in `[keys]` (Redis, or the `usage/`
//! folder beside the keys file), and its plan's calendar quotas now (from Redis with
//! `limits.backend = "redis"`; with the local limiter they live in the running process,
//! which the admin API answers for).

use std::sync::Arc;

use super::{CliError, Context};
use crate::clock::{Clock, SystemClock};
use crate::keys::manage;
use crate::settings::LimitBackend;
use crate::usage::report::{self, QuotaSource};
use crate::usage::{day_of, UsageStore};

/// `keygate usage`'s arguments.
#[derive(Debug, clap::Args)]
pub struct UsageArgs {
    /// The tenant id.
    #[arg(long)]
    pub tenant: String,
    /// Only this key's share (its id, `key_…`).
    #[arg(long, value_name = "ID")]
    pub key: Option<String>,
    /// The first day, YYYY-MM-DD (UTC; default: the first of this month).
    #[arg(long, value_name = "DATE")]
    pub from: Option<String>,
    /// The last day, YYYY-MM-DD (UTC; default: today).
    #[arg(long, value_name = "DATE")]
    pub to: Option<String>,
    /// CSV: a row per day for the tenant (empty `key`) and per key. (`--json` gives the
    /// admin API's `GET /admin/v1/usage` answer.)
    #[arg(long)]
    pub csv: bool,
}

/// Prints the report.
pub fn run(args: UsageArgs, context: &Context) -> Result<(), CliError> {
    manage::check_tenant_id(&args.tenant).map_err(CliError::input)?;
    let now = SystemClock.now_millis();
    let range = report::range(args.from.as_deref(), args.to.as_deref(), day_of(now)).map_err(CliError::input)?;
    let usage = UsageStore::of(&context.settings, &context.store);
    let found = context.block_on(context.store.tenant_data(&args.tenant)).map_err(CliError::input)?;
    let plan = match found.tenants.get(&args.tenant) {
        None => Err(format!("tenant {} is not in the store", args.tenant)),
        Some(tenant) => report::tenant_limits(&context.policy, tenant),
    };
    let report = context.block_on(async {
        let redis = match (context.settings.limits.backend, context.store.redis()) {
            (LimitBackend::Local, _) => None,
            (LimitBackend::Redis, Some(store)) => Some(store.client().clone()),
            (LimitBackend::Redis, None) => {
                let metrics = Arc::new(crate::metrics::Metrics::new());
                Some(crate::app::redis_client(&context.settings, metrics, Some(super::STORE_TIMEOUT)).await?)
            }
        };
        let source = match &redis {
            Some(client) => QuotaSource::Redis(client),
            None => QuotaSource::Offline,
        };
        report::tenant_report(
            &usage,
            &args.tenant,
            args.key.as_deref(),
            range,
            plan.as_deref().map_err(Clone::clone),
            source,
            now,
        )
        .await
    });
    let report = report.map_err(CliError::input)?;
    if context.json {
        println!("{}", report.to_json());
    } else if args.csv {
        print!("{}", report.to_csv());
    } else {
        print!("{}", report.to_table());
    }
    Ok(())
}

//! `keygate tenants create|set-plan|set-limits|limits|delete|list`.
//!
//! Every change is one operation of the store named in `[keys]` (the file or Redis, with
//! the rules of [`crate::keys::manage`]) and is logged as an audit line (target `audit`).
//! The JSON objects are [`crate::keys::json`]'s, the admin API's too.

use super::keys::{row, table};
use super::{CliError, Context};
use crate::keys::audit::{self, Via};
use crate::keys::json::{self, rfc3339};
use crate::keys::{manage, store, TenantRecord};

/// The `tenants` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum TenantsCommand {
    /// Creates a tenant on a plan of the policy.
    Create {
        /// The tenant id: 1-63 characters of a-z 0-9 _ -, starting with a letter or digit.
        id: String,
        /// A plan of the policy's `[plans]`.
        #[arg(long)]
        plan: String,
    },
    /// Moves a tenant to another plan; takes effect on the next request. With
    /// `--from OLD --to NEW`: moves every tenant on plan OLD (which need not be in the
    /// policy any more) to NEW, the middle step of renaming a plan.
    #[command(
        override_usage = "keygate tenants set-plan <ID> <PLAN>\n       keygate tenants set-plan --from <OLD> --to <NEW>"
    )]
    SetPlan {
        /// The tenant id.
        #[arg(required_unless_present = "from", conflicts_with = "from")]
        id: Option<String>,
        /// A plan of the policy's `[plans]`.
        #[arg(required_unless_present = "from", conflicts_with = "from")]
        plan: Option<String>,
        /// Move every tenant on this plan (with --to).
        #[arg(long, value_name = "OLD", requires = "to")]
        from: Option<String>,
        /// The plan of the policy's `[plans]` they move to (with --from).
        #[arg(long, value_name = "NEW", requires = "from")]
        to: Option<String>,
    },
    /// Sets the tenant's own limits over its plan's (replacing any set before); takes
    /// effect on every replica within a second. Counts are kept.
    SetLimits {
        /// The tenant id.
        id: String,
        #[command(flatten)]
        limits: super::limits::LimitArgs,
    },
    /// Shows the tenant's effective limits: its plan's and its overrides, with sources.
    Limits {
        /// The tenant id.
        id: String,
    },
    /// Deletes a tenant and revokes all its keys.
    Delete {
        /// The tenant id.
        id: String,
    },
    /// Lists tenants, their plans and how many keys work now.
    List,
}

/// Runs one `tenants` subcommand.
pub fn run(command: TenantsCommand, context: &Context) -> Result<(), CliError> {
    let store = &context.store;
    match command {
        TenantsCommand::Create { id, plan } => {
            let tenant = context.block_on(store.create_tenant(&context.policy, &id, &plan)).map_err(CliError::input)?;
            audit::tenant_created(Via::Cli, &tenant);
            print_tenant(context, &tenant, "Created tenant");
        }
        TenantsCommand::SetPlan { from: Some(from), to: Some(to), .. } => {
            let moved = context.block_on(store.move_plan(&context.policy, &from, &to)).map_err(CliError::input)?;
            for tenant in &moved {
                audit::plan_set(Via::Cli, tenant, Some(&from));
            }
            if context.json {
                let tenants: Vec<_> = moved.iter().map(|t| json::tenant(t, None)).collect();
                println!("{}", serde_json::json!({"from": from, "to": to, "moved": tenants}));
            } else {
                println!("Moved {} tenant(s) from plan {from} to plan {to}.", moved.len());
                for tenant in &moved {
                    println!("  {}", tenant.id);
                }
            }
        }
        TenantsCommand::SetPlan { id: Some(id), plan: Some(plan), .. } => {
            // The plan before, for the audit line: read first, as the change does not
            // return it.
            let before = context.block_on(store.tenant_data(&id)).map_err(CliError::input)?;
            let previous = before.tenants.get(&id).map(|t| t.plan.clone());
            let tenant = context.block_on(store.set_plan(&context.policy, &id, &plan)).map_err(CliError::input)?;
            audit::plan_set(Via::Cli, &tenant, previous.as_deref());
            print_tenant(context, &tenant, "Moved tenant");
        }
        TenantsCommand::SetPlan { .. } => {
            return Err(CliError::input("set-plan takes <ID> <PLAN>, or --from <OLD> --to <NEW>"));
        }
        TenantsCommand::SetLimits { id, limits } => super::limits::set_tenant(context, &id, &limits)?,
        TenantsCommand::Limits { id } => super::limits::show_tenant(context, &id)?,
        TenantsCommand::Delete { id } => {
            // The record as it was, for `--json`.
            let before = context.block_on(store.tenant_data(&id)).map_err(CliError::input)?;
            let tenant = before.tenants.get(&id).cloned();
            let revoked = context.block_on(store.delete_tenant(&id)).map_err(CliError::input)?;
            audit::tenant_deleted(Via::Cli, &id, &revoked);
            if context.json {
                println!("{}", json::deleted_tenant(&id, tenant.as_ref(), &revoked));
            } else {
                println!("Deleted tenant {id}; revoked {} key(s).", revoked.len());
                for key_id in &revoked {
                    println!("  revoked {key_id}");
                }
            }
        }
        TenantsCommand::List => {
            let data = context.block_on(store.data()).map_err(CliError::input)?;
            let now = store::now();
            if context.json {
                println!("{}", json::tenants(&data, now));
            } else if data.tenants.is_empty() {
                println!("No tenants.");
            } else {
                let mut rows = vec![row(["TENANT", "PLAN", "ACTIVE KEYS", "MAX KEYS", "CREATED"])];
                rows.extend(data.tenants.values().map(|t| {
                    let (plan, max) = match context.policy.plans.get(&t.plan) {
                        Some(plan) if !plan.api_access => (t.plan.clone(), "no API access".to_string()),
                        Some(plan) => {
                            (t.plan.clone(), plan.max_keys.map_or_else(|| "unlimited".to_string(), |m| m.to_string()))
                        }
                        None => (format!("{} (not in the policy)", t.plan), "-".to_string()),
                    };
                    let counted = manage::counted_keys(&data, &t.id, now);
                    let in_grace = json::active_keys(&data, &t.id, now).saturating_sub(counted);
                    let keys = if in_grace == 0 {
                        counted.to_string()
                    } else {
                        format!("{counted} (+{in_grace} rotated, in grace)")
                    };
                    row([&t.id, &plan, &keys, &max, &rfc3339(t.created_at)])
                }));
                print!("{}", table(&rows));
            }
        }
    }
    Ok(())
}

fn print_tenant(context: &Context, tenant: &TenantRecord, verb: &str) {
    if context.json {
        println!("{}", json::tenant(tenant, None));
    } else {
        println!("{verb} {} (plan {}).", tenant.id, tenant.plan);
    }
}

//! `keygate tenants create|set-plan|delete|list`.
//!
//! Every change runs a rule of [`crate::keys::manage`] inside the store's locked update
//! and is logged as an audit line (target `audit`).

use serde_json::{json, Value};
use time::OffsetDateTime;

use super::keys::{rfc3339, row, table};
use super::{CliError, Context};
use crate::keys::manage;
use crate::keys::store::KeysData;
use crate::keys::{KeyState, TenantRecord};

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
    /// Moves a tenant to another plan; takes effect on the next request.
    SetPlan {
        /// The tenant id.
        id: String,
        /// A plan of the policy's `[plans]`.
        plan: String,
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
    let now = OffsetDateTime::now_utc();
    let now = now.replace_nanosecond(0).unwrap_or(now);
    match command {
        TenantsCommand::Create { id, plan } => {
            let tenant = context
                .store
                .update(|data| manage::create_tenant(data, &context.policy, &id, &plan, now))
                .map_err(CliError::input)?;
            tracing::info!(target: "audit", action = "tenant.create", tenant = %tenant.id, plan = %tenant.plan);
            print_tenant(context, &tenant, None, "Created tenant");
        }
        TenantsCommand::SetPlan { id, plan } => {
            let (tenant, previous) = context
                .store
                .update(|data| {
                    let previous = data.tenants.get(&id).map(|t| t.plan.clone());
                    let tenant = manage::set_plan(data, &context.policy, &id, &plan)?;
                    Ok::<_, manage::ManageError>((tenant, previous))
                })
                .map_err(CliError::input)?;
            tracing::info!(
                target: "audit",
                action = "tenant.set_plan",
                tenant = %tenant.id,
                plan = %tenant.plan,
                previous_plan = %previous.unwrap_or_default(),
            );
            print_tenant(context, &tenant, None, "Moved tenant");
        }
        TenantsCommand::Delete { id } => {
            let (tenant, revoked) = context
                .store
                .update(|data| {
                    let tenant = data.tenants.get(&id).cloned();
                    let revoked = manage::delete_tenant(data, &id, now)?;
                    Ok::<_, manage::ManageError>((tenant, revoked))
                })
                .map_err(CliError::input)?;
            for key_id in &revoked {
                tracing::info!(target: "audit", action = "key.revoke", key_id = %key_id, tenant = %id, reason = "tenant.delete");
            }
            tracing::info!(target: "audit", action = "tenant.delete", tenant = %id, revoked_keys = revoked.len());
            if context.json {
                let mut value = tenant.as_ref().map_or_else(|| json!({ "id": id }), |t| tenant_json(t, None));
                if let Value::Object(map) = &mut value {
                    map.insert("revoked_keys".to_string(), json!(revoked));
                }
                println!("{value}");
            } else {
                println!("Deleted tenant {id}; revoked {} key(s).", revoked.len());
                for key_id in &revoked {
                    println!("  revoked {key_id}");
                }
            }
        }
        TenantsCommand::List => {
            let data = context.store.snapshot();
            if context.json {
                let list: Vec<Value> =
                    data.tenants.values().map(|t| tenant_json(t, Some(active_keys(&data, &t.id, now)))).collect();
                println!("{}", Value::Array(list));
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
                    let in_grace = active_keys(&data, &t.id, now).saturating_sub(counted);
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

/// The tenant's keys that work now (old keys in their rotation grace included).
fn active_keys(data: &KeysData, tenant: &str, now: OffsetDateTime) -> usize {
    data.keys.values().filter(|k| k.tenant == tenant && k.state(now) == KeyState::Active).count()
}

/// `{id, plan, created_at}`, plus `active_keys` in lists.
fn tenant_json(tenant: &TenantRecord, active_keys: Option<usize>) -> Value {
    let mut value = json!({
        "id": tenant.id,
        "plan": tenant.plan,
        "created_at": rfc3339(tenant.created_at),
    });
    if let (Some(count), Value::Object(map)) = (active_keys, &mut value) {
        map.insert("active_keys".to_string(), json!(count));
    }
    value
}

fn print_tenant(context: &Context, tenant: &TenantRecord, active: Option<usize>, verb: &str) {
    if context.json {
        println!("{}", tenant_json(tenant, active));
    } else {
        println!("{verb} {} (plan {}).", tenant.id, tenant.plan);
    }
}

//! `keygate keys create|list|show|revoke|rotate|set-limits|limits`.
//!
//! Every change is one operation of the [`Store`] named in `[keys]` (the file or Redis,
//! with the rules of [`crate::keys::manage`]) and is logged as an audit line (target
//! `audit`: what, key id, tenant; never a secret). A secret is printed once, by `create`
//! and `rotate`. The JSON objects are [`crate::keys::json`]'s, the admin API's too.
//!
//! [`Store`]: crate::keys::store::Store

use std::fmt::Write as _;

use time::OffsetDateTime;

use super::{CliError, Context};
use crate::keys::audit::{self, Via};
use crate::keys::json::{self, rfc3339, state_name, Replaced};
use crate::keys::manage::{CreatedKey, ManageError, NewKey};
use crate::keys::store;
use crate::keys::{KeyRecord, KeyState};

/// The `keys` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum KeysCommand {
    /// Creates a key and prints its secret, once.
    Create {
        /// The tenant the key belongs to.
        #[arg(long)]
        tenant: String,
        /// A name for people: what or who uses the key (1-100 characters).
        #[arg(long)]
        name: String,
        /// The scopes the key holds, comma-separated; each from the policy's `[scopes]`.
        #[arg(long, value_delimiter = ',', required = true)]
        scopes: Vec<String>,
        /// Expire the key after this long (e.g. `90d`). Default: never.
        #[arg(long, value_name = "DURATION")]
        expires_in: Option<String>,
    },
    /// Lists keys (revoked ones too, for 30 days).
    List {
        /// Only this tenant's keys.
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Shows one key (never its secret).
    Show {
        /// The key id (`key_…`).
        id: String,
    },
    /// Revokes a key, at once.
    Revoke {
        /// The key id (`key_…`).
        id: String,
    },
    /// Issues a new key with the same tenant, name and scopes and prints its secret;
    /// the old key keeps working for the grace.
    Rotate {
        /// The key id (`key_…`).
        id: String,
        /// How long the old key keeps working.
        #[arg(long, value_name = "DURATION", default_value = "1h")]
        grace: String,
    },
    /// Sets the key's own limits over its tenant's (replacing any set before); takes
    /// effect on every replica within a second. Counts are kept.
    SetLimits {
        /// The key id (`key_…`).
        id: String,
        #[command(flatten)]
        limits: super::limits::LimitArgs,
    },
    /// Shows the key's effective limits: plan, tenant and key overrides, with sources.
    Limits {
        /// The key id (`key_…`).
        id: String,
    },
}

/// Runs one `keys` subcommand.
pub fn run(command: KeysCommand, context: &Context) -> Result<(), CliError> {
    let store = &context.store;
    match command {
        KeysCommand::Create { tenant, name, scopes, expires_in } => {
            let expires_in = expires_in
                .map(|text| crate::duration::parse(&text).map_err(|e| CliError::input(format!("--expires-in: {e}"))))
                .transpose()?;
            let new = NewKey {
                tenant,
                name,
                scopes: scopes.iter().map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect(),
                expires_in,
            };
            let created =
                context.block_on(store.create_key(&context.policy, &context.peppers, &new)).map_err(CliError::input)?;
            audit::key_created(Via::Cli, &created.record);
            print_created(context, &created, None);
        }
        KeysCommand::List { tenant } => {
            let data = match tenant.as_deref() {
                Some(tenant) => context.block_on(store.tenant_data(tenant)),
                None => context.block_on(store.data()),
            }
            .map_err(CliError::input)?;
            let now = store::now();
            let keys = json::listed_keys(&data, tenant.as_deref()).map_err(CliError::input)?;
            if context.json {
                println!("{}", json::keys(&keys, now));
            } else if keys.is_empty() {
                println!("No keys.");
            } else {
                let mut rows = vec![row(["ID", "TENANT", "NAME", "SCOPES", "STATE", "CREATED", "EXPIRES"])];
                rows.extend(keys.iter().map(|k| {
                    row([
                        &k.id,
                        &k.tenant,
                        &k.name,
                        &k.scopes.join(","),
                        &state_text(k, now),
                        &rfc3339(k.created_at),
                        &k.expires_at.map_or_else(|| "never".to_string(), rfc3339),
                    ])
                }));
                print!("{}", table(&rows));
            }
        }
        KeysCommand::Show { id } => {
            let data = context.block_on(store.key_data(&id)).map_err(CliError::input)?;
            let key = data.keys.get(&id).ok_or_else(|| CliError::input(ManageError::UnknownKey(id.clone())))?;
            print_key(context, key, store::now());
        }
        KeysCommand::Revoke { id } => {
            let key = context.block_on(store.revoke_key(&id)).map_err(CliError::input)?;
            audit::key_revoked(Via::Cli, &key);
            if context.json {
                println!("{}", json::key(&key, store::now()));
            } else {
                println!("Revoked key {} (tenant {}, name {:?}).", key.id, key.tenant, key.name);
            }
        }
        KeysCommand::Rotate { id, grace } => {
            let grace = crate::duration::parse(&grace).map_err(|e| CliError::input(format!("--grace: {e}")))?;
            let created = context
                .block_on(store.rotate_key(&context.policy, &context.peppers, &id, grace))
                .map_err(CliError::input)?;
            audit::key_rotated(Via::Cli, &created.record, &id, grace);
            print_created(context, &created, Some(&Replaced::after_rotation(&id, &created, grace)));
        }
        KeysCommand::SetLimits { id, limits } => super::limits::set_key(context, &id, &limits)?,
        KeysCommand::Limits { id } => super::limits::show_key(context, &id)?,
    }
    Ok(())
}

/// The state for people: an old key in its rotation grace says so (`keys show` names
/// its successor on a line of its own).
fn state_text(key: &KeyRecord, now: OffsetDateTime) -> String {
    let state = key.state(now);
    match (&key.replaced_by, state) {
        (Some(_), KeyState::Active) => "active (rotated, in grace)".to_string(),
        _ => state_name(state).to_string(),
    }
}

/// Prints a key just created (or issued by a rotation of `old`), with its secret, once.
fn print_created(context: &Context, created: &CreatedKey, old: Option<&Replaced>) {
    let record = &created.record;
    if context.json {
        println!("{}", json::created_key(created, old));
        return;
    }
    let mut out = String::new();
    let verb = if old.is_some() { "Rotated: new key" } else { "Created key" };
    let _ = writeln!(out, "{verb} {} for tenant {} (name {:?}).", record.id, record.tenant, record.name);
    let _ = writeln!(out, "  scopes:  {}", record.scopes.join(", "));
    let _ = writeln!(out, "  expires: {}", record.expires_at.map_or_else(|| "never".to_string(), rfc3339));
    if let Some(old) = old {
        let until = old.expires_at.map_or_else(|| "now".to_string(), rfc3339);
        let _ = writeln!(out, "  the old key {} keeps working until {until}", old.id);
    }
    let _ = writeln!(out);
    let _ = writeln!(out, "    {}", created.secret.expose());
    let _ = writeln!(out);
    let _ = writeln!(out, "Store this key now: it will not be shown again.");
    print!("{out}");
}

/// Prints one key (`keys show`).
fn print_key(context: &Context, key: &KeyRecord, now: OffsetDateTime) {
    if context.json {
        println!("{}", json::key(key, now));
        return;
    }
    let time = |t: Option<OffsetDateTime>, none: &str| t.map_or_else(|| none.to_string(), rfc3339);
    let mut out = String::new();
    let _ = writeln!(out, "id:           {}", key.id);
    let _ = writeln!(out, "tenant:       {}", key.tenant);
    let _ = writeln!(out, "name:         {}", key.name);
    let _ = writeln!(out, "scopes:       {}", key.scopes.join(", "));
    let _ = writeln!(out, "state:        {}", state_text(key, now));
    let _ = writeln!(out, "created_at:   {}", rfc3339(key.created_at));
    let _ = writeln!(out, "expires_at:   {}", time(key.expires_at, "never"));
    let _ = writeln!(out, "revoked_at:   {}", time(key.revoked_at, "-"));
    let _ = writeln!(out, "last_used_at: {}", time(key.last_used_at, "-"));
    if let Some(by) = &key.replaced_by {
        let _ = writeln!(out, "replaced_by:  {by}");
    }
    let _ = writeln!(out, "digest:       pepper `{}`", key.digest.pepper_id);
    print!("{out}");
}

/// A table row from string-like cells.
pub(crate) fn row<const N: usize>(cells: [&str; N]) -> Vec<String> {
    cells.iter().map(|c| c.to_string()).collect()
}

/// Left-aligned columns two spaces apart; the first row is the header.
pub(crate) fn table(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| rows.iter().filter_map(|r| r.get(c)).map(|s| s.chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in rows {
        let mut line = String::new();
        for (c, cell) in r.iter().enumerate() {
            if c + 1 == r.len() {
                line.push_str(cell);
            } else {
                let pad = widths[c].saturating_sub(cell.chars().count()) + 2;
                line.push_str(cell);
                line.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns_columns() {
        let rows = vec![row(["ID", "NAME"]), row(["key_1", "x"]), row(["k", "long name"])];
        assert_eq!(table(&rows), "ID     NAME\nkey_1  x\nk      long name\n");
    }
}

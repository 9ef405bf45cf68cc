//! `keygate keys create|list|show|revoke|rotate`.
//!
//! Every change runs a rule of [`crate::keys::manage`] inside [`FileStore::update`]
//! (under the store's lock) and is logged as an audit line (target `audit`: what, key
//! id, tenant; never a secret). A secret is printed once, by `create` and `rotate`.
//!
//! [`FileStore::update`]: crate::keys::store::FileStore::update

use std::fmt::Write as _;

use serde_json::{json, Value};
use time::OffsetDateTime;

use super::{CliError, Context};
use crate::keys::manage::{self, CreatedKey, NewKey};
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
}

/// Runs one `keys` subcommand.
pub fn run(command: KeysCommand, context: &Context) -> Result<(), CliError> {
    let now = now();
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
            let created = context
                .store
                .update(|data| manage::create_key(data, &context.policy, &context.peppers, &new, now))
                .map_err(CliError::input)?;
            let record = &created.record;
            tracing::info!(
                target: "audit",
                action = "key.create",
                key_id = %record.id,
                tenant = %record.tenant,
                name = %record.name,
                scopes = %record.scopes.join(","),
            );
            print_created(context, &created, None);
        }
        KeysCommand::List { tenant } => {
            let data = context.store.snapshot();
            if let Some(tenant) = &tenant {
                if !data.tenants.contains_key(tenant) && !data.keys.values().any(|k| &k.tenant == tenant) {
                    return Err(CliError::input(manage::ManageError::UnknownTenant(tenant.clone())));
                }
            }
            let mut keys: Vec<&KeyRecord> =
                data.keys.values().filter(|k| tenant.as_ref().is_none_or(|t| &k.tenant == t)).collect();
            keys.sort_by(|a, b| (&a.tenant, a.created_at, &a.id).cmp(&(&b.tenant, b.created_at, &b.id)));
            if context.json {
                let list: Vec<Value> = keys.iter().map(|k| key_json(k, now)).collect();
                println!("{}", Value::Array(list));
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
            let data = context.store.snapshot();
            let key = data.keys.get(&id).ok_or_else(|| CliError::input(manage::ManageError::UnknownKey(id.clone())))?;
            print_key(context, key, now);
        }
        KeysCommand::Revoke { id } => {
            let key = context.store.update(|data| manage::revoke_key(data, &id, now)).map_err(CliError::input)?;
            tracing::info!(target: "audit", action = "key.revoke", key_id = %key.id, tenant = %key.tenant);
            if context.json {
                println!("{}", key_json(&key, now));
            } else {
                println!("Revoked key {} (tenant {}, name {:?}).", key.id, key.tenant, key.name);
            }
        }
        KeysCommand::Rotate { id, grace } => {
            let grace = crate::duration::parse(&grace).map_err(|e| CliError::input(format!("--grace: {e}")))?;
            let (created, old) = context
                .store
                .update(|data| {
                    let created = manage::rotate_key(data, &context.policy, &context.peppers, &id, grace, now)?;
                    let old = data.keys.get(&id).cloned();
                    Ok::<_, manage::ManageError>((created, old))
                })
                .map_err(CliError::input)?;
            let record = &created.record;
            tracing::info!(
                target: "audit",
                action = "key.rotate",
                key_id = %record.id,
                replaces = %id,
                tenant = %record.tenant,
                grace = %crate::duration::format(grace),
            );
            print_created(context, &created, old.as_ref());
        }
    }
    Ok(())
}

/// Now, to the second: stored times read better without nanoseconds, and truncating
/// never moves a revocation or an expiry later than asked.
fn now() -> OffsetDateTime {
    let now = OffsetDateTime::now_utc();
    now.replace_nanosecond(0).unwrap_or(now)
}

/// RFC 3339, as in the store and the JSON output.
pub(crate) fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339).unwrap_or_else(|_| t.to_string())
}

fn state_name(state: KeyState) -> &'static str {
    match state {
        KeyState::Active => "active",
        KeyState::Expired => "expired",
        KeyState::Revoked => "revoked",
    }
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

/// A key as `keys list` and `keys show` print it: no secret.
fn key_json(key: &KeyRecord, now: OffsetDateTime) -> Value {
    let mut value = json!({
        "id": key.id,
        "tenant": key.tenant,
        "name": key.name,
        "scopes": key.scopes,
        "created_at": rfc3339(key.created_at),
        "expires_at": key.expires_at.map(rfc3339),
        "last_used_at": key.last_used_at.map(rfc3339),
        "revoked_at": key.revoked_at.map(rfc3339),
        "state": state_name(key.state(now)),
    });
    if let (Some(by), Value::Object(map)) = (&key.replaced_by, &mut value) {
        map.insert("replaced_by".to_string(), Value::String(by.clone()));
    }
    value
}

/// Prints a key just created (or issued by a rotation of `old`), with its secret, once.
fn print_created(context: &Context, created: &CreatedKey, old: Option<&KeyRecord>) {
    let record = &created.record;
    if context.json {
        let mut value = json!({
            "id": record.id,
            "key": created.secret.expose(),
            "tenant": record.tenant,
            "name": record.name,
            "scopes": record.scopes,
            "created_at": rfc3339(record.created_at),
            "expires_at": record.expires_at.map(rfc3339),
        });
        if let (Some(old), Value::Object(map)) = (old, &mut value) {
            map.insert("replaces".to_string(), Value::String(old.id.clone()));
            map.insert("replaced_expires_at".to_string(), json!(old.expires_at.map(rfc3339)));
        }
        println!("{value}");
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
        println!("{}", key_json(key, now));
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
    use crate::keys::KeyDigest;
    use time::macros::datetime;

    fn record() -> KeyRecord {
        KeyRecord {
            id: "key_abc".to_string(),
            tenant: "acme".to_string(),
            name: "ci".to_string(),
            scopes: vec!["calls:read".to_string()],
            created_at: datetime!(2025-01-01 00:00 UTC),
            expires_at: None,
            revoked_at: None,
            last_used_at: None,
            replaced_by: Some("key_def".to_string()),
            digest: KeyDigest { pepper_id: "sha256".to_string(), hex: "00".to_string() },
        }
    }

    #[test]
    fn key_json_has_the_spec_fields_and_no_secret() {
        let value = key_json(&record(), datetime!(2025-02-01 00:00 UTC));
        for field in
            ["id", "tenant", "name", "scopes", "created_at", "expires_at", "last_used_at", "revoked_at", "state"]
        {
            assert!(value.get(field).is_some(), "missing {field}");
        }
        assert!(value.get("key").is_none());
        assert!(value.get("digest").is_none());
        assert_eq!(value["expires_at"], Value::Null);
        assert_eq!(value["created_at"], "2025-01-01T00:00:00Z");
        assert_eq!(value["state"], "active");
        assert_eq!(value["replaced_by"], "key_def");
    }

    #[test]
    fn table_aligns_columns() {
        let rows = vec![row(["ID", "NAME"]), row(["key_1", "x"]), row(["k", "long name"])];
        assert_eq!(table(&rows), "ID     NAME\nkey_1  x\nk      long name\n");
    }
}

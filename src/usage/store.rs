//! Where usage is kept: in Redis when the key store is Redis, else in a `usage/` folder
//! beside the keys file (the embedded store, one replica). Both keep one record per
//! tenant per UTC day for [`RETENTION_DAYS`].
//!
//! Redis: one hash per tenant per day, `kg:us:{<tenant>}:<YYYY-MM-DD>` (the `{tenant}`
//! hash tag keeps a tenant's days on one Redis Cluster slot, so that a report is one
//! pipelined round trip), with fields `n` (admitted requests), `c` (their summed cost),
//! `x:<decision>` (refusals), and the same per key, prefixed by the key id:
//! `<key_id>:n`, `<key_id>:c`, `<key_id>:x:<decision>` (key ids start with `key_`, so
//! they never clash with the tenant's fields). A flush is one `MULTI`…`EXEC` pipeline of
//! `HINCRBY`s and an `EXPIRE` per hash touched (one pipeline per tenant on a cluster,
//! where a transaction stays on one slot): all of it is applied or none, so a failed
//! flush is simply sent again. A flush whose reply is lost after Redis applied it (a
//! timeout at the worst moment) is counted twice when retried: usage is written at least
//! once.
//!
//! The folder: `usage/<YYYY-MM-DD>.json`, one file per UTC day holding every tenant's
//! [`TenantDay`], rewritten whole on each flush that touches the day (a temporary file
//! renamed over it, so a reader never sees half of one). Files older than
//! [`RETENTION_DAYS`] are deleted by the flusher.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::counts::{Batch, Counts, TenantDay};
use crate::keys::store::Store;
use crate::metrics::StoreOp;
use crate::policy::{civil_from_days, days_from_civil, days_in_month};
use crate::redis_client::RedisClient;
use crate::settings::{KeySource, Settings};

/// How long a day's usage is kept: at least the 90 days promised, with margin.
pub const RETENTION_DAYS: i64 = 100;

/// The bound on one flush or report call to Redis (off the request path).
const CALL_TIMEOUT: Duration = Duration::from_secs(2);

/// The most days one report covers.
pub const MAX_REPORT_DAYS: i64 = 400;

/// The usage store: Redis, or the folder beside the keys file.
#[derive(Debug, Clone)]
pub enum UsageStore {
    Redis(RedisClient),
    Folder(PathBuf),
}

/// `YYYY-MM-DD` of day `day` since the epoch.
pub fn date_string(day: i64) -> String {
    let (y, m, d) = civil_from_days(day);
    format!("{y:04}-{m:02}-{d:02}")
}

/// The day since the epoch of a `YYYY-MM-DD` date, if it is a real one.
pub fn parse_date(text: &str) -> Option<i64> {
    let mut parts = text.split('-');
    let (y, m, d) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || y.len() != 4 || m.len() != 2 || d.len() != 2 {
        return None;
    }
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if !digits(y) || !digits(m) || !digits(d) {
        return None;
    }
    let (y, m, d): (i64, u32, u32) = (y.parse().ok()?, m.parse().ok()?, d.parse().ok()?);
    if !(1..=12).contains(&m) || d == 0 || d > days_in_month(y, m) {
        return None;
    }
    Some(days_from_civil(y, m, d))
}

/// The Redis hash of `tenant`'s usage on `day`.
pub fn redis_key(tenant: &str, day: i64) -> String {
    format!("kg:us:{{{tenant}}}:{}", date_string(day))
}

/// The hash fields of `counts`, each prefixed with `prefix` (`""` or `"<key_id>:"`).
fn fields(prefix: &str, counts: &Counts, out: &mut Vec<(String, u64)>) {
    if counts.requests > 0 {
        out.push((format!("{prefix}n"), counts.requests));
    }
    if counts.cost > 0 {
        out.push((format!("{prefix}c"), counts.cost));
    }
    for (reason, n) in &counts.refused {
        if *n > 0 {
            out.push((format!("{prefix}x:{reason}"), *n));
        }
    }
}

/// A day's counts from its hash's fields; unknown fields are ignored.
fn from_fields(fields: HashMap<String, u64>) -> TenantDay {
    let mut day = TenantDay::default();
    for (field, n) in fields {
        let (counts, rest) = match field.split_once(':') {
            Some((key, rest)) if key.starts_with("key_") => (day.keys.entry(key.to_string()).or_default(), rest),
            _ => (&mut day.total, field.as_str()),
        };
        match rest {
            "n" => counts.requests = n,
            "c" => counts.cost = n,
            _ => {
                if let Some(reason) = rest.strip_prefix("x:") {
                    counts.refused.insert(reason.to_string().into(), n);
                }
            }
        }
    }
    day
}

impl UsageStore {
    /// `redis` or `file`, for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            UsageStore::Redis(_) => "redis",
            UsageStore::Folder(_) => "file",
        }
    }

    /// The usage store that goes with the key store: the same Redis, or the folder beside
    /// the keys file.
    pub fn of(settings: &Settings, keys: &Store) -> UsageStore {
        match (keys.redis(), &settings.keys.source) {
            (Some(redis), _) => UsageStore::Redis(redis.client().clone()),
            (None, KeySource::File(path)) => UsageStore::beside(path),
            (None, KeySource::Redis) => UsageStore::beside(Path::new("keys.json")),
        }
    }

    /// The folder beside the keys file `keys_file`.
    pub fn beside(keys_file: &Path) -> UsageStore {
        let dir = match keys_file.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        UsageStore::Folder(dir.join("usage"))
    }

    /// Adds `batch` to what is stored. All of it, or (Redis) none of it.
    pub async fn write(&self, batch: &Batch) -> Result<(), String> {
        match self {
            UsageStore::Redis(client) => write_redis(client, batch).await,
            UsageStore::Folder(dir) => {
                let dir = dir.clone();
                let batch = batch.clone();
                tokio::task::spawn_blocking(move || write_folder(&dir, &batch))
                    .await
                    .map_err(|e| format!("usage write task failed: {e}"))?
            }
        }
    }

    /// `tenant`'s days from `from` to `to` (days since the epoch, both included) that
    /// hold anything, in order.
    pub async fn read(&self, tenant: &str, from: i64, to: i64) -> Result<Vec<(i64, TenantDay)>, String> {
        match self {
            UsageStore::Redis(client) => read_redis(client, tenant, from, to).await,
            UsageStore::Folder(dir) => {
                let (dir, tenant) = (dir.clone(), tenant.to_string());
                tokio::task::spawn_blocking(move || read_folder(&dir, &tenant, from, to))
                    .await
                    .map_err(|e| format!("usage read task failed: {e}"))?
            }
        }
    }
}

async fn write_redis(client: &RedisClient, batch: &Batch) -> Result<(), String> {
    let ttl = RETENTION_DAYS * 86_400;
    // One transaction per tenant on a cluster (one slot each); one for all on one node.
    let mut pipes: BTreeMap<&str, redis::Pipeline> = BTreeMap::new();
    let mut fields_buf = Vec::new();
    for (&day, tenants) in batch {
        for (tenant, tenant_day) in tenants {
            fields_buf.clear();
            fields("", &tenant_day.total, &mut fields_buf);
            for (key, counts) in &tenant_day.keys {
                fields(&format!("{key}:"), counts, &mut fields_buf);
            }
            if fields_buf.is_empty() {
                continue;
            }
            let group = if client.is_cluster() { tenant.as_str() } else { "" };
            let pipe = pipes.entry(group).or_insert_with(|| {
                let mut pipe = redis::pipe();
                pipe.atomic();
                pipe
            });
            let key = redis_key(tenant, day);
            for (field, n) in &fields_buf {
                pipe.cmd("HINCRBY").arg(&key).arg(field).arg(*n).ignore();
            }
            pipe.cmd("EXPIRE").arg(&key).arg(ttl).ignore();
        }
    }
    let calls = pipes.into_values().map(|pipe| {
        client.run_with_timeout(StoreOp::Write, CALL_TIMEOUT, move |mut con| async move {
            pipe.query_async::<()>(&mut con).await
        })
    });
    for result in futures_util::future::join_all(calls).await {
        result.map_err(|e| format!("writing usage to Redis: {e}"))?;
    }
    Ok(())
}

async fn read_redis(client: &RedisClient, tenant: &str, from: i64, to: i64) -> Result<Vec<(i64, TenantDay)>, String> {
    let days: Vec<i64> = (from..=to).collect();
    let mut pipe = redis::pipe();
    for &day in &days {
        pipe.cmd("HGETALL").arg(redis_key(tenant, day));
    }
    let hashes: Vec<HashMap<String, u64>> = client
        .run_with_timeout(StoreOp::Lookup, CALL_TIMEOUT, move |mut con| async move { pipe.query_async(&mut con).await })
        .await
        .map_err(|e| format!("reading usage from Redis: {e}"))?;
    Ok(days.into_iter().zip(hashes).filter(|(_, h)| !h.is_empty()).map(|(day, h)| (day, from_fields(h))).collect())
}

/// One day's file: tenant → its counts.
type DayFile = BTreeMap<String, TenantDay>;

fn day_path(dir: &Path, day: i64) -> PathBuf {
    dir.join(format!("{}.json", date_string(day)))
}

fn read_day(dir: &Path, day: i64) -> Result<DayFile, String> {
    let path = day_path(dir, day);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| format!("{}: not a usage file: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(DayFile::new()),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

fn write_folder(dir: &Path, batch: &Batch) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    for (&day, tenants) in batch {
        let mut file = read_day(dir, day)?;
        for (tenant, counts) in tenants {
            file.entry(tenant.clone()).or_default().add(counts);
        }
        let mut bytes = serde_json::to_vec(&file).map_err(|e| format!("cannot serialise usage: {e}"))?;
        bytes.push(b'\n');
        let fail = |what: &str, e: &dyn std::fmt::Display| format!("{what} in {}: {e}", dir.display());
        let mut temp = tempfile::NamedTempFile::new_in(dir).map_err(|e| fail("cannot create a temporary file", &e))?;
        temp.write_all(&bytes).map_err(|e| fail("cannot write", &e))?;
        temp.as_file().sync_all().map_err(|e| fail("cannot fsync", &e))?;
        temp.persist(day_path(dir, day)).map_err(|e| fail("cannot rename into place", &e.error))?;
    }
    prune_folder(dir, batch.keys().copied().max().unwrap_or(0));
    Ok(())
}

/// Deletes the day files more than [`RETENTION_DAYS`] before `today`.
fn prune_folder(dir: &Path, today: i64) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(day) = name.to_str().and_then(|n| n.strip_suffix(".json")).and_then(parse_date) else { continue };
        if day < today - RETENTION_DAYS {
            if let Err(e) = std::fs::remove_file(entry.path()) {
                tracing::warn!(file = %entry.path().display(), error = %e, "cannot delete an expired usage file");
            }
        }
    }
}

fn read_folder(dir: &Path, tenant: &str, from: i64, to: i64) -> Result<Vec<(i64, TenantDay)>, String> {
    let mut out = Vec::new();
    for day in from..=to {
        if let Some(counts) = read_day(dir, day)?.remove(tenant) {
            out.push((day, counts));
        }
    }
    Ok(out)
}

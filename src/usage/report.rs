//! A tenant's usage report, as `keygate usage` and `GET /admin/v1/usage` give it: the
//! days of a range that hold anything (optionally one key's share alone), their total,
//! and the current count of each calendar quota of the tenant's plan. Rendered as JSON
//! (both), CSV or a table (the CLI).

use std::collections::BTreeSet;

use serde_json::{json, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::counts::{day_of, Counts, TenantDay};
use super::store::{date_string, parse_date, UsageStore, MAX_REPORT_DAYS};
use crate::keys::TenantRecord;
use crate::metrics::StoreOp;
use crate::policy::overrides::{effective, LimitOverrides};
use crate::policy::{LimitKind, PlanLimit, Policy, Rule};
use crate::redis_client::RedisClient;

/// The range of a report, in days since the epoch (both included): `from` defaults to
/// the first day of `today`'s month, `to` to `today` (UTC). Refused: a date that is not
/// `YYYY-MM-DD`, `from` after `to`, more than [`MAX_REPORT_DAYS`] days.
pub fn range(from: Option<&str>, to: Option<&str>, today: i64) -> Result<(i64, i64), String> {
    let parse = |name: &str, text: &str| {
        parse_date(text).ok_or_else(|| format!("`{name}` must be a date written YYYY-MM-DD, not `{text}`"))
    };
    let to = match to {
        Some(text) => parse("to", text)?,
        None => today,
    };
    let from = match from {
        Some(text) => parse("from", text)?,
        None => {
            let (y, m, _) = crate::policy::civil_from_days(today.min(to));
            crate::policy::days_from_civil(y, m, 1)
        }
    };
    if from > to {
        return Err(format!("`from` ({}) is after `to` ({})", date_string(from), date_string(to)));
    }
    if to - from >= MAX_REPORT_DAYS {
        return Err(format!("a report covers at most {MAX_REPORT_DAYS} days"));
    }
    Ok((from, to))
}

/// One calendar quota's count in its current period.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuotaCount {
    /// The limit's name in the plan.
    pub name: String,
    /// `day` or `month`.
    pub period: &'static str,
    pub count: u64,
    pub limit: u64,
    /// When the period ends (ms since the epoch).
    pub resets_at: u64,
}

/// The calendar quotas among `limits`, with `count(rule)` as each one's count in the
/// period holding `now_ms`.
pub fn quota_counts(limits: &[PlanLimit], now_ms: u64, mut count: impl FnMut(&Rule) -> u64) -> Vec<QuotaCount> {
    limits
        .iter()
        .filter_map(|limit| {
            let (_, end) = limit.rule.period(now_ms)?;
            let period = if limit.rule.kind == LimitKind::Day { "day" } else { "month" };
            Some(QuotaCount {
                name: limit.name.clone(),
                period,
                count: count(&limit.rule),
                limit: limit.rule.requests,
                resets_at: end,
            })
        })
        .collect()
}

/// The calendar quotas' counts as the Redis limiter keeps them (`kg:rq:{<tenant>}:day`
/// and `:month`: a count, `n`, for the period starting on day `p`; another period's count
/// is no count for this one). The count may run ahead of the admitted requests by the
/// units replicas hold in a lease (at most a second's share).
pub async fn redis_quota_counts(
    client: &RedisClient,
    tenant: &str,
    limits: &[PlanLimit],
    now_ms: u64,
) -> Result<Vec<QuotaCount>, String> {
    let quotas: Vec<&PlanLimit> = limits.iter().filter(|l| l.rule.period(now_ms).is_some()).collect();
    if quotas.is_empty() {
        return Ok(Vec::new());
    }
    let mut pipe = redis::pipe();
    for quota in &quotas {
        pipe.cmd("HMGET").arg(crate::ratelimit::redis::rule_key(tenant, &quota.rule)).arg("p").arg("n");
    }
    let read: Vec<(Option<i64>, Option<u64>)> = client
        .run_with_timeout(StoreOp::Lookup, std::time::Duration::from_secs(2), move |mut con| async move {
            pipe.query_async(&mut con).await
        })
        .await
        .map_err(|e| format!("reading the quotas from Redis: {e}"))?;
    let mut answers = read.into_iter();
    Ok(quota_counts(limits, now_ms, |rule| {
        let (p, n) = answers.next().unwrap_or((None, None));
        let start = rule.period(now_ms).map_or(-1, |(start, _)| day_of(start));
        if p == Some(start) {
            n.unwrap_or(0)
        } else {
            0
        }
    }))
}

/// The limits whose calendar quotas a report of `tenant` shows: its plan's, with the
/// tenant's own overrides applied (a tenant's `month` override replaces the plan's, as in
/// its admissions). A key's own limits count in counters of that key alone and are not
/// the tenant's quota. `Err`: the plan is not in the policy.
pub fn tenant_limits(policy: &Policy, tenant: &TenantRecord) -> Result<Vec<PlanLimit>, String> {
    let plan = policy.plans.get(&tenant.plan).ok_or_else(|| format!("plan {} is not in the policy", tenant.plan))?;
    Ok(effective(&plan.limits, &tenant.overrides, &LimitOverrides::default()).into_iter().map(|(l, _)| l).collect())
}

/// Where the calendar quotas' current counts are read.
pub enum QuotaSource<'a> {
    /// The Redis limiter's counters.
    Redis(&'a RedisClient),
    /// This process's local limiter (the running keygate, through its admin API).
    Local(&'a (dyn Fn(&Rule) -> Option<u64> + Sync)),
    /// The local limiter of a process that is not this one (the CLI): not readable.
    Offline,
}

/// `tenant`'s usage report: its days in `range` (`key`'s share alone when given) and, from
/// `source`, the current counts of its plan's calendar quotas (`plan`'s limits; `None`:
/// the tenant or its plan is unknown, said in the report).
pub async fn tenant_report(
    usage: &UsageStore,
    tenant: &str,
    key: Option<&str>,
    range: (i64, i64),
    plan: Result<&[PlanLimit], String>,
    source: QuotaSource<'_>,
    now_ms: u64,
) -> Result<Report, String> {
    let quotas = match plan {
        Err(why) => Err(why),
        Ok(limits) if limits.iter().all(|l| l.rule.period(now_ms).is_none()) => Ok(Vec::new()),
        Ok(limits) => match source {
            QuotaSource::Redis(client) => redis_quota_counts(client, tenant, limits, now_ms).await,
            QuotaSource::Local(count) => {
                let counts = quota_counts(limits, now_ms, |rule| count(rule).unwrap_or(0));
                Ok(counts)
            }
            QuotaSource::Offline => Err(OFFLINE.to_string()),
        },
    };
    Report::read(usage, tenant, key, range, quotas).await
}

/// Why the CLI shows no quota counts with the local limiter.
pub const OFFLINE: &str = "not available offline: with limits.backend = \"local\" the counts live in the running \
                           keygate's memory; ask its admin API (GET /admin/v1/usage)";

/// What a report shows.
#[derive(Debug, Clone)]
pub struct Report {
    pub tenant: String,
    /// One key's share alone.
    pub key: Option<String>,
    pub from: i64,
    pub to: i64,
    /// The days that hold anything, in order.
    pub days: Vec<(i64, TenantDay)>,
    /// The plan's calendar quotas now, or why they cannot be shown.
    pub quotas: Result<Vec<QuotaCount>, String>,
}

impl Report {
    /// Reads `tenant`'s days from `store` (only `key`'s share when given).
    pub async fn read(
        store: &UsageStore,
        tenant: &str,
        key: Option<&str>,
        (from, to): (i64, i64),
        quotas: Result<Vec<QuotaCount>, String>,
    ) -> Result<Report, String> {
        let mut days = store.read(tenant, from, to).await?;
        if let Some(key) = key {
            days = days
                .into_iter()
                .filter_map(|(day, mut counts)| {
                    let mine = counts.keys.remove(key)?;
                    let keys = [(key.to_string(), mine.clone())].into();
                    Some((day, TenantDay { total: mine, keys }))
                })
                .collect();
        }
        Ok(Report { tenant: tenant.to_string(), key: key.map(str::to_string), from, to, days, quotas })
    }

    /// The counts of every day.
    pub fn total(&self) -> Counts {
        let mut total = Counts::default();
        for (_, day) in &self.days {
            total.add(&day.total);
        }
        total
    }

    /// The JSON answer: `tenant`, `key`, `from`, `to`, `total`, `days` (each `date`, its
    /// counts and `keys`), `quotas` (and `quotas_unavailable` when they cannot be read).
    pub fn to_json(&self) -> Value {
        let days: Vec<Value> = self
            .days
            .iter()
            .map(|(day, counts)| {
                let mut value = counts_json(&counts.total);
                value["date"] = json!(date_string(*day));
                value["keys"] = counts.keys.iter().map(|(k, c)| (k.clone(), counts_json(c))).collect();
                value
            })
            .collect();
        let mut answer = json!({
            "tenant": self.tenant,
            "key": self.key,
            "from": date_string(self.from),
            "to": date_string(self.to),
            "total": counts_json(&self.total()),
            "days": days,
        });
        match &self.quotas {
            Ok(quotas) => answer["quotas"] = quotas.iter().map(quota_json).collect(),
            Err(why) => {
                answer["quotas"] = json!([]);
                answer["quotas_unavailable"] = json!(why);
            }
        }
        answer
    }

    /// CSV: `date,key,requests,cost,refused` and one column per refusal reason seen; a
    /// row per day for the tenant (`key` empty) and one per key.
    pub fn to_csv(&self) -> String {
        let reasons = self.reasons();
        let mut out = String::from("date,key,requests,cost,refused");
        for reason in &reasons {
            out.push_str(&format!(",refused_{reason}"));
        }
        out.push('\n');
        for (day, counts) in &self.days {
            let date = date_string(*day);
            let rows = std::iter::once(("", &counts.total)).chain(counts.keys.iter().map(|(k, c)| (k.as_str(), c)));
            for (key, c) in rows {
                out.push_str(&format!("{date},{key},{},{},{}", c.requests, c.cost, c.refused_total()));
                for reason in &reasons {
                    out.push_str(&format!(",{}", c.refused.get(reason.as_str()).copied().unwrap_or(0)));
                }
                out.push('\n');
            }
        }
        out
    }

    /// A table for people: a line per day and key, the total, and the quotas
    /// (`month: 41,230 of 100,000`).
    pub fn to_table(&self) -> String {
        let mut out = format!("Usage of tenant {}", self.tenant);
        if let Some(key) = &self.key {
            out.push_str(&format!(", key {key}"));
        }
        out.push_str(&format!(" from {} to {} (UTC)\n", date_string(self.from), date_string(self.to)));
        let mut rows = vec![["DATE".to_string(), "KEY".into(), "REQUESTS".into(), "COST".into(), "REFUSED".into()]];
        for (day, counts) in &self.days {
            let date = date_string(*day);
            rows.push([
                date.clone(),
                "(all)".into(),
                grouped(counts.total.requests),
                grouped(counts.total.cost),
                refused(&counts.total),
            ]);
            for (key, c) in &counts.keys {
                rows.push([date.clone(), key.clone(), grouped(c.requests), grouped(c.cost), refused(c)]);
            }
        }
        let total = self.total();
        rows.push(["total".into(), String::new(), grouped(total.requests), grouped(total.cost), refused(&total)]);
        let widths: Vec<usize> = (0..5).map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0)).collect();
        for row in &rows {
            let line: Vec<String> = row.iter().zip(&widths).map(|(cell, w)| format!("{cell:<w$}")).collect();
            out.push_str(line.join("  ").trim_end());
            out.push('\n');
        }
        match &self.quotas {
            Ok(quotas) if quotas.is_empty() => out.push_str("Quotas: none in the plan\n"),
            Ok(quotas) => {
                out.push_str("Quotas now:\n");
                for q in quotas {
                    out.push_str(&format!(
                        "  {}: {} of {} (resets {})\n",
                        q.name,
                        grouped(q.count),
                        grouped(q.limit),
                        rfc3339(q.resets_at)
                    ));
                }
            }
            Err(why) => out.push_str(&format!("Quotas: {why}\n")),
        }
        out
    }

    /// Every refusal reason in the report, sorted.
    fn reasons(&self) -> Vec<String> {
        let mut reasons = BTreeSet::new();
        for (_, day) in &self.days {
            for counts in std::iter::once(&day.total).chain(day.keys.values()) {
                reasons.extend(counts.refused.keys().map(|r| r.to_string()));
            }
        }
        reasons.into_iter().collect()
    }
}

fn counts_json(counts: &Counts) -> Value {
    json!({
        "requests": counts.requests,
        "cost": counts.cost,
        "refused": counts.refused,
        "refused_total": counts.refused_total(),
    })
}

fn quota_json(quota: &QuotaCount) -> Value {
    json!({
        "name": quota.name,
        "period": quota.period,
        "count": quota.count,
        "limit": quota.limit,
        "resets_at": rfc3339(quota.resets_at),
    })
}

fn rfc3339(ms: u64) -> String {
    let nanos = i128::from(ms) * 1_000_000;
    OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| ms.to_string())
}

/// `41230` as `41,230`.
pub fn grouped(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `3 (rate_limited 2, forbidden 1)`, or `0`.
fn refused(counts: &Counts) -> String {
    let total = counts.refused_total();
    if total == 0 {
        return "0".to_string();
    }
    let parts: Vec<String> = counts.refused.iter().filter(|(_, n)| **n > 0).map(|(r, n)| format!("{r} {n}")).collect();
    format!("{} ({})", grouped(total), parts.join(", "))
}

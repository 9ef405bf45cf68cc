use std::sync::Arc;

use super::store::{date_string, parse_date, redis_key, RETENTION_DAYS};
use super::*;
use crate::clock::ManualClock;
use crate::usage::report::{grouped, range, Report};

/// 2026-12-31T23:59:59.500Z.
const NEW_YEARS_EVE: u64 = 1_798_761_599_500;

fn usage_in(dir: &std::path::Path, clock: Arc<ManualClock>) -> Usage {
    Usage::new(UsageStore::Folder(dir.to_path_buf()), clock, Arc::new(Metrics::new()))
}

#[test]
fn dates_are_utc_days_written_yyyy_mm_dd() {
    assert_eq!(date_string(day_of(NEW_YEARS_EVE)), "2026-12-31");
    assert_eq!(date_string(day_of(NEW_YEARS_EVE + 500)), "2027-01-01");
    assert_eq!(parse_date("2026-12-31"), Some(day_of(NEW_YEARS_EVE)));
    assert_eq!(parse_date("2024-02-29").map(date_string).as_deref(), Some("2024-02-29"));
    for bad in ["2026-02-29", "2026-13-01", "2026-1-01", "26-01-01", "2026-01-01x", "", "2026-00-10", "+026-01-01"] {
        assert_eq!(parse_date(bad), None, "{bad}");
    }
    assert_eq!(redis_key("acme", day_of(NEW_YEARS_EVE)), "kg:us:{acme}:2026-12-31");
}

#[test]
fn a_range_defaults_to_this_month_until_today_and_is_bounded() {
    let today = parse_date("2026-12-17").unwrap();
    let (from, to) = range(None, None, today).unwrap();
    assert_eq!((date_string(from).as_str(), date_string(to).as_str()), ("2026-12-01", "2026-12-17"));
    let (from, to) = range(Some("2026-11-30"), Some("2026-12-02"), today).unwrap();
    assert_eq!(to - from, 2);
    let (from, _) = range(None, Some("2026-10-05"), today).unwrap();
    assert_eq!(date_string(from), "2026-10-01");
    assert!(range(Some("2026-12-03"), Some("2026-12-02"), today).unwrap_err().contains("after"));
    assert!(range(Some("2025-01-01"), Some("2026-12-02"), today).unwrap_err().contains("at most"));
    assert!(range(Some("yesterday"), None, today).unwrap_err().contains("YYYY-MM-DD"));
}

#[test]
fn counts_per_tenant_key_and_day_with_refusals_by_reason() {
    let clock = Arc::new(ManualClock::new(NEW_YEARS_EVE));
    let dir = tempfile::tempdir().unwrap();
    let usage = usage_in(dir.path(), clock.clone());
    usage.record("acme", "key_a", Outcome::Admitted { cost: 5 });
    usage.record("acme", "key_a", Outcome::Admitted { cost: 1 });
    usage.record("acme", "key_b", Outcome::Refused("rate_limited"));
    usage.record("acme", "key_b", Outcome::Refused("forbidden"));
    usage.record("other", "key_c", Outcome::Admitted { cost: 1 });
    clock.advance(Duration::from_secs(1)); // past midnight UTC
    usage.record("acme", "key_a", Outcome::Admitted { cost: 2 });

    let batch = usage.take();
    let eve = &batch[&day_of(NEW_YEARS_EVE)]["acme"];
    assert_eq!((eve.total.requests, eve.total.cost, eve.total.refused_total()), (2, 6, 2));
    assert_eq!(eve.keys["key_a"].cost, 6);
    assert_eq!(eve.keys["key_b"].refused.get("rate_limited"), Some(&1));
    assert_eq!(eve.keys["key_b"].refused.get("forbidden"), Some(&1));
    let new_year = &batch[&(day_of(NEW_YEARS_EVE) + 1)]["acme"];
    assert_eq!((new_year.total.requests, new_year.total.cost), (1, 2));
    assert_eq!(batch[&day_of(NEW_YEARS_EVE)]["other"].total.cost, 1);
    assert!(usage.take().is_empty(), "taken once");
}

#[tokio::test]
async fn the_folder_adds_each_flush_to_the_day_file_and_reads_it_back() {
    let clock = Arc::new(ManualClock::new(NEW_YEARS_EVE));
    let dir = tempfile::tempdir().unwrap();
    let usage = usage_in(&dir.path().join("usage"), clock.clone());
    for _ in 0..3 {
        usage.record("acme", "key_a", Outcome::Admitted { cost: 2 });
        usage.record("acme", "key_b", Outcome::Refused("rate_limited"));
        usage.flush_now().await.unwrap();
    }
    let day = day_of(NEW_YEARS_EVE);
    let days = usage.store().read("acme", day - 1, day + 1).await.unwrap();
    assert_eq!(days.len(), 1);
    let (read_day, counts) = &days[0];
    assert_eq!(*read_day, day);
    assert_eq!((counts.total.requests, counts.total.cost), (3, 6));
    assert_eq!(counts.keys["key_b"].refused.get("rate_limited"), Some(&3));
    assert!(dir.path().join("usage/2026-12-31.json").is_file());
    assert!(usage.store().read("nobody", day, day).await.unwrap().is_empty());
    // No temporary file is left behind.
    assert_eq!(std::fs::read_dir(dir.path().join("usage")).unwrap().count(), 1);
}

#[tokio::test]
async fn the_folder_keeps_retention_days_and_deletes_older_files() {
    let clock = Arc::new(ManualClock::new(NEW_YEARS_EVE));
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("usage");
    std::fs::create_dir_all(&folder).unwrap();
    let today = day_of(NEW_YEARS_EVE);
    let old = folder.join(format!("{}.json", date_string(today - RETENTION_DAYS - 1)));
    let kept = folder.join(format!("{}.json", date_string(today - RETENTION_DAYS)));
    std::fs::write(&old, "{}").unwrap();
    std::fs::write(&kept, "{}").unwrap();
    let usage = usage_in(&folder, clock);
    usage.record("acme", "key_a", Outcome::Admitted { cost: 1 });
    usage.flush_now().await.unwrap();
    assert!(!old.exists(), "a day older than the retention is deleted");
    assert!(kept.exists(), "the retention's last day is kept");
}

#[tokio::test]
async fn a_failed_flush_keeps_the_counts_and_the_next_one_writes_them() {
    let clock = Arc::new(ManualClock::new(NEW_YEARS_EVE));
    let dir = tempfile::tempdir().unwrap();
    // A file where the folder should be: every write fails until it is removed.
    let folder = dir.path().join("usage");
    std::fs::write(&folder, "in the way").unwrap();
    let metrics = Arc::new(Metrics::new());
    let usage = Usage::new(UsageStore::Folder(folder.clone()), clock.clone(), metrics.clone());
    let mut flusher = Flusher::default();
    usage.record("acme", "key_a", Outcome::Admitted { cost: 3 });
    flusher.flush(&usage).await;
    usage.record("acme", "key_a", Outcome::Admitted { cost: 4 });
    clock.advance(Duration::from_secs(2));
    flusher.flush(&usage).await;
    assert_eq!(flusher.entries, 2, "the tenant and its key wait");
    let text = metrics.encode();
    assert!(text.contains("keygate_usage_flushes_total{result=\"failure\"} 2"), "{text}");
    assert!(text.contains("keygate_usage_flush_lag_seconds 2"), "{text}");

    std::fs::remove_file(&folder).unwrap();
    flusher.flush(&usage).await;
    assert!(flusher.pending.is_empty());
    let day = day_of(NEW_YEARS_EVE);
    let days = usage.store().read("acme", day, day + 1).await.unwrap();
    assert_eq!(days[0].1.total.cost, 7, "nothing was lost");
    let text = metrics.encode();
    assert!(text.contains("keygate_usage_flushes_total{result=\"success\"} 1"), "{text}");
    assert!(text.contains("keygate_usage_flush_lag_seconds 0"), "{text}");
}

#[test]
fn what_waits_is_bounded_and_what_is_dropped_is_counted() {
    let mut flusher = Flusher::default();
    let mut batch = Batch::new();
    let tenants = batch.entry(1).or_default();
    for i in 0..MAX_PENDING_ENTRIES / 2 {
        let mut day = TenantDay::default();
        day.total.record(Outcome::Admitted { cost: 1 });
        day.keys.insert(format!("key_{i}"), day.total.clone());
        tenants.insert(format!("t{i}"), day);
    }
    assert_eq!(flusher.merge(batch), 0);
    assert_eq!(flusher.entries, MAX_PENDING_ENTRIES);

    let mut more = Batch::new();
    let mut known = TenantDay::default();
    known.total.record(Outcome::Admitted { cost: 1 });
    known.keys.insert("key_0".into(), known.total.clone());
    let mut new_key = known.clone();
    new_key.keys.insert("key_new".into(), known.total.clone());
    more.entry(1).or_default().insert("t0".into(), new_key);
    more.entry(1).or_default().insert("brand-new".into(), known.clone());
    assert_eq!(flusher.merge(more), 2, "a new tenant and a new key are dropped");
    assert_eq!(flusher.entries, MAX_PENDING_ENTRIES);
    let t0 = &flusher.pending[&1]["t0"];
    assert_eq!((t0.total.requests, t0.keys["key_0"].requests), (2, 2), "known entries still add up");
}

#[test]
fn reports_render_as_json_csv_and_a_table() {
    let day = parse_date("2026-12-01").unwrap();
    let total = Counts { requests: 41_230, cost: 41_300, refused: [("rate_limited".into(), 2)].into() };
    let mut counts = TenantDay { total, ..Default::default() };
    counts.keys.insert("key_a".into(), counts.total.clone());
    let quotas = vec![report::QuotaCount {
        name: "month".into(),
        period: "month",
        count: 41_230,
        limit: 100_000,
        resets_at: 1_798_761_600_000,
    }];
    let report = Report {
        tenant: "acme".into(),
        key: None,
        from: day,
        to: day + 2,
        days: vec![(day, counts)],
        quotas: Ok(quotas),
    };
    let json = report.to_json();
    assert_eq!(json["days"][0]["date"], "2026-12-01");
    assert_eq!(json["days"][0]["keys"]["key_a"]["refused"]["rate_limited"], 2);
    assert_eq!(json["total"]["cost"], 41_300);
    assert_eq!(json["quotas"][0]["count"], 41_230);
    assert_eq!(json["quotas"][0]["resets_at"], "2027-01-01T00:00:00Z");
    assert_eq!(
        report.to_csv(),
        "date,key,requests,cost,refused,refused_rate_limited\n2026-12-01,,41230,41300,2,2\n2026-12-01,key_a,41230,41300,2,2\n"
    );
    let table = report.to_table();
    assert!(table.contains("month: 41,230 of 100,000"), "{table}");
    assert!(table.contains("2 (rate_limited 2)"), "{table}");
    assert_eq!(
        (grouped(0), grouped(999), grouped(1_000), grouped(1_234_567)),
        ("0".into(), "999".into(), "1,000".into(), "1,234,567".into())
    );
}

#[test]
fn the_local_limiter_tells_a_quota_count_of_the_current_period_only() {
    use crate::policy::{LimitKind, Rule};
    use crate::ratelimit::LocalLimiter;
    let clock = Arc::new(ManualClock::new(NEW_YEARS_EVE - 86_400_000));
    let limiter = LocalLimiter::new(clock.clone());
    let month = Rule { requests: 100, kind: LimitKind::Month { reset_day: 1 } };
    let day = Rule { requests: 10, kind: LimitKind::Day };
    assert!(limiter.check_rules("acme", &[month, day], 3).allowed);
    assert_eq!((limiter.quota_count("acme", &month), limiter.quota_count("acme", &day)), (3, 3));
    clock.set(NEW_YEARS_EVE);
    assert_eq!((limiter.quota_count("acme", &month), limiter.quota_count("acme", &day)), (3, 0), "a new day");
    clock.set(NEW_YEARS_EVE + 1_000);
    assert_eq!(limiter.quota_count("acme", &month), 0, "a new month");
    assert_eq!(limiter.quota_count("nobody", &month), 0);
}

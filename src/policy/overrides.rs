//! Limit overrides: the limits a tenant or a single key carries beside its plan's
//! (`keygate tenants|keys set-limits`, `PUT /admin/v1/{tenants,keys}/…/limits`), their
//! stored and JSON shape (the policy's `limits = [...]` entries), their validation, and how
//! they combine with the plan into a request's effective limits.
//!
//! Effective limits are the plan's, then the tenant's overrides, then the key's: an
//! override replaces the limit of the same name, or is added. The limiters keep one
//! counter per window length (and per kind of calendar period) of a tenant, so two limits
//! of one effective set may not count over the same window: setting such an override is
//! refused ([`LimitOverrides::check_against`]); should a later policy edit create the
//! clash, the override replaces the limit it clashes with ([`effective`]).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::limit::{LimitKind, PlanLimit, Rule};

/// The most limits one override may carry.
pub const MAX_OVERRIDE_LIMITS: usize = 16;

/// One limit in the policy's shape: `{"name", "requests", "window" | "period", "reset_day"}`,
/// as the admin API takes it and the stores keep it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOverrideLimit {
    pub name: String,
    pub requests: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub period: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reset_day: Option<u8>,
}

/// Overrides as the admin API takes them and the stores keep them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOverrides {
    #[serde(default)]
    pub limits: Vec<RawOverrideLimit>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<u32>,
}

/// A tenant's or a key's own limits (validated): each replaces the plan's limit of the
/// same name, or adds one; and its own `concurrency` cap, if any. Empty (the default) for
/// nearly every tenant and key: then the plan alone decides, at exactly the cost of a
/// principal without overrides.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawOverrides", into = "RawOverrides")]
pub struct LimitOverrides {
    pub limits: Vec<PlanLimit>,
    /// Requests in flight at once (replaces the plan's `concurrency`).
    pub concurrency: Option<u32>,
}

/// Where an effective limit comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitSource {
    Plan,
    Tenant,
    Key,
}

impl LimitSource {
    /// `plan`, `tenant` or `key`, as the admin API and the CLI show it.
    pub fn as_str(self) -> &'static str {
        match self {
            LimitSource::Plan => "plan",
            LimitSource::Tenant => "tenant",
            LimitSource::Key => "key",
        }
    }
}

/// Whether two limits count over the same window or period, so share a counter.
pub fn same_counter(a: &Rule, b: &Rule) -> bool {
    match (a.kind, b.kind) {
        (LimitKind::Window(a), LimitKind::Window(b)) => a == b,
        (LimitKind::Day, LimitKind::Day) => true,
        (LimitKind::Month { .. }, LimitKind::Month { .. }) => true,
        _ => false,
    }
}

fn what(rule: &Rule) -> String {
    match rule.kind {
        LimitKind::Window(w) => format!("the same window ({})", crate::duration::format(w)),
        LimitKind::Day => "the same period (a day)".to_string(),
        LimitKind::Month { .. } => "the same period (a month)".to_string(),
    }
}

impl LimitOverrides {
    /// No limit and no concurrency: nothing to store.
    pub fn is_empty(&self) -> bool {
        self.limits.is_empty() && self.concurrency.is_none()
    }

    /// Validates overrides against the same rules as a plan's `limits`: names of letters,
    /// digits, `-` and `_`, unique; `requests` at least 1; a whole-second `window` of at
    /// least 1s, or `period = "day" | "month"` (`reset_day` 1 to 31 for a month); no two
    /// over the same window or period; `concurrency` at least 1.
    pub fn from_raw(raw: RawOverrides) -> Result<LimitOverrides, String> {
        if raw.limits.len() > MAX_OVERRIDE_LIMITS {
            return Err(format!("at most {MAX_OVERRIDE_LIMITS} limits may be overridden, not {}", raw.limits.len()));
        }
        let mut limits: Vec<PlanLimit> = Vec::with_capacity(raw.limits.len());
        for entry in raw.limits {
            let limit = limit_from_raw(entry)?;
            if limits.iter().any(|other| other.name == limit.name) {
                return Err(format!("two limits are named `{}`: names are unique", limit.name));
            }
            if let Some(other) = limits.iter().find(|other| same_counter(&other.rule, &limit.rule)) {
                return Err(format!(
                    "limits `{}` and `{}` have {}; the smaller one always decides, keep one",
                    other.name,
                    limit.name,
                    what(&limit.rule)
                ));
            }
            limits.push(limit);
        }
        if raw.concurrency == Some(0) {
            return Err("`concurrency` is 0; it is at least 1 (leave it out for the plan's)".to_string());
        }
        Ok(LimitOverrides { limits, concurrency: raw.concurrency })
    }

    /// The raw (stored, JSON) shape.
    pub fn to_raw(&self) -> RawOverrides {
        RawOverrides { limits: self.limits.iter().map(limit_to_raw).collect(), concurrency: self.concurrency }
    }

    /// Refuses overrides that would put two limits of different names over one window or
    /// period in the effective set on top of `base` (the plan's limits, and for a key its
    /// tenant's overrides): they would share one counter. The message says which name to
    /// use to replace the limit instead.
    pub fn check_against(&self, base: &[PlanLimit]) -> Result<(), String> {
        for limit in &self.limits {
            if let Some(other) =
                base.iter().find(|other| other.name != limit.name && same_counter(&other.rule, &limit.rule))
            {
                return Err(format!(
                    "limit `{}` has {} as the effective limit `{}`; name it `{}` to replace that one",
                    limit.name,
                    what(&limit.rule),
                    other.name,
                    other.name
                ));
            }
        }
        Ok(())
    }
}

impl TryFrom<RawOverrides> for LimitOverrides {
    type Error = String;

    fn try_from(raw: RawOverrides) -> Result<Self, Self::Error> {
        LimitOverrides::from_raw(raw)
    }
}

impl From<LimitOverrides> for RawOverrides {
    fn from(overrides: LimitOverrides) -> Self {
        overrides.to_raw()
    }
}

fn limit_from_raw(raw: RawOverrideLimit) -> Result<PlanLimit, String> {
    let name = raw.name;
    if name.is_empty() || name.len() > 64 || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
        return Err(format!(
            "limit name `{name}` must be 1-64 letters, digits, `-` and `_` (it is sent in the rate-limit headers and the 429)"
        ));
    }
    if raw.requests == 0 || raw.requests > 1 << 53 {
        return Err(format!("limit `{name}`: `requests` is {}; it is 1 to 2^53", raw.requests));
    }
    let kind = match (raw.window, raw.period.as_deref(), raw.reset_day) {
        (Some(_), Some(_), _) => {
            return Err(format!(
                "limit `{name}` has both a `window` and a `period`: a limit is either a sliding `window` or a calendar `period`, keep one"
            ))
        }
        (None, None, _) => {
            return Err(format!(
                "limit `{name}` has neither a `window` (sliding, e.g. \"60s\") nor a `period` (\"day\" or \"month\")"
            ))
        }
        (Some(_), None, Some(_)) => {
            return Err(format!("limit `{name}`: `reset_day` belongs to a `period = \"month\"` quota"))
        }
        (Some(window), None, None) => {
            let d = crate::duration::parse(&window).map_err(|e| format!("limit `{name}`: `window`: {e}"))?;
            if d.subsec_nanos() != 0 || d < Duration::from_secs(1) {
                return Err(format!(
                    "limit `{name}`: `window` is \"{window}\"; a window is a whole number of seconds, at least 1s"
                ));
            }
            LimitKind::Window(d)
        }
        (None, Some("day"), None) => LimitKind::Day,
        (None, Some("day"), Some(_)) => {
            return Err(format!("limit `{name}`: `reset_day` is for `period = \"month\"`; a day starts at 00:00 UTC"))
        }
        (None, Some("month"), day) => match day.unwrap_or(1) {
            day @ 1..=31 => LimitKind::Month { reset_day: day },
            day => return Err(format!("limit `{name}`: `reset_day` is {day}; it is a day of the month, 1 to 31")),
        },
        (None, Some(other), _) => {
            return Err(format!("limit `{name}`: `period` is \"{other}\"; use \"day\" or \"month\""))
        }
    };
    Ok(PlanLimit { name, rule: Rule { requests: raw.requests, kind } })
}

fn limit_to_raw(limit: &PlanLimit) -> RawOverrideLimit {
    let (window, period, reset_day) = match limit.rule.kind {
        LimitKind::Window(w) => (Some(crate::duration::format(w)), None, None),
        LimitKind::Day => (None, Some("day".to_string()), None),
        LimitKind::Month { reset_day: 1 } => (None, Some("month".to_string()), None),
        LimitKind::Month { reset_day } => (None, Some("month".to_string()), Some(reset_day)),
    };
    RawOverrideLimit { name: limit.name.clone(), requests: limit.rule.requests, window, period, reset_day }
}

/// Parses the CLI's `--limit NAME=SPEC`: `minute=600/60s` (a sliding window: any duration
/// of whole seconds), `daily=10000/day`, `month=250000/month`, `month=250000/month@15`
/// (a month resetting on day 15).
pub fn parse_cli_limit(text: &str) -> Result<RawOverrideLimit, String> {
    let usage =
        "write NAME=REQUESTS/WINDOW (e.g. minute=600/60s), NAME=REQUESTS/day, or NAME=REQUESTS/month[@RESET_DAY]";
    let (name, spec) = text.split_once('=').ok_or_else(|| format!("`--limit {text}`: {usage}"))?;
    let (requests, per) = spec.split_once('/').ok_or_else(|| format!("`--limit {text}`: {usage}"))?;
    let requests: u64 = requests
        .trim()
        .parse()
        .map_err(|_| format!("`--limit {text}`: `{requests}` is not a whole number; {usage}"))?;
    let name = name.trim().to_string();
    let raw = match per.trim() {
        "day" => RawOverrideLimit { name, requests, window: None, period: Some("day".into()), reset_day: None },
        "month" => RawOverrideLimit { name, requests, window: None, period: Some("month".into()), reset_day: None },
        other => match other.strip_prefix("month@") {
            Some(day) => {
                let day: u8 =
                    day.parse().map_err(|_| format!("`--limit {text}`: `{day}` is not a day of the month"))?;
                RawOverrideLimit { name, requests, window: None, period: Some("month".into()), reset_day: Some(day) }
            }
            None => RawOverrideLimit { name, requests, window: Some(other.to_string()), period: None, reset_day: None },
        },
    };
    Ok(raw)
}

/// The effective limits of a request: `plan`'s, then `tenant`'s overrides, then `key`'s,
/// each with where it comes from. An override replaces the limit of the same name, else
/// (a clash a later policy edit created: refused when the override was set) the limit over
/// the same window or period; otherwise it is added at the end.
pub fn effective(plan: &[PlanLimit], tenant: &LimitOverrides, key: &LimitOverrides) -> Vec<(PlanLimit, LimitSource)> {
    let mut limits: Vec<(PlanLimit, LimitSource)> =
        plan.iter().map(|limit| (limit.clone(), LimitSource::Plan)).collect();
    for (overrides, source) in [(tenant, LimitSource::Tenant), (key, LimitSource::Key)] {
        for limit in &overrides.limits {
            let at = limits
                .iter()
                .position(|(other, _)| other.name == limit.name)
                .or_else(|| limits.iter().position(|(other, _)| same_counter(&other.rule, &limit.rule)));
            match at {
                Some(i) => limits[i] = (limit.clone(), source),
                None => limits.push((limit.clone(), source)),
            }
        }
    }
    limits
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(name: &str, requests: u64, secs: u64) -> PlanLimit {
        PlanLimit { name: name.into(), rule: Rule { requests, kind: LimitKind::Window(Duration::from_secs(secs)) } }
    }

    fn raw(json: &str) -> Result<LimitOverrides, String> {
        serde_json::from_str::<LimitOverrides>(json).map_err(|e| e.to_string())
    }

    #[test]
    fn the_json_shape_is_the_policys() {
        let o = raw(r#"{"limits":[{"name":"minute","requests":600,"window":"60s"},
            {"name":"month","requests":250000,"period":"month","reset_day":15}],"concurrency":20}"#)
        .unwrap();
        assert_eq!(o.limits[0], window("minute", 600, 60));
        assert_eq!(o.limits[1].rule.kind, LimitKind::Month { reset_day: 15 });
        assert_eq!(o.concurrency, Some(20));
        let back = serde_json::to_string(&o).unwrap();
        assert_eq!(
            back,
            r#"{"limits":[{"name":"minute","requests":600,"window":"1m"},{"name":"month","requests":250000,"period":"month","reset_day":15}],"concurrency":20}"#
        );
        assert_eq!(raw(&back).unwrap(), o);
        assert!(raw(r#"{"limits":[]}"#).unwrap().is_empty());
    }

    #[test]
    fn bad_overrides_are_refused() {
        for (json, why) in [
            (r#"{"limits":[{"name":"m","requests":0,"window":"60s"}]}"#, "1 to 2^53"),
            (r#"{"limits":[{"name":"m","requests":1,"window":"1500ms"}]}"#, "whole number of seconds"),
            (r#"{"limits":[{"name":"m","requests":1}]}"#, "neither"),
            (r#"{"limits":[{"name":"m","requests":1,"window":"1s","period":"day"}]}"#, "both"),
            (r#"{"limits":[{"name":"m","requests":1,"period":"week"}]}"#, "\"day\" or \"month\""),
            (r#"{"limits":[{"name":"m","requests":1,"period":"month","reset_day":32}]}"#, "1 to 31"),
            (r#"{"limits":[{"name":"m n","requests":1,"window":"1s"}]}"#, "letters, digits"),
            (
                r#"{"limits":[{"name":"a","requests":1,"window":"1s"},{"name":"a","requests":2,"window":"2s"}]}"#,
                "unique",
            ),
            (
                r#"{"limits":[{"name":"a","requests":1,"window":"60s"},{"name":"b","requests":2,"window":"1m"}]}"#,
                "same window",
            ),
            (r#"{"concurrency":0}"#, "at least 1"),
            (r#"{"limits":[],"x":1}"#, "unknown field"),
        ] {
            let err = raw(json).unwrap_err();
            assert!(err.contains(why), "{json}: {err}");
        }
    }

    #[test]
    fn cli_spellings() {
        let parse =
            |t: &str| LimitOverrides::from_raw(RawOverrides { limits: vec![parse_cli_limit(t)?], concurrency: None });
        assert_eq!(parse("minute=600/60s").unwrap().limits[0], window("minute", 600, 60));
        assert_eq!(parse("d=5/day").unwrap().limits[0].rule.kind, LimitKind::Day);
        assert_eq!(parse("m=5/month").unwrap().limits[0].rule.kind, LimitKind::Month { reset_day: 1 });
        assert_eq!(parse("m=5/month@31").unwrap().limits[0].rule.kind, LimitKind::Month { reset_day: 31 });
        assert!(parse("minute").is_err());
        assert!(parse("minute=x/60s").is_err());
        assert!(parse("m=5/month@0").is_err());
        assert!(parse("m=5/fortnight").is_err());
    }

    #[test]
    fn effective_limits_layer_plan_tenant_key() {
        let plan = vec![window("burst", 10, 1), window("minute", 300, 60)];
        let tenant =
            LimitOverrides { limits: vec![window("minute", 600, 60), window("hour", 5000, 3600)], concurrency: None };
        let key = LimitOverrides { limits: vec![window("burst", 2, 1)], concurrency: Some(3) };
        let eff = effective(&plan, &tenant, &key);
        let shown: Vec<(&str, u64, &str)> =
            eff.iter().map(|(l, s)| (l.name.as_str(), l.rule.requests, s.as_str())).collect();
        assert_eq!(shown, [("burst", 2, "key"), ("minute", 600, "tenant"), ("hour", 5000, "tenant")]);
        // Another name over a window the plan already counts: refused when set...
        let clash = LimitOverrides { limits: vec![window("per-minute", 100, 60)], concurrency: None };
        assert!(clash.check_against(&plan).unwrap_err().contains("name it `minute`"));
        // ...and, should the policy create the clash later, it replaces that limit.
        let eff = effective(&plan, &clash, &LimitOverrides::default());
        assert_eq!(eff.len(), 2);
        assert_eq!(eff[1].0.name, "per-minute");
    }
}

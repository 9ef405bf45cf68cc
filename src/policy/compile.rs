//! Validates and compiles a parsed `routes.toml` into a [`Policy`]: the top-level
//! settings, `[paths]`, `[scopes]`, `[plans]` and `[upstreams]` here, `[[routes]]` in
//! `compile_routes`. Every finding goes to the [`Checker`]; invalid parts are left out
//! of the result.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use serde_spanned::Spanned;
use sha2::{Digest, Sha256};

use super::compile_routes::compile_routes;
use super::limit::{Limit, LimitKind, PlanLimit, Rule, LEGACY_LIMIT_NAME};
use super::model::{Plan, Policy};
use super::rate_headers::PlanHeaders;
use super::raw;
use super::routes::RouteTable;
use super::upstream::{Upstream, MAX_CONNECTIONS, QUEUE_TIMEOUT};
use super::validate::{parse_upstream_url, positive};
use crate::path::PathOptions;
use crate::toml_check::{choice, duration_value, Checker};

/// Validates and compiles the raw policy. The result is only usable when `check` holds
/// no error: invalid parts are left out of it.
pub(super) fn compile(raw: raw::RawPolicy, check: &mut Checker<'_>) -> Policy {
    if let Some(default) = &raw.default {
        if default.get_ref() != "deny" {
            check.error(
                default.span(),
                format!(
                    "`default` is \"{}\"; the only value is \"deny\" (a path no route matches gets 404)",
                    default.get_ref()
                ),
            );
        }
    }
    let paths = compile_paths(raw.paths.as_ref(), check);
    let scopes = compile_scopes(raw.scopes.as_ref(), check);
    let plans = compile_plans(&raw.plans, check);
    let upstreams = compile_upstreams(&raw.upstreams, check);
    let declared: HashSet<&str> = raw.upstreams.keys().map(|k| k.get_ref().as_str()).collect();
    let routes = compile_routes(raw.routes.as_ref(), &scopes, &upstreams, &declared, &plans, check);

    let used: HashSet<&str> = routes.iter().map(|r| r.upstream.name.as_str()).collect();
    for (name, upstream) in &raw.upstreams {
        if upstreams.contains_key(name.get_ref().as_str()) && !used.contains(name.get_ref().as_str()) {
            check.warning(upstream.span(), format!("upstream `{}` is not used by any route", name.get_ref()));
        }
    }

    let hash = crate::encoding::lower_hex(&Sha256::digest(check.text().as_bytes()));
    Policy {
        file: check.file().to_path_buf(),
        hash,
        forward_preflight: raw.forward_preflight.unwrap_or(false),
        paths,
        scopes,
        plans: plans.into_iter().collect(),
        upstreams,
        routes: RouteTable::new(routes),
    }
}

/// `[paths]`: `encoded_slash` and `semicolon`, each "reject" (the default) or "keep".
fn compile_paths(raw: Option<&raw::RawPaths>, check: &mut Checker<'_>) -> PathOptions {
    let mut options = PathOptions::default();
    let Some(raw) = raw else { return options };
    let keep = [("reject", false), ("keep", true)];
    if let Some(v) = &raw.encoded_slash {
        options.keep_encoded_slash = choice(check, "encoded_slash", v, &keep).unwrap_or(false);
    }
    if let Some(v) = &raw.semicolon {
        options.keep_semicolon = choice(check, "semicolon", v, &keep).unwrap_or(false);
    }
    options
}

/// `[scopes]`: names (non-empty, no whitespace, no comma: keys carry them comma-separated)
/// → descriptions.
fn compile_scopes(
    raw: Option<&BTreeMap<Spanned<String>, Spanned<String>>>,
    check: &mut Checker<'_>,
) -> BTreeMap<String, String> {
    let mut scopes = BTreeMap::new();
    for (name, description) in raw.into_iter().flatten() {
        let text = name.get_ref();
        if text.is_empty() {
            check.error(name.span(), "a scope name cannot be empty");
        } else if text.chars().any(|c| c.is_whitespace() || c.is_control()) {
            check.error(
                name.span(),
                format!(
                    "scope `{text}` contains whitespace; scope names are single words such \
                    as `calls:read`"
                ),
            );
        } else if text.contains(',') {
            check.error(
                name.span(),
                format!(
                    "scope `{text}` contains a comma; scopes are listed comma-separated \
                    (`--scopes a,b`, `x-keygate-scopes`), so a name cannot hold one"
                ),
            );
        }
        scopes.insert(text.clone(), description.get_ref().clone());
    }
    scopes
}

/// `[plans.NAME]`.
fn compile_plans(
    raw: &BTreeMap<Spanned<String>, Spanned<raw::RawPlan>>,
    check: &mut Checker<'_>,
) -> BTreeMap<String, Plan> {
    let mut plans = BTreeMap::new();
    for (name, table) in raw {
        let plan = table.get_ref();
        let api_access = plan.api_access.as_ref().is_none_or(|v| *v.get_ref());
        let (limits, legacy) = match &plan.limits {
            Some(list) => (plan_limits(name.get_ref(), plan, list, check).unwrap_or_default(), false),
            None => {
                let limit = plan_limit(name.get_ref(), plan, check);
                let limits =
                    limit.map(|limit| PlanLimit { name: LEGACY_LIMIT_NAME.to_string(), rule: Rule::window(limit) });
                (limits.into_iter().collect(), true)
            }
        };
        let max_keys = plan.max_keys.as_ref().and_then(|v| {
            let n = positive(check, &format!("plan `{}`: `max_keys`", name.get_ref()), v)?;
            match u32::try_from(n) {
                Ok(n) => Some(n),
                Err(_) => {
                    check.error(v.span(), format!("`max_keys` is at most {}; leave it out for no cap", u32::MAX));
                    None
                }
            }
        });
        let concurrency = plan.concurrency.as_ref().and_then(|v| {
            let n = positive(check, &format!("plan `{}`: `concurrency`", name.get_ref()), v)?;
            match u32::try_from(n) {
                Ok(n) => Some(n),
                Err(_) => {
                    check.error(v.span(), format!("`concurrency` is at most {}; leave it out for no cap", u32::MAX));
                    None
                }
            }
        });
        if name.get_ref().is_empty() {
            check.error(name.span(), "a plan name cannot be empty");
        }
        let no_limit_written = plan.requests_per_minute.is_none()
            && plan.requests.is_none()
            && plan.window.is_none()
            && plan.limits.is_none();
        if api_access && no_limit_written {
            check.warning(
                table.span(),
                format!(
                    "plan `{}` has API access and no rate limit: its tenants are unlimited (set \
                    `limits`, `requests_per_minute`, or `requests` and `window`)",
                    name.get_ref()
                ),
            );
        }
        let rate_headers =
            (!limits.is_empty()).then(|| Arc::new(PlanHeaders::with_limits(name.get_ref(), &limits, legacy)));
        let plan = Plan { name: name.get_ref().clone(), api_access, limits, max_keys, concurrency, rate_headers };
        plans.insert(name.get_ref().clone(), plan);
    }
    plans
}

/// A plan's `limits = [...]`: each entry a `name`, `requests`, and either a sliding
/// `window` or a calendar `period` (with `reset_day` for a month). Never together with
/// the legacy `requests_per_minute` or `requests`/`window`. `None` if any entry is wrong
/// (every problem is reported).
fn plan_limits(
    plan_name: &str,
    plan: &raw::RawPlan,
    list: &Spanned<Vec<Spanned<raw::RawLimit>>>,
    check: &mut Checker<'_>,
) -> Option<Vec<PlanLimit>> {
    let mut valid = true;
    for (field, span) in [
        ("requests_per_minute", plan.requests_per_minute.as_ref().map(Spanned::span)),
        ("requests", plan.requests.as_ref().map(Spanned::span)),
        ("window", plan.window.as_ref().map(Spanned::span)),
    ] {
        if let Some(span) = span {
            check.error(
                span,
                format!(
                    "plan `{plan_name}` sets both `limits` and `{field}`: write every limit of the \
                    plan in `limits` (e.g. `{{ name = \"minute\", requests = 300, window = \"60s\" }}`)"
                ),
            );
            valid = false;
        }
    }
    if list.get_ref().is_empty() {
        check.error(
            list.span(),
            format!("plan `{plan_name}` has an empty `limits`: list at least one limit, or leave `limits` out"),
        );
        return None;
    }
    let mut limits: Vec<PlanLimit> = Vec::new();
    let mut names: HashSet<String> = HashSet::new();
    for entry in list.get_ref() {
        match plan_limit_entry(plan_name, entry, check) {
            Some(limit) => {
                let limit_name = entry.get_ref().name.as_ref().map_or(entry.span(), Spanned::span);
                if !names.insert(limit.name.clone()) {
                    check.error(
                        limit_name,
                        format!(
                            "plan `{plan_name}` has two limits named `{}`: names are unique within a plan",
                            limit.name
                        ),
                    );
                    valid = false;
                    continue;
                }
                let same = limits.iter().find(|other| match (other.rule.kind, limit.rule.kind) {
                    (LimitKind::Window(a), LimitKind::Window(b)) => a == b,
                    (LimitKind::Day, LimitKind::Day) => true,
                    (LimitKind::Month { .. }, LimitKind::Month { .. }) => true,
                    _ => false,
                });
                if let Some(other) = same {
                    let what = match limit.rule.kind {
                        LimitKind::Window(w) => format!("the same window ({})", crate::duration::format(w)),
                        LimitKind::Day => "the same period (a day)".to_string(),
                        LimitKind::Month { .. } => "the same period (a month)".to_string(),
                    };
                    check.error(
                        entry.span(),
                        format!(
                            "plan `{plan_name}`: limits `{}` and `{}` have {what}; the smaller one \
                            always decides, keep one",
                            other.name, limit.name
                        ),
                    );
                    valid = false;
                    continue;
                }
                limits.push(limit);
            }
            None => valid = false,
        }
    }
    valid.then_some(limits)
}

/// One entry of `limits`, or `None` (with every error reported).
fn plan_limit_entry(plan: &str, entry: &Spanned<raw::RawLimit>, check: &mut Checker<'_>) -> Option<PlanLimit> {
    let raw = entry.get_ref();
    let name = match &raw.name {
        None => {
            check.error(entry.span(), format!("a limit of plan `{plan}` has no `name` (e.g. `name = \"minute\"`)"));
            None
        }
        Some(name) => {
            let text = name.get_ref();
            if text.is_empty() || !text.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
                check.error(
                    name.span(),
                    format!(
                        "plan `{plan}`: limit name `{text}` must be letters, digits, `-` and `_` \
                        (it is sent in the rate-limit headers and the 429)"
                    ),
                );
                None
            } else if text == crate::error::CONCURRENCY_LIMIT_NAME {
                check.error(
                    name.span(),
                    format!(
                        "plan `{plan}`: the limit name `{text}` is reserved for the plan's `concurrency` \
                        (a 429 names it); pick another"
                    ),
                );
                None
            } else {
                Some(text.clone())
            }
        }
    };
    let label = name.clone().unwrap_or_else(|| "?".to_string());
    let requests = match &raw.requests {
        None => {
            check.error(entry.span(), format!("plan `{plan}`: limit `{label}` has no `requests`"));
            None
        }
        Some(requests) => positive(check, &format!("plan `{plan}`: limit `{label}`: `requests`"), requests),
    };
    let kind = match (&raw.window, &raw.period) {
        (Some(_), Some(period)) => {
            check.error(
                period.span(),
                format!(
                    "plan `{plan}`: limit `{label}` has both a `window` and a `period`: a limit is \
                    either a sliding `window` or a calendar `period`, keep one"
                ),
            );
            None
        }
        (None, None) => {
            check.error(
                entry.span(),
                format!(
                    "plan `{plan}`: limit `{label}` has neither a `window` (sliding, e.g. `window = \
                    \"60s\"`) nor a `period` (calendar, `period = \"day\"` or `\"month\"`)"
                ),
            );
            None
        }
        (Some(window), None) => {
            if let Some(reset_day) = &raw.reset_day {
                check.error(
                    reset_day.span(),
                    format!(
                        "plan `{plan}`: limit `{label}`: `reset_day` belongs to a `period = \"month\"` \
                        quota, not to a sliding window"
                    ),
                );
            }
            window_value(plan, window, check).map(LimitKind::Window).filter(|_| raw.reset_day.is_none())
        }
        (None, Some(period)) => {
            let period = choice(check, "period", period, &[("day", false), ("month", true)]);
            match (period, &raw.reset_day) {
                (Some(false), Some(reset_day)) => {
                    check.error(
                        reset_day.span(),
                        format!(
                            "plan `{plan}`: limit `{label}`: `reset_day` is for `period = \"month\"`; a \
                            day always starts at 00:00 UTC"
                        ),
                    );
                    None
                }
                (Some(false), None) => Some(LimitKind::Day),
                (Some(true), None) => Some(LimitKind::Month { reset_day: 1 }),
                (Some(true), Some(reset_day)) => match u8::try_from(*reset_day.get_ref()) {
                    Ok(day @ 1..=31) => Some(LimitKind::Month { reset_day: day }),
                    _ => {
                        check.error(
                            reset_day.span(),
                            format!(
                                "plan `{plan}`: limit `{label}`: `reset_day` is {}; it is a day of the \
                                month, 1 to 31 (a shorter month resets on its last day)",
                                reset_day.get_ref()
                            ),
                        );
                        None
                    }
                },
                (None, _) => None,
            }
        }
    };
    Some(PlanLimit { name: name?, rule: Rule { requests: requests?, kind: kind? } })
}

/// A sliding `window`: whole seconds, at least 1.
fn window_value(plan: &str, window: &Spanned<String>, check: &mut Checker<'_>) -> Option<Duration> {
    duration_value(check, "window", window).and_then(|d| {
        if d.subsec_nanos() == 0 && d >= Duration::from_secs(1) {
            Some(d)
        } else {
            check.error(
                window.span(),
                format!(
                    "plan `{plan}`: `window` is \"{}\"; a window is a whole number of seconds, at least 1s",
                    window.get_ref()
                ),
            );
            None
        }
    })
}

/// A plan's limit: `requests_per_minute = N`, or `requests` per `window` (both, whole
/// seconds), never both forms.
fn plan_limit(name: &str, plan: &raw::RawPlan, check: &mut Checker<'_>) -> Option<Limit> {
    if let Some(rpm) = &plan.requests_per_minute {
        if plan.requests.is_some() || plan.window.is_some() {
            check.error(
                rpm.span(),
                format!(
                    "plan `{name}` sets both `requests_per_minute` and `requests`/`window`: \
                    they are two ways to write one limit, keep one"
                ),
            );
            return None;
        }
        let requests = positive(check, &format!("plan `{name}`: `requests_per_minute`"), rpm)?;
        return Some(Limit { requests, window: Duration::from_secs(60) });
    }
    match (&plan.requests, &plan.window) {
        (None, None) => None,
        (Some(requests), None) => {
            check.error(
                requests.span(),
                format!(
                    "plan `{name}` has `requests` but no `window`: write both (e.g. `window \
                    = \"10s\"`), or use `requests_per_minute`"
                ),
            );
            None
        }
        (None, Some(window)) => {
            check.error(
                window.span(),
                format!(
                    "plan `{name}` has a `window` but no `requests`: write both, or use \
                    `requests_per_minute`"
                ),
            );
            None
        }
        (Some(requests), Some(window)) => {
            let requests = positive(check, &format!("plan `{name}`: `requests`"), requests);
            let window = window_value(name, window, check);
            Some(Limit { requests: requests?, window: window? })
        }
    }
}

/// `[upstreams.NAME]`.
fn compile_upstreams(
    raw: &BTreeMap<Spanned<String>, Spanned<raw::RawUpstream>>,
    check: &mut Checker<'_>,
) -> HashMap<String, Arc<Upstream>> {
    let mut upstreams = HashMap::new();
    for (name, table) in raw {
        let upstream = table.get_ref();
        let target = match &upstream.url {
            None => {
                check.error(table.span(), format!("upstream `{}` has no `url`", name.get_ref()));
                None
            }
            Some(url) => match parse_upstream_url(url.get_ref()) {
                Ok(target) => Some(target),
                Err(e) => {
                    check.error(url.span(), format!("upstream `{}`: {e}", name.get_ref()));
                    None
                }
            },
        };
        let connect_timeout =
            timeout_value(check, "connect_timeout", upstream.connect_timeout.as_ref(), Duration::from_secs(2));
        let timeout = timeout_value(check, "timeout", upstream.timeout.as_ref(), Duration::from_secs(30));
        let queue_timeout = timeout_value(check, "queue_timeout", upstream.queue_timeout.as_ref(), QUEUE_TIMEOUT);
        let max_connections = match &upstream.max_connections {
            None => Some(MAX_CONNECTIONS),
            Some(value) => {
                positive(check, "`max_connections`", value).map(|n| usize::try_from(n).unwrap_or(usize::MAX))
            }
        };
        if let (
            Some((protocol, authority)),
            Some(connect_timeout),
            Some(timeout),
            Some(queue_timeout),
            Some(max_connections),
        ) = (target, connect_timeout, timeout, queue_timeout, max_connections)
        {
            let name = name.get_ref().clone();
            let upstream = Upstream {
                name: name.clone(),
                protocol,
                authority,
                connect_timeout,
                timeout,
                max_connections,
                queue_timeout,
            };
            upstreams.insert(name, Arc::new(upstream));
        }
    }
    upstreams
}

/// An optional positive duration with a default.
fn timeout_value(
    check: &mut Checker<'_>,
    name: &str,
    value: Option<&Spanned<String>>,
    default: Duration,
) -> Option<Duration> {
    let Some(value) = value else {
        return Some(default);
    };
    let d = duration_value(check, name, value)?;
    if d.is_zero() {
        check.error(value.span(), format!("`{name}` must be longer than 0s"));
        return None;
    }
    Some(d)
}

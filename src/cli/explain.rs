//! `keygate explain METHOD PATH [--key-id ID | --scopes a,b]`: the normalised path, the
//! matched route, the scopes it needs, and whether that key or scope set would pass (and
//! why not). Decided by the same functions the proxy uses.

use std::path::Path;
use std::sync::Arc;

use http::Method;
use time::OffsetDateTime;

use super::CliError;
use crate::keys::KeyState;
use crate::metrics::Metrics;
use crate::path;
use crate::policy::overrides::{effective, LimitOverrides, LimitSource};
use crate::policy::{Policy, RouteAuth, RouteMatch, RouteMode};
use crate::settings::Settings;

#[derive(Debug, clap::Args)]
pub struct ExplainArgs {
    /// The request method, e.g. GET (an HTTP token; lower case is read as upper case).
    pub method: String,
    /// The request path, as a client would send it (may be percent-encoded).
    pub path: String,
    /// Judge with this key's scopes, state and plan.
    #[arg(long, conflicts_with = "scopes")]
    pub key_id: Option<String>,
    /// Judge with this scope set, comma-separated (each defined in the policy's [scopes]).
    #[arg(long, value_delimiter = ',')]
    pub scopes: Option<Vec<String>>,
    /// Show the limits of this plan (with --key-id, the key's plan is shown).
    #[arg(long, conflicts_with = "key_id")]
    pub plan: Option<String>,
}

/// The facts `explain` reports.
#[derive(Debug, serde::Serialize)]
pub struct Explanation {
    pub method: String,
    pub path: String,
    pub normalized_path: Option<String>,
    pub route: Option<String>,
    pub upstream: Option<String>,
    pub auth: Option<&'static str>,
    pub mode: Option<&'static str>,
    pub required_scopes: Vec<String>,
    /// The plan the request is judged under (`--plan`, or the key's), if known.
    pub plan: Option<String>,
    /// Its limits, in order, described: a request is admitted only if each has room.
    pub limits: Vec<String>,
    /// Its `concurrency`: the most requests of a tenant in flight at once (none: no cap).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<u32>,
    pub status: u16,
    pub verdict: String,
}

/// Exit code: the request would be refused.
pub const EXIT_REFUSED: i32 = 1;
/// Exit code: the question cannot be answered as asked (a method that is not an HTTP
/// token, a scope the policy does not define, an unknown key id), as clap's own usage
/// errors.
pub const EXIT_USAGE: i32 = 2;
/// Exit code: `--key-id` was given and the key store could not be read (sysexits.h
/// EX_UNAVAILABLE).
pub const EXIT_STORE_UNAVAILABLE: i32 = 69;

/// Explains one request. Exits 0 when it would be admitted (or, without `--key-id` or
/// `--scopes`, when it reaches a route: nothing was judged), [`EXIT_REFUSED`] when it would
/// be refused, [`EXIT_USAGE`] for a question that cannot be answered, and
/// [`super::EX_CONFIG`] for an invalid config (so that 1 always means "refused").
pub fn run(config: &Path, args: ExplainArgs, json: bool) -> Result<(), CliError> {
    let config_error = |d| CliError { exit_code: super::EX_CONFIG, ..super::diagnostics_error(d) };
    let (settings, _) = Settings::load(config).map_err(config_error)?;
    let (policy, _) = Policy::load(&settings.policy_file).map_err(config_error)?;
    let method = parse_method(&args.method)?;
    let holder = match (&args.key_id, &args.scopes) {
        (Some(id), _) => Some(key_holder(&settings, &policy, id)?),
        (None, Some(scopes)) => Some(Holder {
            scopes: known_scopes(&policy, scopes)?,
            refusal: None,
            plan: None,
            overrides: Default::default(),
        }),
        (None, None) => None,
    };
    let mut explanation = explain(&policy, &method, &args.path, holder.as_ref());
    let plan = match (&args.plan, &holder) {
        (Some(name), _) => Some(policy.plans.get(name).ok_or_else(|| {
            let mut known: Vec<&str> = policy.plans.keys().map(String::as_str).collect();
            known.sort_unstable();
            usage(format!("unknown plan `{name}` (the policy's plans: {})", known.join(", ")))
        })?),
        (None, Some(holder)) => holder.plan.as_ref().and_then(|name| policy.plans.get(name)),
        (None, None) => None,
    };
    if let Some(plan) = plan {
        explanation.plan = Some(plan.name.clone());
        let none = Default::default();
        let (tenant, key) = holder
            .as_ref()
            .filter(|_| args.plan.is_none())
            .map_or((&none, &none), |h| (&h.overrides.0, &h.overrides.1));
        explanation.limits = effective(&plan.limits, tenant, key)
            .into_iter()
            .map(|(limit, source)| match source {
                LimitSource::Plan => limit.describe(),
                source => format!("{} (the {}'s override)", limit.describe(), source.as_str()),
            })
            .collect();
        explanation.concurrency = key.concurrency.or(tenant.concurrency).or(plan.concurrency);
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&explanation).unwrap_or_default());
    } else {
        print_text(&explanation);
    }
    match explanation.status {
        0 | 200 => Ok(()),
        status => {
            Err(CliError { message: format!("the request would be refused ({status})"), exit_code: EXIT_REFUSED })
        }
    }
}

fn usage(message: String) -> CliError {
    CliError { message, exit_code: EXIT_USAGE }
}

/// The method as a client would send it. It must be an HTTP token (RFC 9110 5.6.2:
/// letters, digits and ``!#$%&'*+-.^_`|~``). Methods are case-sensitive (RFC 9110 9.1) and
/// clients send them in upper case, so `get` is read as `GET`, with a warning on stderr.
fn parse_method(text: &str) -> Result<Method, CliError> {
    let tchar = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if text.is_empty() || !text.bytes().all(tchar) {
        return Err(usage(format!(
            "`{}` is not an HTTP method: a method is a token of letters, digits and !#$%&'*+-.^_`|~ (e.g. GET)",
            text.escape_debug()
        )));
    }
    let upper = text.to_ascii_uppercase();
    if upper != text {
        eprintln!(
            "keygate: warning: method `{text}` read as `{upper}`: methods are case-sensitive and clients send them \
             in upper case"
        );
    }
    Method::from_bytes(upper.as_bytes()).map_err(|_| usage(format!("`{text}` is not an HTTP method")))
}

/// `--scopes`, every one defined in the policy's `[scopes]` (empty entries ignored: `--scopes ""`
/// is the empty set).
fn known_scopes(policy: &Policy, scopes: &[String]) -> Result<Vec<String>, CliError> {
    let scopes: Vec<String> = scopes.iter().map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect();
    for scope in &scopes {
        if !policy.scopes.contains_key(scope) {
            let hint = match closest(scope, policy.scopes.keys()) {
                Some(near) => format!("did you mean `{near}`? "),
                None => String::new(),
            };
            let defined: Vec<&str> = policy.scopes.keys().map(String::as_str).collect();
            return Err(usage(format!(
                "unknown scope `{scope}`: no route or key of the policy can have it ({hint}defined in [scopes]: {})",
                defined.join(", ")
            )));
        }
    }
    Ok(scopes)
}

/// The candidate nearest `word` by edit distance, if it is near (at most 2 edits).
fn closest<'a>(word: &str, candidates: impl Iterator<Item = &'a String>) -> Option<&'a str> {
    candidates.map(|c| (edit_distance(word, c), c.as_str())).filter(|(d, _)| *d <= 2).min().map(|(_, c)| c)
}

/// Levenshtein distance, in characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut previous = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitution = previous + usize::from(ca != *cb);
            previous = row[j + 1];
            row[j + 1] = substitution.min(row[j] + 1).min(previous + 1);
        }
    }
    row[b.len()]
}

/// Who is asking: a scope set, and a refusal that has nothing to do with the route (a
/// revoked key, a plan without API access).
pub struct Holder {
    pub scopes: Vec<String>,
    pub refusal: Option<(u16, String)>,
    /// The key's plan (`--key-id`), if its tenant exists.
    pub plan: Option<String>,
    /// The tenant's and the key's limit overrides (`--key-id`; empty otherwise): the
    /// limits shown are the effective ones.
    pub overrides: (LimitOverrides, LimitOverrides),
}

/// The holder of key `id`, read from the store named in `[keys]` (the file or Redis).
fn key_holder(settings: &Settings, policy: &Policy, id: &str) -> Result<Holder, CliError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::input(format!("cannot start the runtime: {e}")))?;
    let data = runtime
        .block_on(async {
            let metrics = Arc::new(Metrics::new());
            let store = crate::app::open_store(settings, metrics, Some(super::STORE_TIMEOUT)).await?;
            store.key_data(id).await.map_err(|e| e.to_string())
        })
        .map_err(|e| CliError { message: e, exit_code: EXIT_STORE_UNAVAILABLE })?;
    let key = data.keys.get(id).ok_or_else(|| usage(format!("unknown key `{id}` (see `keygate keys list`)")))?;
    let refusal = match key.state(OffsetDateTime::now_utc()) {
        KeyState::Revoked => Some((401, format!("key {id} is revoked"))),
        KeyState::Expired => Some((401, format!("key {id} is expired"))),
        KeyState::Active => match data.tenants.get(&key.tenant) {
            None => Some((401, format!("key {id}'s tenant `{}` no longer exists (revoked)", key.tenant))),
            Some(tenant) => match policy.plans.get(&tenant.plan) {
                None => {
                    Some((403, format!("tenant `{}` is on plan `{}`, which the policy lacks", tenant.id, tenant.plan)))
                }
                Some(plan) if !plan.api_access => {
                    Some((403, format!("tenant `{}` is on plan `{}`, which has no API access", tenant.id, plan.name)))
                }
                Some(_) => None,
            },
        },
    };
    let plan = data.tenants.get(&key.tenant).map(|tenant| tenant.plan.clone());
    let tenant_overrides = data.tenants.get(&key.tenant).map(|tenant| tenant.overrides.clone()).unwrap_or_default();
    Ok(Holder { scopes: key.scopes.clone(), refusal, plan, overrides: (tenant_overrides, key.overrides.clone()) })
}

/// Explains one request against `policy`.
pub fn explain(policy: &Policy, method: &Method, raw_path: &str, holder: Option<&Holder>) -> Explanation {
    let mut out = Explanation {
        method: method.to_string(),
        path: raw_path.to_string(),
        normalized_path: None,
        route: None,
        upstream: None,
        auth: None,
        mode: None,
        required_scopes: Vec::new(),
        plan: None,
        limits: Vec::new(),
        concurrency: None,
        status: 0,
        verdict: String::new(),
    };
    let (raw_path, query) = raw_path.split_once('?').map_or((raw_path, None), |(p, q)| (p, Some(q)));
    let normalized = match path::normalize(raw_path, policy.paths) {
        Ok(p) => p,
        Err(e) => {
            out.status = 400;
            out.verdict = format!("refused: 400 bad_request ({e})");
            return out;
        }
    };
    out.normalized_path = Some(normalized.clone());
    if query.is_some_and(crate::keys::query_carries_key) {
        out.status = 400;
        out.verdict = "refused: 400 bad_request (an API key in the query string)".into();
        return out;
    }
    let route = match policy.routes.find(&normalized, method) {
        RouteMatch::Found(route) => route,
        RouteMatch::MethodNotAllowed { prefix, allow } => {
            out.route = Some(prefix.to_string());
            let allow: Vec<&str> = allow.iter().map(Method::as_str).collect();
            out.status = 405;
            out.verdict = format!("refused: 405 method_not_allowed (Allow: {})", allow.join(", "));
            return out;
        }
        RouteMatch::NotFound => {
            out.status = 404;
            out.verdict = "refused: 404 not_found (no route matches; default = \"deny\")".into();
            return out;
        }
    };
    out.route = Some(route.prefix.to_string());
    out.upstream = Some(route.upstream.name.clone());
    out.mode = Some(match route.mode {
        RouteMode::Enforce => "enforce",
        RouteMode::Shadow => "shadow",
    });
    let required = match &route.auth {
        RouteAuth::None => {
            out.auth = Some("none");
            out.status = 200;
            out.verdict = "passes: public route (auth = \"none\"), no key and no limit".into();
            return out;
        }
        RouteAuth::Key { scopes } => scopes,
    };
    out.auth = Some("key");
    out.required_scopes = required.clone();
    let shadow =
        if route.mode == RouteMode::Shadow { " — shadow mode: forwarded anyway, decision recorded" } else { "" };
    let Some(holder) = holder else {
        out.verdict = format!("needs a key holding: {}", display_scopes(required));
        return out;
    };
    if let Some((status, why)) = &holder.refusal {
        out.status = *status;
        out.verdict = format!("refused: {status} ({why}){shadow}");
        return out;
    }
    let missing: Vec<String> = required.iter().filter(|s| !holder.scopes.contains(s)).cloned().collect();
    if missing.is_empty() {
        out.status = 200;
        out.verdict = format!("passes (subject to the plan's limits, cost {}: every limit must have room)", route.cost);
    } else {
        out.status = 403;
        out.verdict = format!("refused: 403 forbidden (missing scope: {}){shadow}", missing.join(", "));
    }
    out
}

fn display_scopes(scopes: &[String]) -> String {
    if scopes.is_empty() {
        "any valid key (no scopes required)".to_string()
    } else {
        scopes.join(", ")
    }
}

fn print_text(e: &Explanation) {
    println!("request:         {} {}", e.method, e.path);
    if let Some(p) = &e.normalized_path {
        println!("normalised path: {p}");
    }
    match &e.route {
        Some(route) => println!(
            "route:           {route}{}",
            e.upstream.as_ref().map(|u| format!(" → upstream {u}")).unwrap_or_default()
        ),
        None => println!("route:           (none)"),
    }
    if let Some(auth) = e.auth {
        println!("auth:            {auth}{}", e.mode.map(|m| format!(", mode {m}")).unwrap_or_default());
    }
    if e.auth == Some("key") {
        println!("required scopes: {}", display_scopes(&e.required_scopes));
    }
    if let Some(plan) = &e.plan {
        match e.limits.as_slice() {
            [] => println!("plan:            {plan} (no rate limit)"),
            [first, rest @ ..] => {
                println!("plan:            {plan}, admitted only if every limit has room:");
                println!("                   {first}");
                for limit in rest {
                    println!("                   {limit}");
                }
            }
        }
        if let Some(cap) = e.concurrency {
            let noun = if cap == 1 { "request" } else { "requests" };
            println!("concurrency:     at most {cap} {noun} of the tenant in flight at once");
        }
    }
    println!("verdict:         {}", e.verdict);
}

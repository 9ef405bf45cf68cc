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
use crate::policy::{Policy, RouteAuth, RouteMatch, RouteMode};
use crate::settings::Settings;

#[derive(Debug, clap::Args)]
pub struct ExplainArgs {
    /// The request method, e.g. GET.
    pub method: String,
    /// The request path, as a client would send it (may be percent-encoded).
    pub path: String,
    /// Judge with this key's scopes, state and plan.
    #[arg(long, conflicts_with = "scopes")]
    pub key_id: Option<String>,
    /// Judge with this scope set, comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub scopes: Option<Vec<String>>,
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
    pub status: u16,
    pub verdict: String,
}

pub fn run(config: &Path, args: ExplainArgs, json: bool) -> Result<(), CliError> {
    let (settings, _) = Settings::load(config).map_err(super::diagnostics_error)?;
    let (policy, _) = Policy::load(&settings.policy_file).map_err(super::diagnostics_error)?;
    let method = Method::from_bytes(args.method.to_ascii_uppercase().as_bytes())
        .map_err(|_| CliError::input(format!("invalid method `{}`", args.method)))?;
    let holder = match (&args.key_id, &args.scopes) {
        (Some(id), _) => Some(key_holder(&settings, &policy, id)?),
        (None, Some(scopes)) => Some(Holder { scopes: scopes.clone(), refusal: None }),
        (None, None) => None,
    };
    let explanation = explain(&policy, &method, &args.path, holder.as_ref());
    if json {
        println!("{}", serde_json::to_string_pretty(&explanation).unwrap_or_default());
    } else {
        print_text(&explanation);
    }
    Ok(())
}

/// Who is asking: a scope set, and a refusal that has nothing to do with the route (a
/// revoked key, a plan without API access).
pub struct Holder {
    pub scopes: Vec<String>,
    pub refusal: Option<(u16, String)>,
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
        .map_err(CliError::input)?;
    let key =
        data.keys.get(id).ok_or_else(|| CliError::input(format!("unknown key `{id}` (see `keygate keys list`)")))?;
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
    Ok(Holder { scopes: key.scopes.clone(), refusal })
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
    out.route = Some(route.prefix.clone());
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
        out.verdict = format!("passes (subject to the plan's rate limit, cost {})", route.cost);
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
    println!("verdict:         {}", e.verdict);
}

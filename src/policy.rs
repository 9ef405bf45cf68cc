//! `routes.toml`: the hot-reloaded policy (SPEC 2.2), parsed into `Raw*` structs and
//! compiled into one immutable [`Policy`] snapshot. Pure: no I/O beyond [`Policy::load`].

pub mod routes;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http::Method;
use serde_spanned::Spanned;
use sha2::{Digest, Sha256};

use crate::diag::Diagnostic;
use crate::path::PathOptions;
use crate::ratelimit::Limit;
use crate::settings::ON_STORE_ERROR;
use crate::toml_check::{choice, duration_value, toml_error, Checker};

pub use routes::{Route, RouteAuth, RouteMatch, RouteMode, RouteTable};

/// One compiled policy: routes, plans, upstreams and scopes. Requests load it once
/// (one `Arc`) and keep it to the end, so a reload never changes a request midway.
#[derive(Debug)]
pub struct Policy {
    /// The file it was loaded from.
    pub file: PathBuf,
    /// Hex SHA-256 of the file's bytes: reported by `/readyz`, and compared to skip
    /// reloads that change nothing.
    pub hash: String,
    /// `forward_preflight` (default false): CORS preflights go upstream without a key.
    pub forward_preflight: bool,
    /// `[paths]`.
    pub paths: PathOptions,
    /// `[scopes]`: every scope a key may hold → its description.
    pub scopes: BTreeMap<String, String>,
    /// `[plans.NAME]` by name.
    pub plans: HashMap<String, Plan>,
    /// `[upstreams.NAME]` by name.
    pub upstreams: HashMap<String, Arc<Upstream>>,
    pub routes: RouteTable,
}

/// A plan: whether it may use the API, its rate limit, and its cap on keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub name: String,
    /// `api_access` (default true).
    pub api_access: bool,
    /// `requests_per_minute = N`, or `requests` per `window`. `None`: no rate limit
    /// (allowed, with a warning from `check`, for plans that have API access).
    pub limit: Option<Limit>,
    /// `max_keys`; `None` is unlimited.
    pub max_keys: Option<u32>,
}

/// The protocol keygate speaks to an upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UpstreamProtocol {
    /// `http://…`: HTTP/1.1.
    Http1,
    /// `h2c://…`: HTTP/2 with prior knowledge (gRPC services).
    H2c,
}

/// `[upstreams.NAME]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Upstream {
    pub name: String,
    pub protocol: UpstreamProtocol,
    /// `host:port` (port defaulted to 80 when the URL has none). The URL may carry no
    /// path other than `/`, no query and no credentials: the upstream gets exactly the
    /// path that was authorised.
    pub authority: http::uri::Authority,
    /// Default 2s: 502 when the upstream cannot be reached in time.
    pub connect_timeout: Duration,
    /// Default 30s: 504 when response headers take longer.
    pub timeout: Duration,
}

impl Policy {
    /// Reads and compiles `path`. On success also returns warnings.
    pub fn load(path: &Path) -> Result<(Policy, Vec<Diagnostic>), Vec<Diagnostic>> {
        let bytes = std::fs::read(path).map_err(|e| vec![Diagnostic::file_error(path, format!("cannot read: {e}"))])?;
        let text = String::from_utf8(bytes).map_err(|_| vec![Diagnostic::file_error(path, "not valid UTF-8")])?;
        Self::parse(&text, path)
    }

    /// Parses, validates and compiles `text` as the content of `path`. Every error is
    /// collected (not just the first), each with file:line:column.
    ///
    /// A syntax error, a value of the wrong type or an unknown field stops the parse and
    /// is the one error returned; every other finding is collected. Errors come back
    /// sorted by position; warnings (a plan without a limit, a route that costs more than
    /// a plan's whole limit, settings ignored on a public route, an unused upstream) are
    /// only returned with a valid policy.
    pub fn parse(text: &str, path: &Path) -> Result<(Policy, Vec<Diagnostic>), Vec<Diagnostic>> {
        let raw: raw::RawPolicy = toml::from_str(text).map_err(|e| vec![toml_error(path, text, &e)])?;
        let mut check = Checker::new(path, text);
        let policy = compile(raw, &mut check);
        let (errors, warnings) = check.finish();
        if errors.is_empty() {
            Ok((policy, warnings))
        } else {
            Err(errors)
        }
    }
}

/// A positive integer, or an error at the value.
fn positive(check: &mut Checker<'_>, what: &str, value: &Spanned<i64>) -> Option<u64> {
    match u64::try_from(*value.get_ref()) {
        Ok(n) if n >= 1 => Some(n),
        _ => {
            check.error(value.span(), format!("{what} must be at least 1, not {}", value.get_ref()));
            None
        }
    }
}

/// Validates and compiles the raw policy. The result is only usable when `check` holds
/// no error: invalid parts are left out of it.
fn compile(raw: raw::RawPolicy, check: &mut Checker<'_>) -> Policy {
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

    let hash = hex::encode(Sha256::digest(check.text().as_bytes()));
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
        let limit = plan_limit(name.get_ref(), plan, check);
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
        if name.get_ref().is_empty() {
            check.error(name.span(), "a plan name cannot be empty");
        }
        let no_limit_written = plan.requests_per_minute.is_none() && plan.requests.is_none() && plan.window.is_none();
        if api_access && no_limit_written {
            check.warning(
                table.span(),
                format!(
                    "plan `{}` has API access and no rate limit: its tenants are unlimited (set \
                    `requests_per_minute`, or `requests` and `window`)",
                    name.get_ref()
                ),
            );
        }
        plans.insert(name.get_ref().clone(), Plan { name: name.get_ref().clone(), api_access, limit, max_keys });
    }
    plans
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
            let window = duration_value(check, "window", window).and_then(|d| {
                if d.subsec_nanos() == 0 && d >= Duration::from_secs(1) {
                    Some(d)
                } else {
                    check.error(
                        window.span(),
                        format!(
                            "plan `{name}`: `window` is \"{}\"; a window is a whole number of \
                            seconds, at least 1s",
                            window.get_ref()
                        ),
                    );
                    None
                }
            });
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
        if let (Some((protocol, authority)), Some(connect_timeout), Some(timeout)) = (target, connect_timeout, timeout)
        {
            upstreams.insert(
                name.get_ref().clone(),
                Arc::new(Upstream { name: name.get_ref().clone(), protocol, authority, connect_timeout, timeout }),
            );
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

/// `http://host[:port]` or `h2c://host[:port]`, with at most a `/` for a path: the
/// upstream gets exactly the path that was authorised, so the URL cannot add one.
pub(crate) fn parse_upstream_url(url: &str) -> Result<(UpstreamProtocol, http::uri::Authority), String> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| format!("url `{url}` must look like `http://host:port` or `h2c://host:port`"))?;
    let protocol = match scheme {
        "http" => UpstreamProtocol::Http1,
        "h2c" => UpstreamProtocol::H2c,
        "https" => {
            return Err(format!(
                "url `{url}`: keygate speaks plain HTTP to its upstream (a sidecar's neighbour); \
                use `http://` or `h2c://`"
            ))
        }
        _ => return Err(format!("url `{url}` has the scheme `{scheme}`; use `http://` or `h2c://`")),
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    if tail.contains(['?', '#']) {
        return Err(format!("url `{url}` has a query or fragment; an upstream URL is only `scheme://host:port`"));
    }
    if !tail.is_empty() && tail != "/" {
        return Err(format!(
            "url `{url}` has the path `{tail}`; an upstream gets exactly the path that was \
            authorised, so its URL has none"
        ));
    }
    if authority.contains('@') {
        return Err(format!("url `{url}` carries credentials; an upstream URL is only `scheme://host:port`"));
    }
    if authority.is_empty() || authority.starts_with(':') {
        return Err(format!("url `{url}` has no host"));
    }
    let parsed: http::uri::Authority = authority.parse().map_err(|e| format!("url `{url}`: bad host or port ({e})"))?;
    // `Authority` keeps a port it cannot read as a number (`app:99999`) as no port at
    // all; read what follows the host by hand so such a URL is refused, not defaulted.
    let port_text = authority.get(parsed.host().len()..).and_then(|rest| rest.strip_prefix(':'));
    match port_text {
        None => {
            let with_port = format!("{}:80", parsed.host());
            let parsed = with_port.parse().map_err(|e| format!("url `{url}`: bad host ({e})"))?;
            Ok((protocol, parsed))
        }
        Some("") => Err(format!("url `{url}` has an empty port")),
        Some(port) => match port.parse::<u16>() {
            Ok(0) => Err(format!("url `{url}` has port 0")),
            Ok(_) => Ok((protocol, parsed)),
            Err(_) => Err(format!("url `{url}`: bad port `{port}` (1 to 65535)")),
        },
    }
}

/// Characters a prefix may hold: those of a normalised path (RFC 3986 `pchar` and `/`),
/// less `%` and `;` (see [`prefix_problem`]).
fn prefix_char_allowed(c: char) -> bool {
    c.is_ascii_alphanumeric() || "/-._~!$&'()*+,=:@".contains(c)
}

/// Why `prefix` is not in the normal form the router matches against, or `None` if it is.
/// The normal form: starts with `/`, no empty, `.` or `..` segment, no trailing `/`
/// (except the root `/`), no `%`, `;`, `\`, `#`, `?`, nor any character a normalised path
/// does not hold.
pub(crate) fn prefix_problem(prefix: &str) -> Option<String> {
    if prefix.is_empty() {
        return Some("a prefix cannot be empty; `/` matches every path".to_string());
    }
    if let Some(c) = prefix.chars().find(|c| ['%', ';', '\\', '#', '?'].contains(c)) {
        return Some(format!(
            "prefix `{prefix}` contains `{c}`; a prefix is matched against the normalised path, \
            without query or fragment, and may not hold `%`, `;`, `\\`, `#` or `?`"
        ));
    }
    if let Some(c) = prefix.chars().find(|c| !prefix_char_allowed(*c)) {
        return Some(format!(
            "prefix `{prefix}` contains {:?}, which a normalised path never holds (letters, \
            digits, `/` and `-._~!$&'()*+,=:@` only)",
            c
        ));
    }
    let mut segments: Vec<&str> = Vec::new();
    for segment in prefix.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    let normal = format!("/{}", segments.join("/"));
    if normal == prefix {
        None
    } else {
        Some(format!(
            "prefix `{prefix}` is not in normal form: write `{normal}` (a prefix starts with \
            `/` and has no empty, `.` or `..` segment and no trailing `/`)"
        ))
    }
}

/// Whether `text` is an upper-case HTTP method token (RFC 9110 5.6.2 `tchar`, 9.1).
fn method_problem(text: &str) -> Option<String> {
    let tchar = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
    if text.is_empty() {
        return Some("a method cannot be empty".to_string());
    }
    if !text.chars().all(tchar) {
        return Some(format!("`{text}` is not an HTTP method token"));
    }
    if text.chars().any(|c| c.is_ascii_lowercase()) {
        return Some(format!(
            "method `{text}` must be upper-case: write `{}` (methods are case-sensitive, RFC 9110 9.1)",
            text.to_ascii_uppercase()
        ));
    }
    None
}

/// The parts of a route the overlap check needs, kept even when the route has other
/// errors, so that every overlap is reported in one pass.
struct Shape {
    prefix: String,
    /// `None`: every method.
    methods: Option<Vec<Method>>,
    /// The `[[routes]]` header, for naming the route.
    table: Range<usize>,
    prefix_span: Range<usize>,
    methods_span: Option<Range<usize>>,
}

/// `[[routes]]`, then the checks across routes: overlaps, emptiness, cost against plans.
fn compile_routes(
    raw: Option<&Spanned<Vec<Spanned<raw::RawRoute>>>>,
    scopes: &BTreeMap<String, String>,
    upstreams: &HashMap<String, Arc<Upstream>>,
    declared: &HashSet<&str>,
    plans: &BTreeMap<String, Plan>,
    check: &mut Checker<'_>,
) -> Vec<Route> {
    let raw_routes: &[Spanned<raw::RawRoute>] = raw.map_or(&[], |r| r.get_ref().as_slice());
    if raw_routes.is_empty() {
        check.file_error("a policy with no routes is refused: it is almost always a half-written file");
        return Vec::new();
    }
    let mut routes = Vec::new();
    let mut shapes: Vec<Shape> = Vec::new();
    for table in raw_routes {
        let (route, shape) = compile_route(table, scopes, upstreams, declared, check);
        if let Some(shape) = shape {
            shapes.push(shape);
        }
        if let Some(route) = route {
            if let (RouteAuth::Key { .. }, Some(cost)) = (&route.auth, &table.get_ref().cost) {
                warn_cost(&route, cost.span(), plans, check);
            }
            routes.push(route);
        }
    }
    check_overlaps(&shapes, check);
    routes
}

/// A warning for each plan whose whole limit is below the route's cost: its tenants
/// can never call the route.
fn warn_cost(route: &Route, span: Range<usize>, plans: &BTreeMap<String, Plan>, check: &mut Checker<'_>) {
    for plan in plans.values() {
        let Some(limit) = plan.limit.filter(|_| plan.api_access) else {
            continue;
        };
        if route.cost > limit.requests {
            check.warning(
                span.clone(),
                format!(
                    "route `{}` costs {}, more than plan `{}`'s whole limit of {} requests per \
                    {}: its tenants can never call it",
                    route.prefix,
                    route.cost,
                    plan.name,
                    limit.requests,
                    crate::duration::format(limit.window)
                ),
            );
        }
    }
}

/// Two routes with one prefix must take disjoint methods; an error at the later route
/// names both.
fn check_overlaps(shapes: &[Shape], check: &mut Checker<'_>) {
    let mut by_prefix: HashMap<&str, Vec<&Shape>> = HashMap::new();
    for shape in shapes {
        by_prefix.entry(shape.prefix.as_str()).or_default().push(shape);
    }
    for later in shapes {
        let Some(group) = by_prefix.get(later.prefix.as_str()) else {
            continue;
        };
        for earlier in group.iter().take_while(|s| !std::ptr::eq(**s, later)) {
            let first = check.line(&earlier.table);
            let second = check.line(&later.table);
            match (&earlier.methods, &later.methods) {
                (Some(a), Some(b)) => {
                    let mut shared: Vec<&str> = a.iter().filter(|m| b.contains(m)).map(Method::as_str).collect();
                    if shared.is_empty() {
                        continue;
                    }
                    shared.sort_unstable();
                    check.error(
                        later.methods_span.clone().unwrap_or_else(|| later.prefix_span.clone()),
                        format!(
                            "the routes at lines {first} and {second} both have the prefix `{}` \
                            and both take {}: routes with one prefix must take different methods",
                            later.prefix,
                            shared.join(", ")
                        ),
                    );
                }
                _ => {
                    let which = match (&earlier.methods, &later.methods) {
                        (None, None) => "neither has `methods`, so both take every method".to_string(),
                        (None, _) => format!("the one at line {first} has no `methods`, so it takes every method"),
                        _ => format!("the one at line {second} has no `methods`, so it takes every method"),
                    };
                    check.error(
                        later.prefix_span.clone(),
                        format!(
                            "the routes at lines {first} and {second} both have the prefix `{}` \
                            and {which}: routes with one prefix must take different methods",
                            later.prefix
                        ),
                    );
                }
            }
        }
    }
}

/// One `[[routes]]` table: the compiled route if it is valid, and its shape for the
/// overlap check if its prefix is.
fn compile_route(
    table: &Spanned<raw::RawRoute>,
    scopes: &BTreeMap<String, String>,
    upstreams: &HashMap<String, Arc<Upstream>>,
    declared: &HashSet<&str>,
    check: &mut Checker<'_>,
) -> (Option<Route>, Option<Shape>) {
    let raw = table.get_ref();
    let mut ok = true;

    let prefix = match &raw.prefix {
        None => {
            check.error(table.span(), "a route needs a `prefix` (e.g. `prefix = \"/v1/calls\"`)");
            None
        }
        Some(p) => match prefix_problem(p.get_ref()) {
            Some(problem) => {
                check.error(p.span(), problem);
                None
            }
            None => Some(p),
        },
    };
    let name = raw.prefix.as_ref().map_or_else(|| "(no prefix)".to_string(), |p| p.get_ref().clone());

    let methods = raw.methods.as_ref().map(|list| {
        if list.get_ref().is_empty() {
            check.error(
                list.span(),
                format!(
                    "route `{name}`: `methods = []` takes no method; leave `methods` out to \
                    take every method"
                ),
            );
            ok = false;
        }
        let mut methods: Vec<Method> = Vec::new();
        for m in list.get_ref() {
            if let Some(problem) = method_problem(m.get_ref()) {
                check.error(m.span(), format!("route `{name}`: {problem}"));
                ok = false;
                continue;
            }
            let Ok(method) = Method::from_bytes(m.get_ref().as_bytes()) else {
                check.error(m.span(), format!("route `{name}`: `{}` is not an HTTP method", m.get_ref()));
                ok = false;
                continue;
            };
            if methods.contains(&method) {
                check.error(m.span(), format!("route `{name}`: method `{method}` is listed twice"));
                ok = false;
                continue;
            }
            methods.push(method);
        }
        methods
    });

    let public = match &raw.auth {
        None => false,
        Some(a) => match choice(check, "auth", a, &[("key", false), ("none", true)]) {
            Some(p) => p,
            None => {
                ok = false;
                false
            }
        },
    };

    let mut route_scopes: Vec<String> = Vec::new();
    if let Some(list) = &raw.scopes {
        if public && !list.get_ref().is_empty() {
            check.error(
                list.span(),
                format!(
                    "route `{name}` has `auth = \"none\"` and scopes: a public route takes \
                    no key, so it cannot require scopes; remove one or the other"
                ),
            );
            ok = false;
        } else if public {
            check.warning(list.span(), format!("route `{name}`: `scopes` is ignored with `auth = \"none\"`"));
        }
        for scope in list.get_ref() {
            if !scopes.contains_key(scope.get_ref()) {
                let known: Vec<&str> = scopes.keys().map(String::as_str).collect();
                check.error(
                    scope.span(),
                    format!(
                        "route `{name}` requires the scope `{}`, which is not in [scopes] (defined: {})",
                        scope.get_ref(),
                        if known.is_empty() { "none".to_string() } else { known.join(", ") }
                    ),
                );
                ok = false;
            } else if route_scopes.contains(scope.get_ref()) {
                check.warning(scope.span(), format!("route `{name}`: scope `{}` is listed twice", scope.get_ref()));
            } else {
                route_scopes.push(scope.get_ref().clone());
            }
        }
    }

    let upstream = match &raw.upstream {
        None => {
            check.error(table.span(), format!("route `{name}` needs an `upstream`"));
            None
        }
        Some(u) => match upstreams.get(u.get_ref()) {
            Some(up) => Some(Arc::clone(up)),
            None => {
                // A declared upstream that failed validation has its own error already.
                if !declared.contains(u.get_ref().as_str()) {
                    let mut known: Vec<&str> = upstreams.keys().map(String::as_str).collect();
                    known.sort_unstable();
                    check.error(
                        u.span(),
                        format!(
                            "route `{name}` names the upstream `{}`, which is not defined (upstreams: {})",
                            u.get_ref(),
                            if known.is_empty() { "none".to_string() } else { known.join(", ") }
                        ),
                    );
                }
                None
            }
        },
    };

    let cost = match &raw.cost {
        None => 1,
        Some(c) => positive(check, &format!("route `{name}`: `cost`"), c).unwrap_or_else(|| {
            ok = false;
            1
        }),
    };
    let max_body_bytes = raw.max_body_bytes.as_ref().and_then(|m| {
        let n = positive(check, &format!("route `{name}`: `max_body_bytes`"), m);
        ok &= n.is_some();
        n
    });
    let mode = match &raw.mode {
        None => RouteMode::Enforce,
        Some(m) => choice(check, "mode", m, &[("enforce", RouteMode::Enforce), ("shadow", RouteMode::Shadow)])
            .unwrap_or_else(|| {
                ok = false;
                RouteMode::Enforce
            }),
    };
    let on_store_error = raw.on_store_error.as_ref().and_then(|o| {
        let v = choice(check, "on_store_error", o, ON_STORE_ERROR);
        ok &= v.is_some();
        v
    });
    if public {
        for (field, span) in [
            ("cost", raw.cost.as_ref().map(Spanned::span)),
            ("mode", raw.mode.as_ref().map(Spanned::span)),
            ("on_store_error", raw.on_store_error.as_ref().map(Spanned::span)),
        ] {
            if let Some(span) = span {
                check.warning(
                    span,
                    format!(
                        "route `{name}`: `{field}` is ignored with `auth = \"none\"` (a \
                        public route is neither authenticated nor limited)"
                    ),
                );
            }
        }
    }

    let shape = prefix.map(|p| Shape {
        prefix: p.get_ref().clone(),
        methods: methods.clone(),
        table: table.span(),
        prefix_span: p.span(),
        methods_span: raw.methods.as_ref().map(Spanned::span),
    });
    let route = match (prefix, upstream) {
        (Some(prefix), Some(upstream)) if ok => Some(Route {
            prefix: prefix.get_ref().clone(),
            methods,
            auth: if public { RouteAuth::None } else { RouteAuth::Key { scopes: route_scopes } },
            upstream,
            cost,
            max_body_bytes,
            mode,
            on_store_error,
        }),
        _ => None,
    };
    (route, shape)
}

/// The file as written: serde structs that refuse unknown fields. Values whose position
/// a diagnostic may need are `Spanned`; values checked by hand (enums, durations,
/// integers that must be positive) are kept raw so that every problem is reported, not
/// just the first one serde meets.
mod raw {
    use std::collections::BTreeMap;

    use serde::Deserialize;
    use serde_spanned::Spanned;

    /// The whole `routes.toml`.
    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub(super) struct RawPolicy {
        pub default: Option<Spanned<String>>,
        pub forward_preflight: Option<bool>,
        pub paths: Option<RawPaths>,
        pub scopes: Option<BTreeMap<Spanned<String>, Spanned<String>>>,
        #[serde(default)]
        pub plans: BTreeMap<Spanned<String>, Spanned<RawPlan>>,
        #[serde(default)]
        pub upstreams: BTreeMap<Spanned<String>, Spanned<RawUpstream>>,
        pub routes: Option<Spanned<Vec<Spanned<RawRoute>>>>,
    }

    /// `[paths]`.
    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub(super) struct RawPaths {
        pub encoded_slash: Option<Spanned<String>>,
        pub semicolon: Option<Spanned<String>>,
    }

    /// `[plans.NAME]`.
    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub(super) struct RawPlan {
        pub api_access: Option<Spanned<bool>>,
        pub requests_per_minute: Option<Spanned<i64>>,
        pub requests: Option<Spanned<i64>>,
        pub window: Option<Spanned<String>>,
        pub max_keys: Option<Spanned<i64>>,
    }

    /// `[upstreams.NAME]`.
    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub(super) struct RawUpstream {
        pub url: Option<Spanned<String>>,
        pub connect_timeout: Option<Spanned<String>>,
        pub timeout: Option<Spanned<String>>,
    }

    /// One `[[routes]]` table.
    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub(super) struct RawRoute {
        pub prefix: Option<Spanned<String>>,
        pub methods: Option<Spanned<Vec<Spanned<String>>>>,
        pub scopes: Option<Spanned<Vec<Spanned<String>>>>,
        pub upstream: Option<Spanned<String>>,
        pub cost: Option<Spanned<i64>>,
        pub max_body_bytes: Option<Spanned<i64>>,
        pub mode: Option<Spanned<String>>,
        pub auth: Option<Spanned<String>>,
        pub on_store_error: Option<Spanned<String>>,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::OnStoreError;

    const SPEC_EXAMPLE: &str = r#"
default = "deny"
forward_preflight = false

[paths]
encoded_slash = "reject"
semicolon = "reject"

[scopes]
"calls:read" = "View call history and details"
"calls:write" = "Initiate outbound calls"
"agents:read" = "View voice agent configurations"
"contacts:read" = "View contacts"
"webhooks:manage" = "Manage webhook endpoints"
"analytics:read" = "View analytics and reports"

[plans.trial]
api_access = false
[plans.pro]
requests_per_minute = 300
max_keys = 5
[plans.agency]
requests_per_minute = 1000
[plans.burst]
requests = 20
window = "10s"

[upstreams.app]
url = "http://127.0.0.1:8080"

[[routes]]
prefix = "/v1/calls"
methods = ["GET", "HEAD"]
scopes = ["calls:read"]
upstream = "app"

[[routes]]
prefix = "/v1/calls"
methods = ["POST"]
scopes = ["calls:write"]
upstream = "app"
max_body_bytes = 1048576

[[routes]]
prefix = "/v1/webhooks"
scopes = ["webhooks:manage"]
upstream = "app"
cost = 5
on_store_error = "deny"

[[routes]]
prefix = "/v1/analytics"
scopes = ["analytics:read"]
upstream = "app"
mode = "shadow"

[[routes]]
prefix = "/status"
auth = "none"
upstream = "app"
"#;

    /// A minimal valid policy with `extra` appended (more tables or routes).
    fn with(extra: &str) -> String {
        format!("[scopes]\n\"a:read\" = \"A\"\n\n[upstreams.app]\nurl = \"http://127.0.0.1:8080\"\n\n{extra}")
    }

    const ROUTE: &str = "[[routes]]\nprefix = \"/a\"\nupstream = \"app\"\n";

    fn parse(text: &str) -> Result<(Policy, Vec<Diagnostic>), Vec<Diagnostic>> {
        Policy::parse(text, Path::new("routes.toml"))
    }

    fn errors(text: &str) -> Vec<Diagnostic> {
        match parse(text) {
            Ok(_) => panic!("expected errors for:\n{text}"),
            Err(errors) => errors,
        }
    }

    fn warnings(text: &str) -> Vec<Diagnostic> {
        match parse(text) {
            Ok((_, warnings)) => warnings,
            Err(errors) => panic!("unexpected errors: {errors:#?}"),
        }
    }

    /// The one error of `text`: its line, column and message.
    fn one_error(text: &str) -> (usize, usize, String) {
        let errors = errors(text);
        assert_eq!(errors.len(), 1, "{errors:#?}");
        let e = &errors[0];
        assert!(e.is_error());
        (e.line, e.column, e.message.clone())
    }

    fn assert_error(text: &str, line: usize, column: usize, fragment: &str) {
        let (l, c, message) = one_error(text);
        assert!(message.contains(fragment), "`{message}` should contain `{fragment}`");
        assert_eq!((l, c), (line, column), "{message}");
    }

    #[test]
    fn the_spec_example_compiles() {
        let (policy, warnings) = parse(SPEC_EXAMPLE).unwrap();
        assert!(warnings.is_empty(), "{warnings:#?}");
        assert_eq!(policy.file, Path::new("routes.toml"));
        assert!(!policy.forward_preflight);
        assert_eq!(policy.paths, PathOptions::default());
        assert_eq!(policy.scopes.len(), 6);
        assert_eq!(policy.scopes["calls:read"], "View call history and details");

        assert_eq!(policy.plans.len(), 4);
        let trial = &policy.plans["trial"];
        assert!(!trial.api_access);
        assert_eq!(trial.limit, None);
        let pro = &policy.plans["pro"];
        assert_eq!((pro.name.as_str(), pro.api_access, pro.max_keys), ("pro", true, Some(5)));
        assert_eq!(pro.limit, Some(Limit { requests: 300, window: Duration::from_secs(60) }));
        assert_eq!(policy.plans["agency"].max_keys, None);
        assert_eq!(policy.plans["burst"].limit, Some(Limit { requests: 20, window: Duration::from_secs(10) }));

        let app = &policy.upstreams["app"];
        assert_eq!(app.name, "app");
        assert_eq!(app.protocol, UpstreamProtocol::Http1);
        assert_eq!(app.authority.as_str(), "127.0.0.1:8080");
        assert_eq!(app.connect_timeout, Duration::from_secs(2));
        assert_eq!(app.timeout, Duration::from_secs(30));

        assert_eq!(policy.routes.len(), 5);
        let routes: Vec<&Arc<Route>> = policy.routes.iter().collect();
        assert_eq!(routes[0].methods, Some(vec![Method::GET, Method::HEAD]));
        assert_eq!(routes[0].auth, RouteAuth::Key { scopes: vec!["calls:read".to_string()] });
        assert_eq!((routes[0].cost, routes[0].max_body_bytes), (1, None));
        assert_eq!(routes[0].mode, RouteMode::Enforce);
        assert_eq!(routes[0].on_store_error, None);
        assert!(Arc::ptr_eq(&routes[0].upstream, app));
        assert_eq!(routes[1].max_body_bytes, Some(1_048_576));
        assert_eq!(routes[2].methods, None);
        assert_eq!(routes[2].cost, 5);
        assert_eq!(routes[2].on_store_error, Some(OnStoreError::Deny));
        assert_eq!(routes[3].mode, RouteMode::Shadow);
        assert_eq!(routes[4].auth, RouteAuth::None);

        match policy.routes.find("/v1/calls/7", &Method::POST) {
            RouteMatch::Found(r) => assert_eq!(r.max_body_bytes, Some(1_048_576)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn hash_is_the_sha256_of_the_bytes() {
        let (policy, _) = parse(SPEC_EXAMPLE).unwrap();
        assert_eq!(policy.hash, hex::encode(Sha256::digest(SPEC_EXAMPLE.as_bytes())));
        assert_eq!(policy.hash.len(), 64);
        assert!(policy.hash.chars().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        let (other, _) = parse(&format!("{SPEC_EXAMPLE}\n# a comment\n")).unwrap();
        assert_ne!(policy.hash, other.hash);
    }

    #[test]
    fn defaults_of_a_minimal_policy() {
        let (policy, warnings) = parse(&with(ROUTE)).unwrap();
        assert!(warnings.is_empty(), "{warnings:#?}");
        assert!(!policy.forward_preflight);
        assert_eq!(policy.paths, PathOptions::default());
        let route = policy.routes.iter().next().unwrap();
        assert_eq!(route.methods, None);
        assert_eq!(route.auth, RouteAuth::Key { scopes: vec![] });
        assert_eq!(route.cost, 1);
        assert_eq!(route.mode, RouteMode::Enforce);
    }

    #[test]
    fn paths_and_preflight_can_be_set() {
        let text = format!(
            "forward_preflight = true\n[paths]\nencoded_slash = \"keep\"\nsemicolon = \"keep\"\n{}",
            with(ROUTE)
        );
        let (policy, _) = parse(&text).unwrap();
        assert!(policy.forward_preflight);
        assert!(policy.paths.keep_encoded_slash && policy.paths.keep_semicolon);
    }

    #[test]
    fn bad_enum_values_are_refused() {
        assert_error(&format!("default = \"allow\"\n{}", with(ROUTE)), 1, 11, "only value is \"deny\"");
        assert_error(
            &format!("[paths]\nsemicolon = \"drop\"\n{}", with(ROUTE)),
            2,
            13,
            "must be \"reject\" or \"keep\"",
        );
        let route = |field: &str| with(&format!("{ROUTE}{field}\n"));
        assert_error(&route("mode = \"log\""), 10, 8, "\"enforce\" or \"shadow\"");
        assert_error(&route("auth = \"jwt\""), 10, 8, "\"key\" or \"none\"");
        assert_error(&route("on_store_error = \"retry\""), 10, 18, "\"local\" or \"allow\" or \"deny\"");
    }

    #[test]
    fn syntax_errors_and_unknown_fields_have_positions() {
        assert_error("default = \"deny\n", 1, 16, "");
        let (line, column, message) = one_error(&with(&format!("{ROUTE}scope = [\"a:read\"]\n")));
        assert_eq!((line, column), (10, 1));
        assert!(message.contains("unknown field `scope`"), "{message}");
        assert_error("colour = \"blue\"\n", 1, 1, "unknown field `colour`");
        assert_error(&with("[plans.x]\nrpm = 5\n"), 8, 1, "unknown field `rpm`");
        assert_error(&with(&format!("{ROUTE}cost = \"5\"\n")), 10, 8, "invalid type");
    }

    #[test]
    fn every_semantic_error_is_collected_and_sorted() {
        let text = with(
            "[plans.p]\nrequests_per_minute = 0\n\n[[routes]]\nprefix = \"/a/\"\nupstream = \"nope\"\n\
            scopes = [\"b:read\"]\ncost = 0\n",
        );
        let errors = errors(&text);
        let at: Vec<(usize, usize)> = errors.iter().map(|e| (e.line, e.column)).collect();
        assert_eq!(at, [(8, 23), (11, 10), (12, 12), (13, 11), (14, 8)], "{errors:#?}");
        assert!(errors.iter().all(Diagnostic::is_error));
        assert!(errors.iter().all(|e| e.file == Path::new("routes.toml")));
    }

    #[test]
    fn scope_names_are_checked() {
        let text = "[scopes]\n\"\" = \"empty\"\n\"a b\" = \"space\"\n\"a,b\" = \"comma\"\nok = \"fine\"\n\
            [upstreams.app]\nurl = \"http://h\"\n[[routes]]\nprefix = \"/\"\nupstream = \"app\"\n";
        let errors = errors(text);
        let at: Vec<(usize, usize)> = errors.iter().map(|e| (e.line, e.column)).collect();
        assert_eq!(at, [(2, 1), (3, 1), (4, 1)], "{errors:#?}");
        assert!(errors[0].message.contains("empty"));
        assert!(errors[1].message.contains("whitespace"));
        assert!(errors[2].message.contains("comma"));
    }

    #[test]
    fn plan_limits() {
        let plan = |body: &str| with(&format!("[plans.p]\n{body}\n{ROUTE}"));
        assert_error(&plan("requests_per_minute = 0"), 8, 23, "at least 1");
        assert_error(&plan("requests_per_minute = -3"), 8, 23, "at least 1");
        assert_error(&plan("requests = 0\nwindow = \"10s\""), 8, 12, "at least 1");
        assert_error(&plan("requests = 5"), 8, 12, "no `window`");
        assert_error(&plan("window = \"10s\""), 8, 10, "no `requests`");
        assert_error(&plan("requests = 5\nwindow = \"1500ms\""), 9, 10, "whole number of seconds");
        assert_error(&plan("requests = 5\nwindow = \"500ms\""), 9, 10, "at least 1s");
        assert_error(&plan("requests = 5\nwindow = \"0s\""), 9, 10, "at least 1s");
        assert_error(&plan("requests = 5\nwindow = \"ten seconds\""), 9, 10, "duration");
        assert_error(
            &plan("requests_per_minute = 5\nrequests = 5\nwindow = \"1s\""),
            8,
            23,
            "both `requests_per_minute` and `requests`/`window`",
        );
        assert_error(&plan("requests_per_minute = 5\nwindow = \"1s\""), 8, 23, "keep one");
        assert_error(&plan("requests_per_minute = 5\nmax_keys = 0"), 9, 12, "at least 1");
        assert_error(&plan("requests_per_minute = 5\nmax_keys = 4294967296"), 9, 12, "at most");

        let (policy, _) = parse(&plan("requests = 100\nwindow = \"1h\"\nmax_keys = 3")).unwrap();
        assert_eq!(policy.plans["p"].limit, Some(Limit { requests: 100, window: Duration::from_secs(3600) }));
        assert_eq!(policy.plans["p"].max_keys, Some(3));
    }

    #[test]
    fn a_plan_without_limit_is_a_warning() {
        let w = warnings(&with(&format!("[plans.free]\nmax_keys = 1\n[plans.off]\napi_access = false\n{ROUTE}")));
        assert_eq!(w.len(), 1, "{w:#?}");
        assert_eq!((w[0].line, w[0].column), (7, 1));
        assert!(w[0].message.contains("plan `free`") && w[0].message.contains("unlimited"));
        assert!(!w[0].is_error());
    }

    #[test]
    fn upstream_urls() {
        let ok = |url: &str| parse_upstream_url(url).map(|(p, a)| (p, a.to_string()));
        assert_eq!(ok("http://127.0.0.1:8080"), Ok((UpstreamProtocol::Http1, "127.0.0.1:8080".into())));
        assert_eq!(ok("http://app"), Ok((UpstreamProtocol::Http1, "app:80".into())));
        assert_eq!(ok("http://app/"), Ok((UpstreamProtocol::Http1, "app:80".into())));
        assert_eq!(ok("h2c://grpc:50051"), Ok((UpstreamProtocol::H2c, "grpc:50051".into())));
        assert_eq!(ok("h2c://grpc"), Ok((UpstreamProtocol::H2c, "grpc:80".into())));
        assert_eq!(ok("http://[::1]:8080"), Ok((UpstreamProtocol::Http1, "[::1]:8080".into())));
        assert_eq!(ok("http://[::1]"), Ok((UpstreamProtocol::Http1, "[::1]:80".into())));
        for (bad, why) in [
            ("127.0.0.1:8080", "must look like"),
            ("https://app", "plain HTTP"),
            ("ftp://app", "scheme `ftp`"),
            ("http://app/api", "path `/api`"),
            ("http://app/?x=1", "query"),
            ("http://app?x=1", "query"),
            ("http://app#f", "fragment"),
            ("http://user:pw@app", "credentials"),
            ("http://", "no host"),
            ("http://:8080", "no host"),
            ("http://app:", "empty port"),
            ("http://app:0", "port 0"),
            ("http://app:99999", "bad port `99999`"),
            ("http://app:80x", "bad port `80x`"),
            ("http://a pp", "bad host or port"),
        ] {
            match parse_upstream_url(bad) {
                Ok(x) => panic!("{bad} accepted: {x:?}"),
                Err(e) => assert!(e.contains(why), "{bad}: `{e}` should contain `{why}`"),
            }
        }
    }

    #[test]
    fn upstream_errors_are_positioned() {
        let text = |up: &str| format!("[upstreams.app]\n{up}\n{ROUTE}");
        assert_error(&text("url = \"http://a/b\""), 2, 7, "upstream `app`");
        assert_error(&text("connect_timeout = \"2s\""), 1, 1, "has no `url`");
        assert_error(&text("url = \"http://a\"\ntimeout = \"0s\""), 3, 11, "longer than 0s");
        assert_error(&text("url = \"http://a\"\nconnect_timeout = \"2\""), 3, 19, "no unit");
        let (policy, _) = parse(&text("url = \"h2c://a:1\"\nconnect_timeout = \"250ms\"\ntimeout = \"5m\"")).unwrap();
        let up = &policy.upstreams["app"];
        assert_eq!(up.connect_timeout, Duration::from_millis(250));
        assert_eq!(up.timeout, Duration::from_secs(300));
        assert_eq!(up.protocol, UpstreamProtocol::H2c);
    }

    #[test]
    fn a_route_naming_an_invalid_upstream_reports_only_the_upstream() {
        let text = format!("[upstreams.app]\nurl = \"https://a\"\n{ROUTE}");
        assert_error(&text, 2, 7, "plain HTTP");
    }

    #[test]
    fn unused_upstream_is_a_warning() {
        let w = warnings(&with(&format!("[upstreams.spare]\nurl = \"http://b\"\n{ROUTE}")));
        assert_eq!(w.len(), 1, "{w:#?}");
        assert_eq!((w[0].line, w[0].column), (7, 1));
        assert!(w[0].message.contains("`spare` is not used"));
    }

    #[test]
    fn prefix_normal_form() {
        for good in ["/", "/v1", "/v1/calls", "/v1/phone-numbers", "/a:b/@c/~d/e.f/x..y/.z", "/$!&'()*+,="] {
            assert_eq!(prefix_problem(good), None, "{good}");
        }
        for (bad, fragment) in [
            ("", "cannot be empty"),
            ("v1/calls", "write `/v1/calls`"),
            ("/v1/calls/", "write `/v1/calls`"),
            ("/v1//calls", "write `/v1/calls`"),
            ("//", "write `/`"),
            ("/v1/./calls", "write `/v1/calls`"),
            ("/v1/../calls", "write `/calls`"),
            ("/..", "write `/`"),
            ("/.", "write `/`"),
            ("/a%2Fb", "`%`"),
            ("/a;b", "`;`"),
            ("/a\\b", "`\\`"),
            ("/a#b", "`#`"),
            ("/a?b=1", "`?`"),
            ("/a b", "' '"),
            ("/a\tb", "'\\t'"),
            ("/café", "'é'"),
            ("/a\"b", "'\"'"),
        ] {
            match prefix_problem(bad) {
                None => panic!("{bad:?} accepted"),
                Some(e) => assert!(e.contains(fragment), "{bad:?}: `{e}` should contain `{fragment}`"),
            }
        }
    }

    #[test]
    fn bad_prefix_is_positioned_and_explained() {
        let text = with("[[routes]]\nprefix = \"/v1/calls/\"\nupstream = \"app\"\n");
        assert_error(&text, 8, 10, "write `/v1/calls`");
        assert_error(&with("[[routes]]\nupstream = \"app\"\n"), 7, 1, "needs a `prefix`");
        assert_error(&with("[[routes]]\nprefix = \"/a\"\n"), 7, 1, "needs an `upstream`");
    }

    #[test]
    fn methods_are_checked() {
        assert_eq!(method_problem("GET"), None);
        assert_eq!(method_problem("PURGE"), None);
        assert_eq!(method_problem("M-SEARCH"), None);
        assert!(method_problem("get").is_some_and(|e| e.contains("write `GET`")));
        assert!(method_problem("Post").is_some_and(|e| e.contains("write `POST`")));
        assert!(method_problem("GET POST").is_some_and(|e| e.contains("not an HTTP method token")));
        assert!(method_problem("").is_some());
        assert!(method_problem("G(ET").is_some());

        let route = |methods: &str| with(&format!("{ROUTE}methods = {methods}\n"));
        assert_error(&route("[\"GET\", \"get\"]"), 10, 19, "write `GET`");
        assert_error(&route("[]"), 10, 11, "leave `methods` out");
        assert_error(&route("[\"GET\", \"POST\", \"GET\"]"), 10, 27, "listed twice");
        assert_error(&route("[\"GET\", \"\"]"), 10, 19, "cannot be empty");
        let (policy, _) = parse(&route("[\"PURGE\", \"GET\"]")).unwrap();
        let r = policy.routes.iter().next().unwrap();
        assert_eq!(r.methods, Some(vec![Method::from_bytes(b"PURGE").unwrap(), Method::GET]));
    }

    #[test]
    fn route_references_are_checked() {
        let route = |field: &str| with(&format!("{ROUTE}{field}\n"));
        assert_error(&route("scopes = [\"a:read\", \"a:write\"]"), 10, 21, "scope `a:write`, which is not in [scopes]");
        let (_, _, message) = one_error(&route("scopes = [\"a:write\"]"));
        assert!(message.contains("(defined: a:read)"), "{message}");
        assert_error(
            &with("[[routes]]\nprefix = \"/a\"\nupstream = \"ap\"\n"),
            9,
            12,
            "upstream `ap`, which is not defined (upstreams: app)",
        );
    }

    #[test]
    fn numbers_of_a_route() {
        let route = |field: &str| with(&format!("{ROUTE}{field}\n"));
        assert_error(&route("cost = 0"), 10, 8, "`cost` must be at least 1");
        assert_error(&route("cost = -1"), 10, 8, "at least 1");
        assert_error(&route("max_body_bytes = 0"), 10, 18, "`max_body_bytes` must be at least 1");
        let (policy, _) = parse(&route("cost = 3\nmax_body_bytes = 1")).unwrap();
        let r = policy.routes.iter().next().unwrap();
        assert_eq!((r.cost, r.max_body_bytes), (3, Some(1)));
    }

    #[test]
    fn public_routes() {
        let route = |field: &str| with(&format!("{ROUTE}auth = \"none\"\n{field}\n"));
        assert_error(&route("scopes = [\"a:read\"]"), 11, 10, "cannot require scopes");
        let w = warnings(&route("cost = 2\nmode = \"shadow\"\non_store_error = \"deny\"\nmax_body_bytes = 10"));
        let at: Vec<(usize, usize)> = w.iter().map(|d| (d.line, d.column)).collect();
        assert_eq!(at, [(11, 8), (12, 8), (13, 18)], "{w:#?}");
        assert!(w.iter().all(|d| d.message.contains("ignored")));
        let w = warnings(&route("scopes = []"));
        assert_eq!(w.len(), 1);
        let (policy, _) = parse(&route("")).unwrap();
        assert_eq!(policy.routes.iter().next().unwrap().auth, RouteAuth::None);
    }

    #[test]
    fn overlapping_routes_are_refused() {
        let two = |a: &str, b: &str| {
            with(&format!(
                "[[routes]]\nprefix = \"/a\"\nupstream = \"app\"\n{a}\n[[routes]]\nprefix = \"/a\"\n\
                upstream = \"app\"\n{b}\n"
            ))
        };
        // Both with methods that overlap: at the later route's methods.
        let (line, column, message) =
            one_error(&two("methods = [\"GET\", \"POST\"]", "methods = [\"PUT\", \"POST\", \"GET\"]"));
        assert_eq!((line, column), (14, 11));
        assert!(message.contains("lines 7 and 11") && message.contains("GET, POST"), "{message}");
        // Neither has methods: at the later route's prefix.
        let (line, column, message) = one_error(&two("", ""));
        assert_eq!((line, column), (12, 10));
        assert!(message.contains("neither has `methods`"), "{message}");
        // One has none.
        assert_error(&two("methods = [\"GET\"]", ""), 12, 10, "the one at line 11 has no `methods`");
        assert_error(&two("", "methods = [\"GET\"]"), 12, 10, "the one at line 7 has no `methods`");
        // Disjoint methods are fine.
        assert!(parse(&two("methods = [\"GET\"]", "methods = [\"POST\"]")).is_ok());
    }

    #[test]
    fn three_overlapping_routes_give_every_pair() {
        let r = "[[routes]]\nprefix = \"/a\"\nupstream = \"app\"\n";
        let errors = errors(&with(&format!("{r}{r}{r}")));
        assert_eq!(errors.len(), 3, "{errors:#?}");
    }

    #[test]
    fn overlaps_are_found_even_in_routes_with_other_errors() {
        let text = with(
            "[[routes]]\nprefix = \"/a\"\nupstream = \"nope\"\n[[routes]]\nprefix = \"/a\"\n\
            upstream = \"app\"\nscopes = [\"zz\"]\n",
        );
        assert_eq!(errors(&text).len(), 3);
    }

    #[test]
    fn no_routes_is_refused() {
        for text in [String::new(), with(""), format!("routes = []\n{}", with(""))] {
            let (line, column, message) = one_error(&text);
            assert_eq!((line, column), (0, 0));
            assert!(message.contains("a policy with no routes is refused"), "{message}");
        }
    }

    #[test]
    fn cost_above_a_plan_limit_is_a_warning() {
        let text = with(&format!(
            "[plans.tiny]\nrequests = 2\nwindow = \"1s\"\n[plans.big]\nrequests_per_minute = 100\n\
            [plans.off]\napi_access = false\nrequests = 1\nwindow = \"1s\"\n{ROUTE}cost = 3\n"
        ));
        let w = warnings(&text);
        assert_eq!(w.len(), 1, "{w:#?}");
        assert_eq!((w[0].line, w[0].column), (19, 8));
        assert!(w[0].message.contains("route `/a`") && w[0].message.contains("plan `tiny`"), "{}", w[0].message);
        assert!(w[0].message.contains("2 requests per 1s"), "{}", w[0].message);
    }

    #[test]
    fn the_shipped_example_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/routes.toml");
        let (policy, warnings) = Policy::load(&path).unwrap();
        assert!(warnings.is_empty(), "{warnings:#?}");
        assert_eq!(policy.routes.len(), 13);
        assert!(!policy.plans["trial"].api_access);
    }
}

//! `[[routes]]`: each table checked and compiled into a [`Route`], then the checks across
//! routes (none at all, overlaps, a cost above a plan's whole limit).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ops::Range;
use std::sync::Arc;

use http::Method;
use serde_spanned::Spanned;

use super::limit::LimitKind;
use super::model::Plan;
use super::overlap::{check_overlaps, Shape};
use super::raw;
use super::routes::{Route, RouteAuth, RouteMode};
use super::upstream::Upstream;
use super::validate::{method_problem, positive, prefix_problem};
use crate::settings::ON_STORE_ERROR;
use crate::toml_check::{choice, Checker};

/// `[[routes]]`, then the checks across routes: overlaps, emptiness, cost against plans.
pub(super) fn compile_routes(
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

/// A warning for each plan with a limit below the route's cost: its tenants can never
/// call the route.
fn warn_cost(route: &Route, span: Range<usize>, plans: &BTreeMap<String, Plan>, check: &mut Checker<'_>) {
    for plan in plans.values().filter(|plan| plan.api_access) {
        let Some(limit) = plan.limits.iter().find(|limit| route.cost > limit.rule.requests) else {
            continue;
        };
        let per = match limit.rule.kind {
            LimitKind::Window(window) => crate::duration::format(window),
            LimitKind::Day => "day".to_string(),
            LimitKind::Month { .. } => "month".to_string(),
        };
        check.warning(
            span.clone(),
            format!(
                "route `{}` costs {}, more than plan `{}`'s whole limit of {} requests per \
                {per}: its tenants can never call it",
                route.prefix, route.cost, plan.name, limit.rule.requests
            ),
        );
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
            prefix: prefix.get_ref().as_str().into(),
            methods,
            auth: if public { RouteAuth::None } else { RouteAuth::Key { scopes: route_scopes } },
            upstream,
            cost,
            max_body_bytes,
            mode,
            on_store_error,
            resolved: Default::default(),
        }),
        _ => None,
    };
    (route, shape)
}

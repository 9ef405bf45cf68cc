//! The check across routes that no two routes with one prefix take a common method:
//! the router could not tell which one a request means.

use std::collections::HashMap;
use std::ops::Range;

use http::Method;

use crate::toml_check::Checker;

/// The parts of a route the overlap check needs, kept even when the route has other
/// errors, so that every overlap is reported in one pass.
pub(super) struct Shape {
    pub(super) prefix: String,
    /// `None`: every method.
    pub(super) methods: Option<Vec<Method>>,
    /// The `[[routes]]` header, for naming the route.
    pub(super) table: Range<usize>,
    pub(super) prefix_span: Range<usize>,
    pub(super) methods_span: Option<Range<usize>>,
}

/// Two routes with one prefix must take disjoint methods; an error at the later route
/// names both.
pub(super) fn check_overlaps(shapes: &[Shape], check: &mut Checker<'_>) {
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

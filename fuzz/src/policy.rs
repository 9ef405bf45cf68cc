//! `routes.toml` (docs/reference.md §2.2): any text compiles to a policy or to errors
//! without a panic, the same way twice, with every diagnostic at a line:column inside
//! the text (the checks of [`super::settings::diagnostics`]). A compiled policy is
//! consistent: its hash is the SHA-256 of the text, every route's prefix is a path that
//! normalisation can yield (else the route could never match), and the route table
//! finds each route at its own prefix.

use std::path::Path;

use http::Method;
use keygate::diag::Severity;
use keygate::path::normalize;
use keygate::policy::{Policy, RouteMatch};
use sha2::{Digest, Sha256};

use super::settings::diagnostics;

const FILE: &str = "/etc/keygate/routes.toml";

/// The input as the file's text, invalid UTF-8 replaced.
pub fn check(data: &[u8]) {
    check_text(&String::from_utf8_lossy(data));
}

pub fn check_text(text: &str) {
    let file = Path::new(FILE);
    let result = Policy::parse(text, file);
    let again = Policy::parse(text, file);
    match (&result, &again) {
        (Ok((_, warnings)), Ok((_, warnings_again))) => assert_eq!(warnings, warnings_again, "warnings differ"),
        (Err(errors), Err(errors_again)) => assert_eq!(errors, errors_again, "errors differ"),
        _ => panic!("compiling {text:?} twice gives two answers"),
    }
    match result {
        Ok((policy, warnings)) => {
            diagnostics(text, file, &warnings, Severity::Warning);
            valid(text, &policy);
        }
        Err(errors) => {
            assert!(!errors.is_empty(), "refused without an error");
            diagnostics(text, file, &errors, Severity::Error);
        }
    }
}

fn valid(text: &str, policy: &Policy) {
    assert_eq!(policy.file, Path::new(FILE));
    let hash: String = Sha256::digest(text.as_bytes()).iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(policy.hash, hash);
    assert!(!policy.routes.is_empty(), "a valid policy without routes");
    for route in policy.routes.iter() {
        let prefix: &str = &route.prefix;
        assert_eq!(
            normalize(prefix, policy.paths).as_ref(),
            Ok(prefix.to_string()).as_ref(),
            "no request path is ever {prefix:?}"
        );
        let method = route.methods.as_ref().and_then(|m| m.first().cloned()).unwrap_or(Method::GET);
        let found = policy.routes.find(prefix, &method);
        let RouteMatch::Found(found) = found else {
            panic!("{method} {prefix} finds no route: {found:?}");
        };
        assert_eq!(&*found.prefix, prefix, "{method} {prefix} finds the route of another prefix");
        // A path below the prefix is matched by it or by a longer prefix (which may not
        // take the method: there is no fall-back to a shorter prefix).
        let below = format!("{}/x", prefix.trim_end_matches('/'));
        let matched = match policy.routes.find(&below, &method) {
            RouteMatch::Found(route) => route.prefix.to_string(),
            RouteMatch::MethodNotAllowed { prefix, .. } => prefix.to_string(),
            RouteMatch::NotFound => panic!("{method} {below} finds no route, though {prefix} matches it"),
        };
        assert!(matched.len() >= prefix.len(), "{method} {below} is matched by {matched}, shorter than {prefix}");
        let boundary = matched == "/" || below == matched || below.starts_with(&format!("{matched}/"));
        assert!(boundary, "{method} {below} is matched by {matched}, not at a segment boundary");
    }
}

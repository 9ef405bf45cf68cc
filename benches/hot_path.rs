//! Micro-benchmarks of the request path's pure parts: path normalisation, route matching
//! at 10 / 1,000 / 10,000 routes, key parsing + digest + store lookup, the local limiter.
//! Run: `cargo bench --bench hot_path`. Figures go to benches/results/ (see README).

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use http::Method;
use keygate::keys::store::FileStore;
use keygate::keys::{manage, parse_secret, Peppers};
use keygate::path::{normalize, PathOptions};
use keygate::policy::{Policy, RouteMatch};
use keygate::ratelimit::local::LocalLimiter;
use keygate::ratelimit::{Limit, SystemClock};

fn policy_with_routes(n: usize) -> Policy {
    let mut text = String::from(
        "[scopes]\n\"calls:read\" = \"x\"\n[upstreams.app]\nurl = \"http://127.0.0.1:8080\"\n[plans.pro]\nrequests_per_minute = 300\n",
    );
    for i in 0..n {
        text.push_str(&format!(
            "[[routes]]\nprefix = \"/v1/service{}/resource{}\"\nscopes = [\"calls:read\"]\nupstream = \"app\"\n",
            i % 97,
            i
        ));
    }
    Policy::parse(&text, Path::new("bench.toml")).expect("bench policy").0
}

fn paths(c: &mut Criterion) {
    let mut group = c.benchmark_group("normalize");
    for (name, path) in
        [("clean", "/v1/calls/12345/recordings/latest.json"), ("messy", "/v1//calls/./x/../%41%62c/%2e%2E/12345")]
    {
        group.bench_function(name, |b| b.iter(|| normalize(black_box(path), PathOptions::default())));
    }
    group.finish();
}

fn routes(c: &mut Criterion) {
    let mut group = c.benchmark_group("route_match");
    for n in [10, 1_000, 10_000] {
        let policy = policy_with_routes(n);
        let path = "/v1/service5/resource5/items/42".to_string(); // resource 5 lives in service 5 % 97
        group.bench_with_input(BenchmarkId::from_parameter(n), &path, |b, path| {
            b.iter(|| matches!(policy.routes.find(black_box(path), &Method::GET), RouteMatch::Found(_)))
        });
    }
    group.finish();
}

fn keys(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let store = FileStore::open(&dir.path().join("keys.json")).unwrap();
    let peppers = Peppers::from_entries(vec![("p1".into(), b"bench-pepper".to_vec())]);
    let policy = policy_with_routes(1);
    let now = time::OffsetDateTime::now_utc();
    let created = store
        .update(|data| {
            manage::create_tenant(data, &policy, "acme", "pro", now)?;
            let new = manage::NewKey {
                tenant: "acme".into(),
                name: "b".into(),
                scopes: vec!["calls:read".into()],
                expires_in: None,
            };
            manage::create_key(data, &policy, &peppers, &new, now)
        })
        .unwrap();
    let text = created.secret.expose().to_string();
    c.bench_function("key_parse_digest_lookup", |b| {
        b.iter(|| {
            let secret = parse_secret(black_box(&text)).unwrap();
            store.lookup(&peppers.all(&secret))
        })
    });
}

fn limiter(c: &mut Criterion) {
    let limiter = LocalLimiter::new(Arc::new(SystemClock));
    let limit = Limit { requests: u64::MAX / 2, window: Duration::from_secs(60) };
    c.bench_function("local_limiter_check", |b| b.iter(|| limiter.check(black_box("acme"), &limit, 1)));
}

criterion_group!(benches, paths, routes, keys, limiter);
criterion_main!(benches);

//! Leases per limit of a plan against real Redis servers (one per test, on a free port): a
//! call renews only the limits whose lease needs it (the others' keys untouched), three
//! limits stay exact across three replicas with leases granted, and a replica idle with
//! leases in hand holds back at most each limit's lease, until that limit's sub-window
//! ends. Fails loudly when `redis-server` is missing.

mod support;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use keygate::ratelimit::lease::{LEASE_SHARE, MAX_LEASE};
use keygate::ratelimit::redis::{self as shared_window, RedisLimiter};
use keygate::ratelimit::{Limit, LimitKind, Rule};
use support::redis::{client, leases_returned, RedisServer};
use support::{eventually, most_in_one_window};

/// Generous per-call timeout: a loaded machine must not turn a slow reply into an error.
const RELAXED: Duration = Duration::from_secs(3);

fn window(requests: u64, window: Duration) -> Rule {
    Rule::window(Limit { requests, window })
}

async fn limiter(server: &RedisServer) -> RedisLimiter {
    RedisLimiter::new(client(&server.url(), RELAXED).await.0)
}

/// The sum of the counters of a sliding window's hash (its sub-windows' fields).
fn window_count(server: &RedisServer, key: &str) -> u64 {
    let out = server.cli(&["HGETALL", key]);
    let lines: Vec<&str> = out.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    lines
        .chunks(2)
        .filter_map(|pair| Some((pair[0].parse::<i64>().ok()?, pair.get(1)?.parse::<u64>().ok()?)))
        .filter(|(field, _)| *field >= 0)
        .map(|(_, count)| count)
        .sum()
}

/// `redis-cli MONITOR` on `server`: every command Redis runs, one line each, collected by
/// a thread until the returned guard is dropped.
struct Monitor {
    child: std::process::Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Monitor {
    fn start(server: &RedisServer) -> Monitor {
        let addr = server.addr();
        let mut child = Command::new("redis-cli")
            .args(["-h", &addr.ip().to_string(), "-p", &addr.port().to_string(), "MONITOR"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-cli MONITOR");
        let stdout = child.stdout.take().expect("stdout");
        let lines: Arc<Mutex<Vec<String>>> = Arc::default();
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        // MONITOR answers OK once it is on.
        let on = support::eventually_blocking(Duration::from_secs(5), || !lines.lock().unwrap().is_empty());
        assert!(on, "MONITOR never started");
        Monitor { child, lines }
    }

    /// The script calls seen so far (client-sent EVALSHA or EVAL), each as its arguments.
    fn script_calls(&self) -> Vec<String> {
        let lines = self.lines.lock().unwrap();
        lines.iter().filter(|l| l.contains("] \"EVALSHA\"") || l.contains("] \"EVAL\"")).cloned().collect()
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A plan of a 1 s burst (50 ms sub-windows) and a minute (3 s sub-windows), neither
/// reached, one replica busy at a bounded rate for 3 s: the burst's lease ends at every
/// 50 ms sub-window and is renewed by calls on its one key; the minute's lease runs for
/// its own sub-window and is renewed only when spent (or low), so that most calls never
/// touch its key. Redis holds exactly what was admitted in the minute once
/// the leases are back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_renews_only_the_limits_whose_lease_needs_it() {
    let server = RedisServer::start();
    let replica = limiter(&server).await;
    let rules = [window(10_000_000, Duration::from_secs(1)), window(10_000_000, Duration::from_secs(60))];
    let (burst, minute) = (shared_window::rule_key("acme", &rules[0]), shared_window::rule_key("acme", &rules[1]));
    let monitor = Monitor::start(&server);
    let admitted = Arc::new(Mutex::new(0u64));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (replica, admitted) = (replica.clone(), admitted.clone());
        tasks.push(tokio::spawn(async move {
            while start.elapsed() < Duration::from_secs(3) {
                let d = replica.check_rules("acme", &rules, 1).await.expect("check");
                assert!(d.allowed, "{d:?}");
                *admitted.lock().unwrap() += 1;
                // At most about 1,600 checks a second: the minute's leases last.
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }));
    }
    for task in tasks {
        task.await.expect("client task");
    }
    leases_returned(std::slice::from_ref(&replica)).await;
    let calls = monitor.script_calls();
    let admitted = *admitted.lock().unwrap();
    let touching = |key: &str| calls.iter().filter(|c| c.contains(&format!("\"{key}\""))).count();
    let (with_burst, with_minute) = (touching(&burst), touching(&minute));
    let both =
        calls.iter().filter(|c| c.contains(&format!("\"{burst}\"")) && c.contains(&format!("\"{minute}\""))).count();
    println!(
        "{admitted} admitted in 3 s with {} script calls: {with_burst} on the burst's key, {with_minute} on the minute's \
         ({both} on both)",
        calls.len()
    );
    assert!(admitted > 100, "the replica was busy: {admitted}");
    assert!(calls.len() * 4 < admitted as usize, "leases save calls: {} for {admitted}", calls.len());
    assert!(with_burst > with_minute * 3, "the minute's key in {with_minute} of {} calls", calls.len());
    assert!(with_burst - both > calls.len() / 2, "most calls carry the burst's key alone");
    assert_eq!(window_count(&server, &minute), admitted, "the minute counts exactly what was admitted");
}

/// Three replicas, eight clients each, one tenant whose plan is a burst of 600 a second,
/// 1,500 per 4 s and 2,500 a day, for 8 s at saturation: large enough that every limit
/// grants leases (each of its own size). No second-long span admits more than 600, no
/// 4 s span more than 1,500, the day exactly 2,500, and once the leases are back Redis
/// holds exactly what was admitted in the day (a refused cost's units, taken from the
/// leases of limits the call did not carry, went back to them, never counted).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_limits_with_leases_are_exact_across_three_replicas() {
    const RUN: Duration = Duration::from_secs(8);
    let server = RedisServer::start();
    let rules = [
        window(600, Duration::from_secs(1)),
        window(1_500, Duration::from_secs(4)),
        Rule { requests: 2_500, kind: LimitKind::Day },
    ];
    let mut replicas = Vec::new();
    for _ in 0..3 {
        replicas.push(limiter(&server).await);
    }
    let admitted: Arc<Mutex<Vec<(Instant, Instant)>>> = Arc::default();
    let refused_by: Arc<Mutex<BTreeMap<usize, u64>>> = Arc::default();
    let leased = Arc::new(Mutex::new([0u64; 3]));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for replica in &replicas {
        for _ in 0..8 {
            let (replica, admitted, refused_by, leased) =
                (replica.clone(), admitted.clone(), refused_by.clone(), leased.clone());
            tasks.push(tokio::spawn(async move {
                while start.elapsed() < RUN {
                    let sent = Instant::now();
                    let d = replica.check_rules("acme", &rules, 1).await.expect("check");
                    assert_eq!(d.limit, rules[d.index].requests, "{d:?}");
                    assert_eq!(d.allowed, d.retry_after.is_none(), "{d:?}");
                    if d.allowed {
                        admitted.lock().unwrap().push((sent, Instant::now()));
                    } else {
                        *refused_by.lock().unwrap().entry(d.index).or_default() += 1;
                        // Refused: a moment before the next (the refusals are not the point).
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                    let mut leased = leased.lock().unwrap();
                    for (i, most) in leased.iter_mut().enumerate() {
                        *most = (*most).max(replica.leased_units_in(i));
                    }
                }
            }));
        }
    }
    for task in tasks {
        task.await.expect("client task");
    }
    let mut admitted = admitted.lock().unwrap().clone();
    admitted.sort();
    let worst = |window: Duration| most_in_one_window(&admitted, window);
    let refused_by = refused_by.lock().unwrap().clone();
    let leased = *leased.lock().unwrap();
    println!(
        "three limits, leased: {} admitted, at most {} in 1 s, {} in 4 s; refused by limit: {refused_by:?}; most \
         units leased per limit on one replica: {leased:?}",
        admitted.len(),
        worst(Duration::from_secs(1)),
        worst(Duration::from_secs(4))
    );
    assert!(leased.iter().all(|&units| units > 0), "every limit granted leases: {leased:?}");
    assert!(worst(Duration::from_secs(1)) <= 600, "the burst");
    assert!(worst(Duration::from_secs(4)) <= 1_500, "the 4 s window");
    assert_eq!(admitted.len(), 2_500, "the day's quota, shared exactly");
    assert!(refused_by.contains_key(&2), "the day refused at the end: {refused_by:?}");

    leases_returned(&replicas).await;
    assert_eq!(server.quota_count(&shared_window::rule_key("acme", &rules[2])), 2_500, "refusals counted in none");
}

/// One replica is busy for a moment on a plan of a 1 s burst (never reached) and 200 per
/// 20 s (one-second sub-windows), and goes idle holding leases; another saturates. The
/// 20 s window's lease holds back at most its units (at most 1/LEASE_SHARE of its quota
/// free, at most MAX_LEASE), never more is admitted than the limit, and the units come
/// back when that window's sub-window ends, without any further request on the idle
/// replica: then the other replica gets exactly them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_replica_holds_back_at_most_each_limits_lease_until_its_sub_window_ends() {
    let server = RedisServer::start();
    let (idle, busy) = (limiter(&server).await, limiter(&server).await);
    let rules = [window(1_000_000, Duration::from_secs(1)), window(200, Duration::from_secs(20))];
    let key = shared_window::rule_key("acme", &rules[1]);
    let started = Instant::now();
    // Busy: bursts of 16 concurrent checks until the 20 s window's lease holds units.
    let mut admitted_idle = 0;
    for _ in 0..50 {
        let mut tasks = Vec::new();
        for _ in 0..16 {
            let idle = idle.clone();
            tasks.push(tokio::spawn(async move { idle.check_rules("acme", &rules, 1).await.expect("check") }));
        }
        for task in tasks {
            assert!(task.await.expect("task").allowed);
            admitted_idle += 1;
        }
        if idle.leased_units_in(1) > 0 {
            break;
        }
    }
    let parked = idle.leased_units_in(1);
    assert!(parked > 0, "no lease of the 20 s window after 50 bursts");
    assert!(parked <= MAX_LEASE && parked <= rules[1].requests / LEASE_SHARE, "{parked} units parked");

    // The busy replica is refused only once what is free is gone.
    let saturate = async || {
        let mut admitted = 0;
        loop {
            let d = busy.check_rules("acme", &rules, 1).await.expect("check");
            if !d.allowed {
                assert_eq!(d.index, 1, "refused by the 20 s window: {d:?}");
                return admitted;
            }
            admitted += 1;
            assert!(admitted <= rules[1].requests, "more admitted than the limit");
        }
    };
    let first = saturate().await;
    assert!(first + admitted_idle + parked >= rules[1].requests, "{first} + {admitted_idle} + {parked}");
    assert!(window_count(&server, &key) <= rules[1].requests);

    // The idle replica hands its units back when their sub-window ends: no request needed.
    let back = eventually(Duration::from_secs(6), async || idle.leased_units() == 0).await;
    assert!(back, "the idle replica still holds {} units", idle.leased_units());
    let held_for = started.elapsed();
    assert!(held_for < Duration::from_secs(8), "held for {held_for:?}: one-second sub-windows");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let second = saturate().await;
    println!("{parked} units of the 20 s window parked for at most {held_for:?}; the busy replica got {first}, then {second}");
    assert!(started.elapsed() < Duration::from_secs(18), "the test must run inside one window");
    assert_eq!(admitted_idle + first + second, rules[1].requests, "exactly the limit over the window");
    leases_returned(&[idle, busy]).await;
    assert_eq!(window_count(&server, &key), rules[1].requests);
}

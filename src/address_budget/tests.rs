//! Unit tests of `address_budget.rs`.

use super::*;
use crate::clock::ManualClock;

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

fn xff(lines: &[&str]) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for line in lines {
        headers.append("x-forwarded-for", line.parse().unwrap());
    }
    headers
}

#[test]
fn an_untrusted_peer_is_its_own_address_whatever_it_forwards() {
    let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
    assert_eq!(client_address(&trusted, ip("192.0.2.7"), &xff(&["198.51.100.1"])), ip("192.0.2.7"));
    assert_eq!(client_address(&[], ip("::ffff:192.0.2.7"), &xff(&["198.51.100.1"])), ip("192.0.2.7"));
    assert_eq!(client_address(&trusted, ip("10.1.1.1"), &HeaderMap::new()), ip("10.1.1.1"));
}

#[test]
fn a_trusted_peer_names_the_right_most_entry_that_is_not_a_trusted_proxy() {
    let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap(), "2001:db8::/32".parse().unwrap()];
    let peer = ip("::ffff:10.0.0.1");
    // The client may have written anything on the left: the right-most untrusted wins.
    let headers = xff(&["6.6.6.6, 198.51.100.9, 10.2.3.4"]);
    assert_eq!(client_address(&trusted, peer, &headers), ip("198.51.100.9"));
    // Several header lines read as one list, the last line last.
    let headers = xff(&["6.6.6.6", "198.51.100.9", "10.2.3.4, 2001:db8::5"]);
    assert_eq!(client_address(&trusted, peer, &headers), ip("198.51.100.9"));
    // Ports, brackets, spaces, empty entries and IPv4-mapped entries.
    let headers = xff(&["[2001:db9::1]:443, , 10.9.9.9:80 ,"]);
    assert_eq!(client_address(&trusted, peer, &headers), ip("2001:db9::1"));
    let headers = xff(&["::ffff:198.51.100.3"]);
    assert_eq!(client_address(&trusted, peer, &headers), ip("198.51.100.3"));
    // Every entry a trusted proxy: the left-most.
    let headers = xff(&["10.7.7.7, 10.8.8.8"]);
    assert_eq!(client_address(&trusted, peer, &headers), ip("10.7.7.7"));
}

#[test]
fn a_trusted_peer_whose_header_cannot_be_read_is_the_address() {
    let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
    let peer = ip("10.0.0.1");
    for lines in [&["unknown"][..], &["198.51.100.9, garbage"], &["1.2.3.4.5"], &["", " , "]] {
        assert_eq!(client_address(&trusted, peer, &xff(lines)), peer, "{lines:?}");
    }
    // Garbage left of the answer is never read.
    assert_eq!(client_address(&trusted, peer, &xff(&["garbage, 198.51.100.9"])), ip("198.51.100.9"));
    let mut headers = HeaderMap::new();
    headers.insert("x-forwarded-for", http::HeaderValue::from_bytes(b"198.51.100.\xff").unwrap());
    assert_eq!(client_address(&trusted, peer, &headers), peer);
}

#[test]
fn a_budget_allows_its_size_at_once_then_refills_with_the_clock() {
    let clock = Arc::new(ManualClock::new(1_700_000_000_000));
    let budget = Budget::new(3, 100, clock.clone());
    let (a, b) = (ip("192.0.2.1"), ip("192.0.2.2"));
    for _ in 0..3 {
        assert_eq!(budget.take(a), Ok(()));
    }
    // A third of a minute until one is back; refusals spend nothing.
    assert_eq!(budget.take(a), Err(20));
    assert_eq!(budget.take(a), Err(20));
    // Another address has its own budget.
    assert_eq!(budget.take(b), Ok(()));
    clock.advance(Duration::from_millis(19_500));
    assert_eq!(budget.take(a), Err(1));
    clock.advance(Duration::from_millis(500));
    assert_eq!(budget.take(a), Ok(()));
    assert_eq!(budget.take(a), Err(20));
    // A minute later the whole budget is back, no more.
    clock.advance(Duration::from_secs(60));
    for _ in 0..3 {
        assert_eq!(budget.take(a), Ok(()));
    }
    assert!(budget.take(a).is_err());
}

#[test]
fn a_budget_of_one_a_minute_waits_a_minute() {
    let clock = Arc::new(ManualClock::new(5_000));
    let budget = Budget::new(1, 100, clock.clone());
    let a = ip("2001:db8::1");
    assert_eq!(budget.take(a), Ok(()));
    assert_eq!(budget.take(a), Err(60));
    clock.advance(Duration::from_secs(60));
    assert_eq!(budget.take(a), Ok(()));
}

#[test]
fn what_is_given_back_can_be_spent_again() {
    let clock = Arc::new(ManualClock::new(1_000_000));
    let budget = Budget::new(2, 100, clock);
    let a = ip("192.0.2.1");
    assert_eq!(budget.take(a), Ok(()));
    assert_eq!(budget.take(a), Ok(()));
    assert!(budget.take(a).is_err());
    budget.give_back(a);
    assert_eq!(budget.take(a), Ok(()));
    assert!(budget.take(a).is_err());
    // Giving back for an address never seen does nothing.
    budget.give_back(ip("192.0.2.9"));
    assert_eq!(budget.tracked(), 1);
}

#[test]
fn a_flood_of_distinct_addresses_is_bounded() {
    let clock = Arc::new(ManualClock::new(1_000_000));
    let budget = Budget::new(10, 500, clock);
    for i in 0..20_000u32 {
        let _ = budget.take(IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i)));
    }
    let tracked = budget.tracked();
    assert!(tracked <= 500, "{tracked} addresses tracked, at most 500 allowed");
}

#[test]
fn zero_turns_a_budget_off() {
    let clock: Arc<dyn Clock> = Arc::new(ManualClock::new(0));
    let server = Server { failed_auth_per_minute: 0, preflights_per_minute: 7, ..Server::default() };
    let budgets = AddressBudgets::new(&server, &[], clock);
    assert!(budgets.failed_auth.is_none());
    assert_eq!(budgets.preflights.as_ref().map(Budget::per_minute), Some(7));
}

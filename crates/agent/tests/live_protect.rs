//! Per-client rate limits, the new-connection rate and access lists on a
//! real Envoy, with clients on distinct loopback addresses.

mod common;

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use common::{Lab, Load, Via, backends, lb_over, over_deliveries};
use serde_json::{Value, json};
use vpsie_lb_testkit::backend::HttpBackend;
use vpsie_lb_testkit::http::{connect, request};
use vpsie_lb_testkit::{free_port, poll_until};

fn client(n: u8) -> Option<IpAddr> {
    Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, n)))
}

/// Statuses of `n` requests for `path` from `from`, as fast as they go.
fn statuses(from: u8, port: u16, path: &str, n: usize) -> Vec<u16> {
    (0..n)
        .map(|_| request(client(from), port, "GET", path, &[]).map_or(0, |r| r.status))
        .collect()
}

/// Statuses of `n` requests for `path` from `from`, sent at once on
/// connections opened beforehand, so no refill (once a second) is likely
/// to fall between them.
fn burst(from: u8, port: u16, path: &str, n: usize) -> Vec<u16> {
    let mut conns: Vec<_> = (0..n)
        .map(|_| connect(client(from), port).expect("connect"))
        .collect();
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    for c in &mut conns {
        c.write_all(req.as_bytes()).expect("send");
    }
    conns
        .iter_mut()
        .map(|c| match vpsie_lb_testkit::http::read_response(c) {
            // Every refusal must say when to come back.
            Ok(r) if r.status == 429 => {
                assert_eq!(r.header("retry-after"), Some("1"), "{}", r.body);
                429
            }
            Ok(r) => r.status,
            Err(_) => 0,
        })
        .collect()
}

/// Three bursts from fresh clients: one must give exactly `(ok, limited)`,
/// and none more than one refill (`per_second`) besides. A refill falls
/// inside a burst of a millisecond about once in a thousand.
fn exact_burst(clients: [u8; 3], port: u16, path: &str, want: (usize, usize), per_second: usize) {
    let n = want.0 + want.1;
    let mut seen = Vec::new();
    for from in clients {
        let got = burst(from, port, path, n);
        let ok = count(&got, 200);
        assert!(
            ok >= want.0 && ok <= want.0 + per_second && count(&got, 429) == n - ok,
            "127.0.0.{from}: {got:?}"
        );
        if (ok, n - ok) == want {
            return;
        }
        seen.push(got);
    }
    panic!("no burst gave exactly {want:?}: {seen:?}");
}

fn count(list: &[u16], status: u16) -> usize {
    list.iter().filter(|s| **s == status).count()
}

/// Waits until `from` gets `want` for `path`: the config may still be on its way.
fn wait_status(from: u8, port: u16, path: &str, want: u16) {
    poll_until(
        &format!("127.0.0.{from} gets {want} for {path}"),
        Duration::from_secs(30),
        || match request(client(from), port, "GET", path, &[]) {
            Ok(r) if r.status == want => Ok(()),
            Ok(r) => Err(format!("status {}", r.status)),
            Err(e) => Err(e.to_string()),
        },
    );
}

/// A limited load balancer, and its backend (served while it lives).
fn limited(port: u16, per_second: u32, burst: u32) -> (Value, Vec<HttpBackend>) {
    let bs = backends(&["a"]);
    let mut doc = lb_over("rl", "http", port, "round_robin", &bs);
    doc["rate_limit"] = json!({"requests_per_second": per_second, "burst": burst});
    (doc, bs)
}

/// A client gets exactly its burst, then 429 with Retry-After and a log
/// line; another client at the same time is not touched; the bucket
/// refills at the configured rate.
fn rate_limit_is_per_client_with_its_burst(via: Via) {
    let port = free_port();
    let (doc, _bs) = limited(port, 2, 5);
    let lab = Lab::start_with(via, &doc, &["--access-log-sample-percent", "0"]);
    wait_status(9, port, "/", 200);
    exact_burst([2, 4, 5], port, "/", (5, 3), 2);
    let b = burst(3, port, "/", 5);
    assert_eq!(count(&b, 200), 5, "client B is not limited by A: {b:?}");
    poll_until(
        "a log line with the RL flag",
        Duration::from_secs(10),
        || {
            let log = std::fs::read_to_string(lab.access_log()).unwrap_or_default();
            log.lines()
                .any(|l| l.contains("\"response_flags\":\"RL\"") && l.contains("\"status\":429"))
                .then_some(())
                .ok_or(log)
        },
    );
    // Measured refill: requests at about 20 a second for about 3 seconds
    // from an empty bucket pass at the configured 2 a second.
    let started = Instant::now();
    let mut passed = 0;
    while started.elapsed() < Duration::from_secs(3) {
        passed += count(&statuses(2, port, "/", 1), 200);
        std::thread::sleep(Duration::from_millis(50));
    }
    let expected = 2.0 * started.elapsed().as_secs_f64();
    eprintln!(
        "refill: {passed} passed in {:?}, {expected:.1} expected",
        started.elapsed()
    );
    assert!(
        (passed as f64 - expected).abs() <= 2.0,
        "{passed} vs {expected:.1}"
    );
    let limited = lab
        .envoy()
        .stat("lb_rl.http_local_rate_limit.rate_limited")
        .unwrap_or(0);
    assert!(
        limited >= 3,
        "the limited requests are counted per load balancer: {limited}"
    );
}

/// More clients than the buckets Envoy keeps: the least recently seen is
/// forgotten and comes back with a full bucket.
fn an_evicted_client_starts_again_with_a_full_bucket(via: Via) {
    let port = free_port();
    let (doc, _bs) = limited(port, 1, 3);
    let _lab = Lab::start_with(via, &doc, &["--rate-limit-tracked-clients", "2"]);
    wait_status(9, port, "/", 200);
    let first = burst(2, port, "/", 5);
    assert!(
        count(&first, 200) <= 4 && count(&first, 429) >= 1,
        "{first:?}"
    );
    for other in [3, 4, 5] {
        statuses(other, port, "/", 1);
    }
    // Without eviction 127.0.0.2 would have at most one token (a refill).
    let again = burst(2, port, "/", 3);
    assert_eq!(
        count(&again, 200),
        3,
        "evicted, so a full bucket again: {again:?}"
    );
}

/// A route's limit applies to that route only.
fn a_route_limit_applies_to_its_route_only(via: Via) {
    let port = free_port();
    let bs = backends(&["a"]);
    let mut doc = lb_over("rr", "http", port, "round_robin", &bs);
    doc["routes"] = json!([{"id": "slow", "path_prefix": "/slow", "forward": [{"pool": "default"}],
                            "rate_limit": {"requests_per_second": 1, "burst": 2}}]);
    let _lab = Lab::start(via, &doc);
    wait_status(9, port, "/", 200);
    exact_burst([2, 4, 5], port, "/slow", (2, 3), 1);
    let rest = statuses(2, port, "/", 10);
    assert_eq!(count(&rest, 200), 10, "{rest:?}");
}

/// Deny wins over allow; outside the allow list is refused; a route's own
/// list applies on top; each with a control client that passes.
fn access_lists_on_http(via: Via) {
    let port = free_port();
    let bs = backends(&["a"]);
    let mut doc = lb_over("acl", "http", port, "round_robin", &bs);
    doc["access"] = json!({"allow": ["127.0.0.0/29"], "deny": ["127.0.0.3"]});
    doc["routes"] = json!([{"id": "admin", "path_prefix": "/admin", "forward": [{"pool": "default"}],
                            "access": {"allow": ["127.0.0.2/32"]}}]);
    let lab = Lab::start_with(via, &doc, &["--access-log-sample-percent", "0"]);
    wait_status(2, port, "/", 200);
    for (from, path, want) in [
        (2, "/", 200),
        (4, "/", 200),
        (3, "/", 403),
        (9, "/", 403),
        (2, "/admin", 200),
        (4, "/admin", 403),
        (3, "/admin", 403),
    ] {
        let got = request(client(from), port, "GET", path, &[]).expect("request");
        assert_eq!(got.status, want, "127.0.0.{from} {path}");
    }
    poll_until(
        "a log line for the refused client",
        Duration::from_secs(10),
        || {
            let log = std::fs::read_to_string(lab.access_log()).unwrap_or_default();
            log.lines()
                .any(|l| l.contains("\"status\":403") && l.contains("\"client\":\"127.0.0.3:"))
                .then_some(())
                .ok_or(log)
        },
    );
}

/// The status of a request to `[::1]:port`, 0 when the connection closed.
fn status_v6(port: u16) -> u16 {
    let Ok(mut s) = std::net::TcpStream::connect(("::1", port)) else {
        return 0;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    vpsie_lb_testkit::http::read_response(&mut s).map_or(0, |r| r.status)
}

/// IPv6 clients are matched by IPv6 networks: a listener on `::1`, its
/// one client allowed, then denied, then outside an allow list.
fn access_lists_match_ipv6_clients(via: Via) {
    let port = free_port();
    let bs = backends(&["a"]);
    let doc = |access: Value| {
        let mut d = lb_over("six", "http", port, "round_robin", &bs);
        d["access"] = access;
        d
    };
    let v6 = ["--listen-address", "::1"];
    let mut lab = Lab::start_with(via, &doc(json!({"allow": ["::1/128", "10.0.0.0/8"]})), &v6);
    poll_until("::1 allowed", Duration::from_secs(30), || {
        match status_v6(port) {
            200 => Ok(()),
            s => Err(format!("status {s}")),
        }
    });
    for (access, want) in [
        (json!({"deny": ["::1"]}), 403),
        (json!({"allow": ["2001:db8::/32"]}), 403),
        (json!({"allow": ["::/0"], "deny": ["2001:db8::/32"]}), 200),
    ] {
        lab.render_with(&doc(access.clone()), &v6);
        poll_until(
            &format!("{access} gives {want}"),
            Duration::from_secs(20),
            || match status_v6(port) {
                s if s == want => Ok(()),
                s => Err(format!("status {s}")),
            },
        );
    }
}

/// `envoy.listen_address: "::"` serves IPv4 as well as IPv6, and IPv4
/// clients are still matched by IPv4 networks. Before, Envoy bound `::`
/// IPv6-only: an HA pair on IPv4 virtual IPs served nothing.
fn regression_listening_on_the_ipv6_any_address_served_no_ipv4(via: Via) {
    let port = free_port();
    let bs = backends(&["a"]);
    let mut doc = lb_over("any", "http", port, "round_robin", &bs);
    doc["access"] = json!({"deny": ["127.0.0.3/32"]});
    let _lab = Lab::start_with(via, &doc, &["--listen-address", "::"]);
    poll_until(
        "ipv4 served on ::",
        Duration::from_secs(30),
        || match request(client(2), port, "GET", "/", &[]) {
            Ok(r) if r.status == 200 => Ok(()),
            other => Err(format!("{:?}", other.map(|r| r.status))),
        },
    );
    let denied = request(client(3), port, "GET", "/", &[]).expect("request");
    assert_eq!(denied.status, 403, "an ipv4 client is matched as ipv4");
    assert_eq!(status_v6(port), 200, "ipv6 still served");
}

/// What a backend that merges slashes and decodes `%2F` makes of a path,
/// as many do (nginx's `merge_slashes`, most frameworks' routers).
fn as_backends_read(path: &str) -> String {
    let decoded = path.replace("%2F", "/").replace("%2f", "/");
    let mut out = String::new();
    for c in decoded.chars() {
        if !(c == '/' && out.ends_with('/')) {
            out.push(c);
        }
    }
    out
}

/// The status of `GET path` from `from`, following up to three redirects
/// on the same port as a browser would.
fn followed(from: u8, port: u16, path: &str) -> u16 {
    let mut path = path.to_owned();
    for _ in 0..3 {
        let r = request(client(from), port, "GET", &path, &[]).expect("request");
        if !matches!(r.status, 301 | 302 | 307 | 308) {
            return r.status;
        }
        let location = r.headers.iter().find(|(k, _)| k == "location");
        let location = location.map(|(_, v)| v.as_str()).unwrap_or_default();
        // Absolute or not, only the path matters on the same port.
        path = match location.split_once("://") {
            Some((_, rest)) => rest.find('/').map_or("/".into(), |i| rest[i..].to_owned()),
            None => location.to_owned(),
        };
    }
    0
}

/// A route's access list holds for every spelling of its path that a
/// backend reads as that path. Before, Envoy routed `//admin` and
/// `/%2Fadmin` as other paths (the default route, no access list) while
/// the backend merged them into `/admin`.
fn regression_route_access_lists_were_bypassed_with_doubled_or_escaped_slashes(via: Via) {
    let port = free_port();
    let bs = backends(&["a"]);
    let mut doc = lb_over("paths", "http", port, "round_robin", &bs);
    doc["routes"] = json!([{"id": "admin", "path_prefix": "/admin", "forward": [{"pool": "default"}],
                            "access": {"allow": ["127.0.0.2/32"]}}]);
    let _lab = Lab::start_with(via, &doc, &["--access-log-sample-percent", "0"]);
    wait_status(4, port, "/", 200);
    for path in [
        "/admin",
        "//admin",
        "///admin/x",
        "/admin//x",
        "/%2Fadmin",
        "/%2fadmin",
        "/%2F%2Fadmin/x",
        "//%2fadmin",
        "/admin%2Fx",
        "/x/..//admin",
        "/.//admin",
    ] {
        assert_eq!(followed(4, port, path), 403, "{path} from a refused client");
    }
    let reached: Vec<String> = bs[0]
        .paths()
        .into_iter()
        .filter(|p| as_backends_read(p).starts_with("/admin"))
        .collect();
    assert!(
        reached.is_empty(),
        "the backend read these as /admin: {reached:?}"
    );
    // An escaped slash is a redirect to the unescaped path, as documented.
    let r = request(client(2), port, "GET", "/%2Fadmin?q=1", &[]).expect("request");
    let location = r
        .headers
        .iter()
        .find(|(k, _)| k == "location")
        .map(|(_, v)| v.as_str());
    assert_eq!(r.status, 307, "{:?}", r.headers);
    assert!(
        location.is_some_and(|l| l.ends_with("/admin?q=1")),
        "{location:?}"
    );
    // The allowed client is routed to the same place by every spelling.
    assert_eq!(followed(2, port, "//admin"), 200);
    assert_eq!(followed(2, port, "/%2Fadmin"), 200);
    assert!(
        bs[0]
            .paths()
            .iter()
            .all(|p| !p.contains("//") && !p.to_lowercase().contains("%2f"))
    );
}

/// An https load balancer's access list holds on its redirect port too.
/// Before, the redirect listener answered every client.
fn regression_the_redirect_listener_ignored_the_access_list(via: Via) {
    let dir = tempfile::tempdir().expect("tempdir");
    let bs = backends(&["a"]);
    let (mut doc, _, _) = common::https_lb(dir.path(), &bs[0], json!({}));
    let redirect = free_port();
    doc["redirect_http_port"] = json!(redirect);
    doc["access"] = json!({"deny": ["127.0.0.3/32"]});
    let _lab = Lab::start(via, &doc);
    wait_status(2, redirect, "/", 301);
    let denied = request(client(3), redirect, "GET", "/", &[]).expect("request");
    assert_eq!(denied.status, 403);
}

/// Whether a connection from `from` to `port` gets an answer to a request.
fn served(from: u8, port: u16) -> bool {
    let Ok(mut s) = connect(client(from), port) else {
        return false;
    };
    let _ = s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.starts_with("HTTP/1.1 200")
}

/// On tcp a refused client's connection is closed at once.
fn access_lists_on_tcp(via: Via) {
    let port = free_port();
    let bs = backends(&["a"]);
    let mut doc = lb_over("tacl", "tcp", port, "round_robin", &bs);
    doc["access"] = json!({"allow": ["127.0.0.0/29"], "deny": ["127.0.0.3"]});
    let _lab = Lab::start(via, &doc);
    poll_until("tcp served", Duration::from_secs(30), || {
        served(2, port)
            .then_some(())
            .ok_or_else(|| "not yet".to_owned())
    });
    assert!(served(4, port), "control client");
    assert!(!served(3, port), "denied");
    assert!(!served(9, port), "outside the allow list");
}

/// Connections beyond the rate are refused; the next second accepts again.
fn connection_rate_refuses_the_excess(via: Via) {
    let port = free_port();
    let bs = backends(&["a"]);
    let mut doc = lb_over("cps", "tcp", port, "round_robin", &bs);
    doc["rate_limit"] = json!({"connections_per_second": 3});
    let _lab = Lab::start(via, &doc);
    poll_until("tcp served", Duration::from_secs(30), || {
        served(2, port)
            .then_some(())
            .ok_or_else(|| "not yet".to_owned())
    });
    // Whatever the first served connection left, a burst of 10 gets at most 3.
    let burst: Vec<bool> = (0..10).map(|_| served(2, port)).collect();
    let ok = burst.iter().filter(|b| **b).count();
    assert!((1..=3).contains(&ok) && !burst[9], "{burst:?}");
    poll_until(
        "accepted again after the refill",
        Duration::from_secs(5),
        || {
            served(2, port)
                .then_some(())
                .ok_or_else(|| "refused".to_owned())
        },
    );
}

/// Changing a rate limit and an access list under load is a route update:
/// no failed request, no listener change.
fn protection_changes_are_hitless(via: Via) {
    let port = free_port();
    let bs = backends(&["a", "b"]);
    let doc = |rate: u32, deny: &str| {
        let mut d = lb_over("hot", "http", port, "round_robin", &bs);
        d["rate_limit"] = json!({"requests_per_second": rate, "burst": rate});
        d["access"] = json!({"deny": [deny]});
        d
    };
    let mut lab = Lab::start(via, &doc(100_000, "127.0.0.250"));
    wait_status(1, port, "/", 200);
    let stat = |lab: &Lab, s: &str| lab.envoy().stat(s).unwrap_or(0);
    let modified = stat(&lab, "listener_manager.listener_modified");
    let reloads = |lab: &Lab| stat(lab, "http.lb_hot.rds.lb_hot.config_reload");
    let first = reloads(&lab);
    let load = Load::start(port);
    for i in 0..10u64 {
        lab.render(&doc(100_000 + i as u32, &format!("127.0.0.{}", 200 + i)));
        poll_until("route update applied", Duration::from_secs(20), || {
            let n = reloads(&lab);
            (n > first + i).then_some(()).ok_or(format!("{n} reloads"))
        });
    }
    load.wait_for_more(200);
    let (ok, failed) = load.stop();
    eprintln!(
        "10 protection changes under load: {ok} requests, {} failed",
        failed.len()
    );
    assert!(failed.is_empty(), "{failed:?}");
    assert_eq!(stat(&lab, "listener_manager.listener_modified"), modified);
    assert_eq!(stat(&lab, "listener_manager.total_listeners_draining"), 0);
}

over_deliveries!(
    rate_limit_is_per_client_with_its_burst,
    an_evicted_client_starts_again_with_a_full_bucket,
    a_route_limit_applies_to_its_route_only,
    access_lists_on_http,
    access_lists_on_tcp,
    access_lists_match_ipv6_clients,
    regression_listening_on_the_ipv6_any_address_served_no_ipv4,
    regression_route_access_lists_were_bypassed_with_doubled_or_escaped_slashes,
    regression_the_redirect_listener_ignored_the_access_list,
    connection_rate_refuses_the_excess,
    protection_changes_are_hitless,
);

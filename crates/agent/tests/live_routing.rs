//! L7 routing on a real Envoy: hosts, paths, headers and methods pick a
//! pool; weights split traffic; redirects and fixed responses come from
//! Envoy itself; a canary change is a route update and nothing more.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{Lab, Load, Via, backends, lb_over};
use serde_json::{Value, json};
use vpsie_lb_testkit::backend::HttpBackend;
use vpsie_lb_testkit::http::{Response, request_to};
use vpsie_lb_testkit::{free_port, poll_until};

/// A pool document over running backends.
fn pool(id: &str, members: &[HttpBackend]) -> Value {
    let doc = lb_over("x", "http", 1, "round_robin", members);
    json!({"id": id, "backends": doc["backends"]})
}

/// One request to the load balancer on `port`.
fn ask(port: u16, host: &str, method: &str, path: &str, headers: &[(&str, &str)]) -> Response {
    request_to(None, port, host, method, path, headers)
        .unwrap_or_else(|e| panic!("{method} {host}{path}: {e}"))
}

/// What answered: the backend's name, or the status of a local reply.
fn who(r: &Response) -> String {
    if r.status == 200 {
        r.body.trim().to_owned()
    } else {
        format!("status {}", r.status)
    }
}

/// Polls until `path` on `host` reaches `want`: the config may still be on
/// its way to Envoy.
fn wait_routed(port: u16, host: &str, path: &str, want: &str) {
    poll_until(
        &format!("{host}{path} reaches {want}"),
        Duration::from_secs(30),
        || {
            let got = request_to(None, port, host, "GET", path, &[])
                .map(|r| who(&r))
                .map_err(|e| e.to_string())?;
            if got == want { Ok(()) } else { Err(got) }
        },
    );
}

/// A request (host, method, path, headers) and who must answer it.
type Case<'a> = (&'a str, &'a str, &'a str, &'a [(&'a str, &'a str)], &'a str);

/// Every route kind, each with a request that must match it and a control
/// request that must not (and so reaches the default pool).
fn hosts_paths_headers_and_methods_pick_pools(via: Via) {
    let names = [
        "default", "api", "org", "exact", "prefix", "regex", "hexact", "hprefix", "hregex",
        "hpresent", "hinvert", "method",
    ];
    let bs = backends(&names);
    let port = free_port();
    let mut doc = lb_over("site", "http", port, "round_robin", &bs[..1]);
    doc["pools"] = json!(
        bs[1..]
            .iter()
            .map(|b| pool(b.name(), std::slice::from_ref(b)))
            .collect::<Vec<_>>()
    );
    let to = |p: &str| json!([{"pool": p}]);
    doc["routes"] = json!([
        {"id": "api", "hosts": ["api.example.com"], "forward": to("api")},
        {"id": "org", "hosts": ["*.example.org"], "forward": to("org")},
        {"id": "exact", "path_exact": "/exact", "forward": to("exact")},
        {"id": "prefix", "path_prefix": "/pre/", "forward": to("prefix")},
        {"id": "regex", "path_regex": "^/re/[0-9]+$", "forward": to("regex")},
        {"id": "hexact", "path_prefix": "/h/", "headers": [{"name": "x-t", "exact": "1"}], "forward": to("hexact")},
        {"id": "hprefix", "path_prefix": "/h/", "headers": [{"name": "x-p", "prefix": "ab"}], "forward": to("hprefix")},
        {"id": "hregex", "path_prefix": "/h/", "headers": [{"name": "x-r", "regex": "v[0-9]"}], "forward": to("hregex")},
        {"id": "hpresent", "path_prefix": "/h/", "headers": [{"name": "x-present", "present": true}], "forward": to("hpresent")},
        {"id": "hinvert", "path_prefix": "/inv/", "headers": [{"name": "x-debug", "present": true, "invert": true}], "forward": to("hinvert")},
        {"id": "method", "path_prefix": "/m", "methods": ["POST", "PUT"], "forward": to("method")},
    ]);
    let lab = Lab::start(via, &doc);
    wait_routed(port, "other.test", "/", "default");
    let local = "127.0.0.1";
    let cases: &[Case] = &[
        ("api.example.com", "GET", "/", &[], "api"),
        ("API.Example.COM:8080", "GET", "/x", &[], "api"),
        ("api.example.com.evil", "GET", "/", &[], "default"),
        ("www.example.org", "GET", "/", &[], "org"),
        ("a.b.example.org", "GET", "/", &[], "org"),
        ("example.org", "GET", "/", &[], "default"),
        (local, "GET", "/exact", &[], "exact"),
        (local, "GET", "/exact/more", &[], "default"),
        (local, "GET", "/pre/x", &[], "prefix"),
        (local, "GET", "/prefix", &[], "default"),
        (local, "GET", "/re/123", &[], "regex"),
        (local, "GET", "/re/12a", &[], "default"),
        (local, "GET", "/h/", &[("x-t", "1")], "hexact"),
        (local, "GET", "/h/", &[("x-t", "12")], "default"),
        (local, "GET", "/h/", &[("x-p", "abc")], "hprefix"),
        (local, "GET", "/h/", &[("x-p", "xab")], "default"),
        (local, "GET", "/h/", &[("x-r", "v7")], "hregex"),
        (local, "GET", "/h/", &[("x-r", "v77")], "default"),
        (local, "GET", "/h/", &[("x-present", "")], "hpresent"),
        (local, "GET", "/h/", &[], "default"),
        (local, "GET", "/inv/", &[], "hinvert"),
        (local, "GET", "/inv/", &[("x-debug", "1")], "default"),
        (local, "POST", "/m", &[("content-length", "0")], "method"),
        (local, "PUT", "/m", &[("content-length", "0")], "method"),
        (local, "GET", "/m", &[], "default"),
    ];
    let mut wrong = Vec::new();
    for (host, method, path, headers, want) in cases {
        let got = who(&ask(port, host, method, path, headers));
        if got != *want {
            wrong.push(format!(
                "{method} {host}{path} {headers:?}: {got}, want {want}"
            ));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}\n{}", lab.envoy().log());
}

/// The shares of `n` requests to `port`, by backend.
fn shares(port: u16, n: usize) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for _ in 0..n {
        *counts
            .entry(who(&ask(port, "127.0.0.1", "GET", "/", &[])))
            .or_insert(0) += 1;
    }
    counts
}

fn canary(port: u16, stable: &[HttpBackend], next: &[HttpBackend], weights: (u32, u32)) -> Value {
    let mut doc = lb_over("shop", "http", port, "round_robin", stable);
    doc["pools"] = json!([pool("next", next)]);
    doc["routes"] = json!([{"id": "canary", "forward": [
        {"pool": "default", "weight": weights.0},
        {"pool": "next", "weight": weights.1},
    ]}]);
    doc
}

/// 90/10 lands within 3 points over 2,000 requests.
fn weights_split_traffic(via: Via) {
    let bs = backends(&["stable", "next"]);
    let port = free_port();
    let lab = Lab::start(via, &canary(port, &bs[..1], &bs[1..], (90, 10)));
    lab.wait_healthy("shop", 1);
    lab.wait_healthy("shop~next", 1);
    let counts = shares(port, 2000);
    let next = common::share(&counts, "next");
    eprintln!("90/10 over 2000 requests: {counts:?} ({next:.1} % to next)");
    assert_eq!(counts.values().sum::<usize>(), 2000);
    assert!((7.0..=13.0).contains(&next), "{counts:?}");
}

/// Changing canary weights 50 times under load fails no request, and
/// Envoy never rebuilds the listener or a cluster, nor drains.
fn canary_changes_are_route_updates_only(via: Via) {
    let bs = backends(&["stable", "next"]);
    let port = free_port();
    let mut lab = Lab::start(via, &canary(port, &bs[..1], &bs[1..], (90, 10)));
    lab.wait_healthy("shop~next", 1);
    let envoy_stat = |lab: &Lab, s: &str| lab.envoy().stat(s).unwrap_or(0);
    let before: Vec<u64> = [
        "listener_manager.listener_modified",
        "cluster_manager.cluster_modified",
    ]
    .iter()
    .map(|s| envoy_stat(&lab, s))
    .collect();
    let reloads = |lab: &Lab| envoy_stat(lab, "http.lb_shop.rds.lb_shop.config_reload");
    let first = reloads(&lab);
    let load = Load::start(port);
    for i in 0..50u64 {
        // Never 10 (the start) and never twice in a row.
        let next = 20 + (i as u32 * 17) % 60;
        let doc = canary(port, &bs[..1], &bs[1..], (100 - next, next));
        lab.render(&doc);
        // Each change must land before the next one: count the route updates.
        poll_until("route update applied", Duration::from_secs(20), || {
            let n = reloads(&lab);
            if n > first + i {
                Ok(())
            } else {
                Err(format!("{n} reloads"))
            }
        });
    }
    load.wait_for_more(200);
    let (ok, failed) = load.stop();
    eprintln!(
        "50 canary changes under load: {ok} requests, {} failed",
        failed.len()
    );
    assert!(failed.is_empty(), "{failed:?}");
    let after: Vec<u64> = [
        "listener_manager.listener_modified",
        "cluster_manager.cluster_modified",
    ]
    .iter()
    .map(|s| envoy_stat(&lab, s))
    .collect();
    assert_eq!(before, after, "listener_modified, cluster_modified");
    assert_eq!(
        envoy_stat(&lab, "listener_manager.total_listeners_draining"),
        0
    );
}

/// `redirect_http_port`, a route redirect, a fixed response, and 404 for
/// unrouted requests when the default pool is empty.
fn redirects_and_fixed_responses(via: Via) {
    let bs = backends(&["api"]);
    let port = free_port();
    let mut doc = json!({
        "id": "edge", "protocol": "http", "port": port, "backends": [],
        "pools": [pool("api", &bs)],
        "routes": [
            {"id": "api", "path_prefix": "/api/", "forward": [{"pool": "api"}]},
            {"id": "moved", "path_prefix": "/old/", "redirect": {"host": "new.example.com", "path": "/new", "status": 302}},
            {"id": "tls", "path_prefix": "/secure", "redirect": {"scheme": "https", "port": 8443}},
            {"id": "blocked", "path_prefix": "/admin", "respond": {"status": 403, "body": "forbidden\n"}},
        ],
    });
    let lab = Lab::start(via, &doc);
    wait_routed(port, "a.test", "/api/x", "api");
    let r = ask(port, "a.test", "GET", "/old/page?q=1&r=2", &[]);
    assert_eq!(r.status, 302);
    assert_eq!(
        r.header("location"),
        Some("http://new.example.com/new?q=1&r=2")
    );
    let r = ask(port, "a.test", "GET", "/secure/x?y=1", &[]);
    assert_eq!(
        (r.status, r.header("location")),
        (301, Some("https://a.test:8443/secure/x?y=1"))
    );
    let r = ask(port, "a.test", "GET", "/admin/users", &[]);
    assert_eq!((r.status, r.body.as_str()), (403, "forbidden\n"));
    let r = ask(port, "a.test", "GET", "/nowhere", &[]);
    assert_eq!(
        r.status, 404,
        "unrouted with an empty default pool: {}",
        r.body
    );
    drop(lab);

    // https with a plain-HTTP port that redirects.
    let dir = tempfile::tempdir().expect("tempdir");
    let pair = vpsie_lb_testkit::pki::self_signed("lb.test");
    vpsie_lb_testkit::pki::write_pair(dir.path(), "server", &pair);
    let (tls_port, http_port) = (free_port(), free_port());
    doc = lb_over("secure", "https", tls_port, "round_robin", &bs);
    doc["redirect_http_port"] = json!(http_port);
    doc["tls_config"] = json!({
        "certificate_path": dir.path().join("server.crt"),
        "private_key_path": dir.path().join("server.key"),
    });
    let lab = Lab::start(via, &doc);
    poll_until(
        "the redirect listener answers",
        Duration::from_secs(30),
        || {
            let r = request_to(None, http_port, "shop.test", "GET", "/cart?id=7", &[])
                .map_err(|e| e.to_string())?;
            match (r.status, r.header("location")) {
                (301, Some(l)) if l == format!("https://shop.test:{tls_port}/cart?id=7") => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    );
    drop(lab);
}

/// `head` sent as it is, on a connection of its own; who answered.
fn raw(port: u16, head: &str) -> String {
    use std::io::Write;
    let mut s = vpsie_lb_testkit::http::connect(None, port).expect("connect");
    s.write_all(head.as_bytes()).expect("send");
    vpsie_lb_testkit::http::read_response(&mut s)
        .map_or_else(|e| format!("no answer: {e}"), |r| who(&r))
}

/// Envoy answered every HTTP/1.0 request 426 before any filter ran: no
/// monitoring probe or old client could use an http load balancer. Now
/// 1.0 is routed like 1.1, by its Host, and without one it reaches the
/// default pool (`DEFAULT_HOST_FOR_HTTP_10` matches no route).
fn regression_http_1_0_requests_were_answered_426(via: Via) {
    let bs = backends(&["default"]);
    let api = backends(&["api"]);
    let port = free_port();
    let mut doc = lb_over("old", "http", port, "round_robin", &bs);
    doc["pools"] = json!([pool("api", &api)]);
    doc["routes"] = json!([{"id": "api", "hosts": ["api.test"], "forward": [{"pool": "api"}]}]);
    let _lab = Lab::start(via, &doc);
    wait_routed(port, "api.test", "/", "api");
    assert_eq!(raw(port, "GET / HTTP/1.0\r\nHost: api.test\r\n\r\n"), "api");
    assert_eq!(raw(port, "GET / HTTP/1.0\r\n\r\n"), "default");
    assert!(vpsie_lb_envoy::DEFAULT_HOST_FOR_HTTP_10.ends_with(".invalid"));
}

common::over_deliveries!(
    regression_http_1_0_requests_were_answered_426,
    hosts_paths_headers_and_methods_pick_pools,
    weights_split_traffic,
    canary_changes_are_route_updates_only,
    redirects_and_fixed_responses,
);

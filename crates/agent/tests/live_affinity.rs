//! Sticky sessions and slow start on a real Envoy.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{Lab, Via, backends, lb_over};
use serde_json::{Value, json};
use vpsie_lb_testkit::backend::HttpBackend;
use vpsie_lb_testkit::http::{Response, request};
use vpsie_lb_testkit::{free_port, poll_until};

/// A client with a cookie jar holding at most the sticky cookie.
struct Client {
    cookie: Option<String>,
}

impl Client {
    /// One request; keeps the cookie the load balancer sets. Returns who answered.
    fn get(&mut self, port: u16) -> String {
        let jar: Vec<(&str, &str)> = self.cookie.iter().map(|c| ("cookie", c.as_str())).collect();
        let r: Response = request(None, port, "GET", "/", &jar).expect("request");
        assert_eq!(r.status, 200, "{}", r.body);
        if let Some(set) = r.header("set-cookie") {
            // `vlb=VALUE; Max-Age=…; Path=/; HttpOnly`: the jar keeps `vlb=VALUE`.
            self.cookie = set.split(';').next().map(str::to_owned);
        }
        r.body.trim().to_owned()
    }
}

fn sticky_doc(port: u16, members: &[HttpBackend], disabled: &[&str]) -> Value {
    let mut doc = lb_over("shop", "http", port, "round_robin", members);
    for b in doc["backends"].as_array_mut().expect("backends") {
        if disabled.contains(&b["id"].as_str().unwrap_or_default()) {
            b["enabled"] = json!(false);
        }
    }
    doc["sticky_sessions"] = json!({"cookie_name": "vlb", "ttl": 3600});
    doc
}

/// 50 clients stay on their backend for 20 requests each; after a backend
/// is added at least 95 % still do; a client whose backend is disabled
/// moves and gets a new cookie.
fn sticky_sessions_keep_clients_on_their_backend(via: Via) {
    let bs = backends(&["a", "b", "c", "d"]);
    let port = free_port();
    let mut lab = Lab::start(via, &sticky_doc(port, &bs[..3], &[]));
    lab.wait_healthy("shop", 3);
    let mut clients: Vec<Client> = (0..50).map(|_| Client { cookie: None }).collect();
    let mut home: Vec<String> = Vec::new();
    for c in &mut clients {
        let first = c.get(port);
        assert!(c.cookie.is_some(), "the first answer sets the cookie");
        for i in 1..20 {
            let again = c.get(port);
            assert_eq!(again, first, "request {i} of a client moved");
        }
        home.push(first);
    }
    let spread: BTreeMap<&str, usize> = home.iter().fold(BTreeMap::new(), |mut m, h| {
        *m.entry(h.as_str()).or_insert(0) += 1;
        m
    });
    eprintln!("50 sticky clients over a, b, c: {spread:?}");
    assert!(spread.len() > 1, "every client on one backend: {spread:?}");

    lab.render(&sticky_doc(port, &bs, &[]));
    lab.wait_healthy("shop", 4);
    let mut stayed = 0;
    for (c, h) in clients.iter_mut().zip(&home) {
        stayed += usize::from(c.get(port) == *h);
    }
    eprintln!("after adding backend d: {stayed} of 50 clients stayed");
    assert!(stayed * 100 >= 95 * 50, "{stayed} of 50 stayed");

    // Disable the first client's backend: it moves, with a new cookie.
    let (client, was) = (&mut clients[0], home[0].clone());
    let old_cookie = client.cookie.clone();
    lab.render(&sticky_doc(port, &bs, &[was.as_str()]));
    poll_until("the client moved", Duration::from_secs(30), || {
        let now = client.get(port);
        if now != was { Ok(()) } else { Err(now) }
    });
    assert_ne!(
        client.cookie, old_cookie,
        "a moved client gets a new cookie"
    );
    let moved = client.get(port);
    assert_eq!(client.get(port), moved, "and stays where it moved");
}

/// Shares of `n` requests to `port`, by backend, in percent.
fn shares(port: u16, n: usize) -> BTreeMap<String, f64> {
    let counts = vpsie_lb_testkit::http::count_by_backend(port, n);
    counts
        .keys()
        .map(|k| (k.clone(), common::share(&counts, k)))
        .collect()
}

/// A backend added to a pool with `slow_start` gets clearly less than its
/// share at first, then its full share.
///
/// Envoy 1.40 starts the ramp at the backend's first passed health check
/// (without one it applies none, so validation requires a check), and in
/// this measurement the ramp is over after about a second, whatever the
/// window or the check interval: see docs/load-balancer-format.md.
fn slow_start_ramps_a_new_backend_up(via: Via) {
    let bs = backends(&["a", "b", "c"]);
    let port = free_port();
    let doc = |members: &[HttpBackend]| {
        let mut d = lb_over("ramp", "http", port, "round_robin", members);
        d["slow_start"] = json!(30);
        d["health_check"] = json!({"type": "http", "path": "/healthz", "interval": 2});
        d
    };
    let mut lab = Lab::start(via, &doc(&bs[..2]));
    lab.wait_healthy("ramp", 2);
    lab.render(&doc(&bs));
    lab.wait_healthy("ramp", 3);
    let early = shares(port, 60);
    let early_c = early.get("c").copied().unwrap_or(0.0);
    eprintln!("slow start, first 60 requests once c is healthy: {early:?}");
    let mut late = BTreeMap::new();
    poll_until("c reaches its full share", Duration::from_secs(120), || {
        late = shares(port, 300);
        let c = late.get("c").copied().unwrap_or(0.0);
        if c >= 30.0 {
            Ok(())
        } else {
            Err(format!("{late:?}"))
        }
    });
    eprintln!("slow start, once ramped: {late:?} (full share 33.3 %)");
    assert!(early_c < 25.0, "c got {early_c:.1} % at once: {early:?}");
}

common::over_deliveries!(
    sticky_sessions_keep_clients_on_their_backend,
    slow_start_ramps_a_new_backend_up,
);

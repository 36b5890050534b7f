//! The WAF on a real Envoy, with Debian's libmodsecurity and the OWASP
//! Core Rule Set: the `vpsie-lb-waf` service consulted over ext_authz, and
//! the same engine inside Envoy (`vpsie-lb-waf-filter`). What both must do
//! is tested on both; what only the service has (its pool, its death) on it.

mod common;

use std::io::Write;
use std::time::Duration;

use common::waf::{
    Engine, Waf, over_deliveries_and_engines, render_on, send, serve_on, serve_with, start,
    start_on, with_waf,
};
use common::{Lab, Via, backends, over_deliveries};
use serde_json::{Value, json};
use vpsie_lb_testkit::backend::HttpBackend;
use vpsie_lb_testkit::http::{connect, read_response};
use vpsie_lb_testkit::{free_port, poll_until};

type Case = (
    &'static str,
    &'static str,
    &'static str,
    Vec<(&'static str, &'static str)>,
    Vec<u8>,
);

fn attacks() -> Vec<Case> {
    vec![
        (
            "sql injection",
            "GET",
            "/item?id=1'%20OR%20'1'='1",
            vec![],
            vec![],
        ),
        // In the path itself Envoy removes `..` before anything sees it
        // (normalize_path), so a traversal reaches the WAF as an argument.
        (
            "path traversal",
            "GET",
            "/download?file=../../../../etc/passwd",
            vec![],
            vec![],
        ),
        (
            "scanner",
            "GET",
            "/",
            vec![("User-Agent", "sqlmap/1.7.2#stable (https://sqlmap.org)")],
            vec![],
        ),
        // Bodies the rules never read before: JSON and XML.
        (
            "sql injection in a json body",
            "POST",
            "/api/login",
            vec![("Content-Type", "application/json")],
            br#"{"user": "admin' OR '1'='1' --", "password": "x"}"#.to_vec(),
        ),
        (
            "xss in a json body",
            "POST",
            "/api/comment",
            vec![("Content-Type", "application/json")],
            br#"{"text": "<script>alert(document.cookie)</script>"}"#.to_vec(),
        ),
        (
            "sql injection in an xml body",
            "POST",
            "/api/login",
            vec![("Content-Type", "application/xml")],
            b"<login><user>admin' OR '1'='1' --</user></login>".to_vec(),
        ),
        (
            "xss in an xml body",
            "POST",
            "/api/comment",
            vec![("Content-Type", "text/xml")],
            b"<c><t>&lt;script&gt;alert(document.cookie)&lt;/script&gt;</t></c>".to_vec(),
        ),
    ]
}

fn ordinary() -> Vec<Case> {
    let mut upload = b"--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"photo.jpg\"\r\nContent-Type: image/jpeg\r\n\r\n".to_vec();
    upload.extend((0..1024 * 1024).map(|i| (i % 251) as u8));
    upload.extend_from_slice(b"\r\n--b--\r\n");
    vec![
        ("home page", "GET", "/", vec![], vec![]),
        (
            "product page",
            "GET",
            "/products/blue-shirt?size=m&color=blue",
            vec![],
            vec![],
        ),
        (
            "search",
            "GET",
            "/search?q=summer+dresses&page=2",
            vec![],
            vec![],
        ),
        (
            "json post",
            "POST",
            "/api/cart",
            vec![("Content-Type", "application/json")],
            br#"{"item": 42, "quantity": 2, "note": "gift wrap, please"}"#.to_vec(),
        ),
        (
            "form post",
            "POST",
            "/login",
            vec![("Content-Type", "application/x-www-form-urlencoded")],
            b"user=alice%40example.com&password=correct-horse-battery".to_vec(),
        ),
        (
            "file upload of 1 MiB",
            "POST",
            "/upload",
            vec![("Content-Type", "multipart/form-data; boundary=b")],
            upload,
        ),
    ]
}

fn status(port: u16, case: &Case) -> u16 {
    let (_, method, path, headers, body) = case;
    send(port, method, path, headers, body).status
}

/// The access log's lines that name a WAF verdict: (status, action, rules).
fn verdicts_logged(lab: &Lab) -> Vec<(u64, String, String)> {
    lab.access_entries()
        .into_iter()
        .filter_map(|v| {
            let text = |k: &str| v[k].as_str().unwrap_or_default().to_owned();
            let action = text("waf_action");
            (!action.is_empty())
                .then(|| (v["status"].as_u64().unwrap_or(0), action, text("waf_rules")))
        })
        .collect()
}

/// Waits until the access log names a verdict: `status`, `action`, and a
/// rule list holding `rule`.
fn wait_logged(lab: &Lab, status: u64, action: &str, rule: &str) {
    poll_until(
        "the access log names the waf's verdict",
        Duration::from_secs(10),
        || {
            let all = verdicts_logged(lab);
            all.iter()
                .any(|(s, a, r)| *s == status && a == action && r.split(',').any(|x| x == rule))
                .then_some(())
                .ok_or_else(|| format!("{all:?}"))
        },
    );
}

/// Block refuses the attacks and names their rules; ordinary traffic
/// passes; detect lets the attacks through and logs them, and switching
/// to it touches no listener; an exclusion disables exactly its rule.
fn the_waf_blocks_detects_and_excludes(via: Via, engine: Engine) {
    let port = free_port();
    let bs = backends(&["a"]);
    let (mut lab, waf) = start_on(via, engine, &with_waf(port, &bs, json!({"mode": "block"})));
    poll_until(
        "served through the waf",
        Duration::from_secs(30),
        || match send(port, "GET", "/", &[], b"").status {
            200 => Ok(()),
            s => Err(format!("status {s}: {}", waf.log())),
        },
    );
    if let Some(service) = &waf.service {
        // The service answered for this load balancer (not a fail-open pass).
        poll_until(
            "the waf inspected a request",
            Duration::from_secs(10),
            || {
                service
                    .metrics()
                    .contains("vpsie_lb_waf_requests_total{lb_id=\"shop\",verdict=\"pass\"}")
                    .then_some(())
                    .ok_or_else(|| service.log())
            },
        );
        assert!(
            !service.log().contains("no waf policy"),
            "the policy is there before the first request: {}",
            service.log()
        );
    }
    for case in attacks() {
        assert_eq!(
            status(port, &case),
            403,
            "{} is blocked: {}",
            case.0,
            waf.log()
        );
    }
    let all = ordinary();
    let refused: Vec<&str> = all
        .iter()
        .filter(|c| status(port, c) != 200)
        .map(|c| c.0)
        .collect();
    eprintln!("false positives: {} of {}", refused.len(), all.len());
    assert!(refused.is_empty(), "{refused:?}");
    // Logged by the service, or in Envoy's log by the filter.
    let log = waf.log();
    assert!(
        log.contains("waf refused the request") && log.contains("949110"),
        "{log}"
    );
    // 949110: the anomaly score passed the threshold.
    wait_logged(&lab, 403, "block", "949110");

    let modified = lab
        .envoy()
        .stat("listener_manager.listener_modified")
        .unwrap_or(0);
    render_on(
        &mut lab,
        engine,
        &with_waf(port, &bs, json!({"mode": "detect"})),
    );
    poll_until(
        "detect lets the injection through",
        Duration::from_secs(20),
        || match status(port, &attacks()[0]) {
            200 => Ok(()),
            s => Err(format!("status {s}")),
        },
    );
    for case in attacks() {
        assert_eq!(status(port, &case), 200, "{} passes in detect", case.0);
    }
    // 942100: libinjection's SQL injection.
    wait_logged(&lab, 200, "detect", "942100");
    assert!(
        waf.log().contains("waf rules matched; passed"),
        "{}",
        waf.log()
    );
    if let Some(service) = &waf.service {
        // Counted, per load balancer and rule.
        let counted = service.metrics();
        assert!(
            counted.contains(
                "vpsie_lb_waf_rule_matches_total{lb_id=\"shop\",rule=\"942100\",action=\"detect\"}"
            ) && counted.contains("vpsie_lb_waf_requests_total{lb_id=\"shop\",verdict=\"block\"}"),
            "{counted}"
        );
    }
    assert_eq!(
        lab.envoy()
            .stat("listener_manager.listener_modified")
            .unwrap_or(0),
        modified,
        "a mode change is the service's or the route's, never the listener's"
    );

    // 913100 is the Core Rule Set's scanner User-Agent rule.
    render_on(
        &mut lab,
        engine,
        &with_waf(port, &bs, json!({"mode": "block", "exclusions": [913100]})),
    );
    // Block again (one write with the exclusion): once the injection is
    // refused, the exclusion is in force too.
    poll_until("block again", Duration::from_secs(20), || {
        match status(port, &attacks()[0]) {
            403 => Ok(()),
            s => Err(format!("status {s}")),
        }
    });
    assert_eq!(
        status(port, &attacks()[2]),
        200,
        "the scanner passes: its rule is excluded"
    );
}

/// Two blocking load balancers on one backend (returned, to keep it
/// running): `open` fails open on `open_port`, `closed` fails closed on
/// `closed_port`.
fn open_and_closed(open_port: u16, closed_port: u16) -> (Value, Vec<HttpBackend>) {
    let bs = backends(&["a"]);
    let mut one = with_waf(open_port, &bs, json!({"mode": "block", "fail_open": true}));
    one["id"] = json!("open");
    let mut two = with_waf(
        closed_port,
        &bs,
        json!({"mode": "block", "fail_open": false}),
    );
    two["id"] = json!("closed");
    (json!([one, two]), bs)
}

/// With the service gone, `fail_open` decides: open passes, closed answers
/// 403; both recover when the service is back.
fn a_dead_waf_fails_open_or_closed_as_asked(via: Via) {
    let (open, closed) = (free_port(), free_port());
    let (pair, _backends) = open_and_closed(open, closed);
    let (lab, mut waf) = start(via, &pair);
    let wait = |port: u16, want: u16, what: &str| {
        poll_until(what, Duration::from_secs(30), || {
            match send(port, "GET", "/", &[], b"").status {
                s if s == want => Ok(()),
                s => Err(format!("status {s}")),
            }
        });
    };
    wait(open, 200, "open serves");
    wait(closed, 200, "closed serves");
    waf.kill();
    wait(open, 200, "fail_open passes with the waf down");
    wait(closed, 403, "fail_open: false refuses with the waf down");
    waf.restart();
    wait(closed, 200, "closed serves again once the waf is back");
    assert_eq!(status(closed, &attacks()[0]), 403, "and inspects again");

    // regression: a load balancer the service had no policy for was passed
    // uninspected even with `fail_open: false`.
    let policies = lab.out_dir().join("waf.json");
    std::fs::write(&policies, "{\"load_balancers\": {}}\n").expect("empty the policies");
    wait(closed, 403, "no policy: fail_open false refuses");
    wait(open, 200, "no policy: fail_open true passes");
    assert!(waf.log().contains("no waf policy"), "{}", waf.log());
}

/// `head` and `body` sent as they are to `port`; the answer's status.
fn raw(port: u16, head: &str, body: &[u8]) -> u16 {
    let mut s = connect(None, port).expect("connect");
    s.write_all(head.as_bytes()).expect("send head");
    s.write_all(body).expect("send body");
    read_response(&mut s).map_or(0, |r| r.status)
}

/// A form body, chunked: `<size>\r\n<bytes>\r\n...0\r\n\r\n`.
fn chunked(form: &str) -> Vec<u8> {
    let (a, b) = form.split_at(form.len() / 2);
    format!("{:x}\r\n{a}\r\n{:x}\r\n{b}\r\n0\r\n\r\n", a.len(), b.len()).into_bytes()
}

/// The requests the Core Rule Set's regression suite and browsers send
/// that the WAF used to mishandle: HTTP/1.0 (426 from Envoy), HTTP/3 (all
/// refused by the version rule 920430), chunked bodies (scored by 920180
/// for lacking a length). Each is served, inspected (an attack in it is
/// refused), and a benign one matches no rule at all.
fn regression_http_1_0_http_3_and_chunked_bodies_were_refused_or_scored(via: Via, engine: Engine) {
    let backend = HttpBackend::start("a");
    let lab = Lab::new(via);
    let plain = free_port();
    let shop = with_waf(
        plain,
        std::slice::from_ref(&backend),
        json!({"mode": "block"}),
    );
    let (mut secure, tls, _) = common::https_lb(lab.dir.path(), &backend, json!({}));
    secure["id"] = json!("secure");
    secure["http3"] = json!(true);
    secure["waf"] = json!({"mode": "block"});
    let (lab, waf) = serve_on(lab, engine, &json!([shop, secure]));
    let ua = "User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0\r\nAccept: text/html\r\n";
    poll_until(
        "http/1.0 served through the waf",
        Duration::from_secs(30),
        || match raw(
            plain,
            &format!("GET / HTTP/1.0\r\nHost: shop.example.com\r\n{ua}\r\n"),
            b"",
        ) {
            200 => Ok(()),
            s => Err(format!("status {s}: {}", waf.log())),
        },
    );
    let form_post = |form: &str| {
        let head = format!(
            "POST /login HTTP/1.1\r\nHost: shop.example.com\r\n{ua}Content-Type: application/x-www-form-urlencoded\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        );
        raw(plain, &head, &chunked(form))
    };
    assert_eq!(
        form_post("user=alice%40example.com&password=correct-horse"),
        200
    );
    assert_eq!(
        form_post("user=admin%27%20OR%20%271%27%3D%271%27%20--&password=x"),
        403,
        "a chunked body is inspected: {}",
        waf.log()
    );
    assert_eq!(
        raw(
            plain,
            &format!(
                "GET /item?id=1'%20OR%20'1'='1 HTTP/1.0\r\nHost: shop.example.com\r\n{ua}\r\n"
            ),
            b""
        ),
        403,
        "http/1.0 is inspected"
    );
    poll_until(
        "served over http/3",
        Duration::from_secs(30),
        || match vpsie_lb_testkit::h3::get(tls, "/", "lb.test") {
            Ok(r) if r.status == 200 => Ok(()),
            other => Err(format!("{other:?}: {}", waf.log())),
        },
    );
    let attack = vpsie_lb_testkit::h3::get(tls, "/item?id=1'%20OR%20'1'='1", "lb.test")
        .expect("an attack over http/3");
    assert_eq!(attack.status, 403, "http/3 is inspected");
    // The benign requests matched nothing: every verdict logged is the
    // attacks' (403), and none names 920180 (no length) or 920430 (version).
    poll_until("the attacks are logged", Duration::from_secs(10), || {
        let logged = verdicts_logged(&lab);
        (logged.len() >= 3)
            .then_some(())
            .ok_or(format!("{logged:?}"))
    });
    let logged = verdicts_logged(&lab);
    assert!(
        logged.iter().all(|(status, action, rules)| *status == 403
            && action == "block"
            && !rules.split(',').any(|r| r == "920180" || r == "920430")),
        "a benign request matched a rule: {logged:?}"
    );
    assert_eq!(logged.len(), 3, "the three attacks: {logged:?}");
}

/// The count of `verdict` for `lb` in the service's metrics.
fn verdicts(waf: &Waf, lb: &str, verdict: &str) -> u64 {
    let series = format!("vpsie_lb_waf_requests_total{{lb_id=\"{lb}\",verdict=\"{verdict}\"}}");
    waf.metrics()
        .lines()
        .find_map(|l| l.strip_prefix(&series)?.trim().parse().ok())
        .unwrap_or(0)
}

/// Inspections ran on tokio's blocking pool, up to 512 at once, with no
/// bound: a flood queued without end. Now one worker and no queue: what
/// does not get the worker is turned away at once, answered as the load
/// balancer's `fail_open` says, and counted as `busy`.
fn regression_a_flood_queued_inspections_without_bound(via: Via) {
    let (open, closed) = (free_port(), free_port());
    let (pair, _backends) = open_and_closed(open, closed);
    let flags = ["--workers", "1", "--queue", "0"];
    let (_lab, waf) = serve_with(Lab::new(via), &pair, &flags);
    for port in [open, closed] {
        poll_until(
            "served through the waf",
            Duration::from_secs(30),
            || match send(port, "GET", "/", &[], b"").status {
                200 => Ok(()),
                s => Err(format!("status {s}")),
            },
        );
    }
    // 16 clients at once, 8 requests each, on each load balancer.
    let flood = |port: u16| {
        let start = std::sync::Arc::new(std::sync::Barrier::new(16));
        let clients: Vec<_> = (0..16)
            .map(|_| {
                let start = start.clone();
                std::thread::spawn(move || {
                    start.wait();
                    (0..8)
                        .map(|_| send(port, "GET", "/", &[], b"").status)
                        .collect::<Vec<u16>>()
                })
            })
            .collect();
        let mut answers = std::collections::BTreeMap::<u16, usize>::new();
        for c in clients {
            for status in c.join().expect("client") {
                *answers.entry(status).or_default() += 1;
            }
        }
        answers
    };
    let opened = flood(open);
    let shut = flood(closed);
    assert_eq!(
        opened.keys().copied().collect::<Vec<_>>(),
        [200],
        "fail_open passes: {opened:?}"
    );
    assert!(
        shut.get(&403).is_some_and(|n| *n > 0),
        "fail_open false refuses: {shut:?}"
    );
    assert!(
        shut.get(&200).is_some_and(|n| *n > 0),
        "the worker still inspects: {shut:?}"
    );
    assert_eq!(shut.values().sum::<usize>(), 128, "{shut:?}");
    for lb in ["open", "closed"] {
        assert!(verdicts(&waf, lb, "busy") > 0, "{lb}: {}", waf.metrics());
    }
}

over_deliveries!(
    regression_a_flood_queued_inspections_without_bound,
    a_dead_waf_fails_open_or_closed_as_asked,
);

over_deliveries_and_engines!(
    regression_http_1_0_http_3_and_chunked_bodies_were_refused_or_scored,
    the_waf_blocks_detects_and_excludes,
);

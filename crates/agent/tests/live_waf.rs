//! The WAF on a real Envoy: the `vpsie-lb-waf` service with Debian's
//! libmodsecurity and the OWASP Core Rule Set, consulted over ext_authz.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{Lab, Via, backends, lb_over, over_deliveries};
use serde_json::{Value, json};
use vpsie_lb_testkit::backend::HttpBackend;
use vpsie_lb_testkit::http::{Response, connect, read_response};
use vpsie_lb_testkit::{free_port, poll_until};

/// The service binary, built beside the agent's (`cargo test --workspace`
/// builds it; a narrower run builds it here).
fn waf_bin() -> PathBuf {
    static BUILT: std::sync::Once = std::sync::Once::new();
    let bin = Path::new(common::agent_bin()).with_file_name("vpsie-lb-waf");
    BUILT.call_once(|| {
        if !bin.exists() {
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let ok = Command::new(cargo)
                .args(["build", "--quiet", "-p", "vpsie-lb-waf"])
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "building vpsie-lb-waf failed");
        }
    });
    bin
}

/// A running WAF service.
struct Waf {
    child: Child,
    log: PathBuf,
    socket: PathBuf,
    policies: PathBuf,
}

impl Waf {
    fn start(socket: &Path, policies: &Path, log: &Path) -> Waf {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("waf log");
        let child = Command::new(waf_bin())
            .arg("--socket")
            .arg(socket)
            .arg("--config")
            .arg(policies)
            .arg("--metrics-socket")
            .arg(socket.with_file_name("waf-metrics.sock"))
            .stdout(out.try_clone().expect("dup"))
            .stderr(out)
            .stdin(Stdio::null())
            .spawn()
            .expect("start vpsie-lb-waf");
        let waf = Waf {
            child,
            log: log.to_owned(),
            socket: socket.to_owned(),
            policies: policies.to_owned(),
        };
        // Until it listens, a fail-open load balancer would pass everything
        // uninspected and prove nothing.
        poll_until("the waf service listens", Duration::from_secs(30), || {
            if waf.log().contains("serving ext_authz") {
                Ok(())
            } else {
                Err(waf.log())
            }
        });
        waf
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The service's counters (`GET /metrics` on its metrics socket).
    fn metrics(&self) -> String {
        use std::io::Read;
        let Ok(mut s) =
            std::os::unix::net::UnixStream::connect(self.socket.with_file_name("waf-metrics.sock"))
        else {
            return String::new();
        };
        let _ = s.write_all(b"GET /metrics HTTP/1.1\r\nHost: waf\r\n\r\n");
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn restart(&mut self) {
        self.kill();
        *self = Waf::start(
            &self.socket.clone(),
            &self.policies.clone(),
            &self.log.clone(),
        );
    }
}

impl Drop for Waf {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A lab whose Envoy consults a WAF service started beside it.
fn start(via: Via, doc: &Value) -> (Lab, Waf) {
    serve(Lab::new(via), doc)
}

/// `lab` serving `doc`, its Envoy consulting a WAF service started beside it.
fn serve(mut lab: Lab, doc: &Value) -> (Lab, Waf) {
    let socket = lab.dir.path().join("waf.sock");
    std::fs::create_dir_all(lab.out_dir()).expect("out dir");
    let waf = Waf::start(
        &socket,
        &lab.out_dir().join("waf.json"),
        &lab.dir.path().join("waf.log"),
    );
    let f = flags(&lab);
    let f: Vec<&str> = f.iter().map(String::as_str).collect();
    lab.render_with(doc, &f);
    lab.start_envoy();
    (lab, waf)
}

/// The render flags of every render in a lab: the same each time, or the
/// listeners would change with them.
fn flags(lab: &Lab) -> [String; 4] {
    let socket = lab.dir.path().join("waf.sock");
    [
        "--waf-socket".into(),
        socket.to_str().expect("utf-8").into(),
        "--access-log-sample-percent".into(),
        "100".into(),
    ]
}

fn render(lab: &mut Lab, doc: &Value) {
    let flags = flags(lab);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    lab.render_with(doc, &flags);
}

/// One request with `headers` and `body`.
fn send(port: u16, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Response {
    let mut s = connect(None, port).expect("connect");
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: shop.example.com\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    let has_ua = headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("user-agent"));
    if !has_ua {
        head.push_str("User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0\r\nAccept: text/html\r\n");
    }
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).expect("send head");
    s.write_all(body).expect("send body");
    read_response(&mut s).expect("answer")
}

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

fn with_waf(port: u16, bs: &[HttpBackend], waf: Value) -> Value {
    let mut doc = lb_over("shop", "http", port, "round_robin", bs);
    doc["waf"] = waf;
    doc
}

/// Block refuses the attacks and names their rules; ordinary traffic
/// passes; detect lets the attacks through and logs them, and switching
/// to it touches no listener; an exclusion disables exactly its rule.
fn the_waf_blocks_detects_and_excludes(via: Via) {
    let port = free_port();
    let bs = backends(&["a"]);
    let (mut lab, waf) = start(via, &with_waf(port, &bs, json!({"mode": "block"})));
    poll_until(
        "served through the waf",
        Duration::from_secs(30),
        || match send(port, "GET", "/", &[], b"").status {
            200 => Ok(()),
            s => Err(format!("status {s}: {}", waf.log())),
        },
    );
    // The service answered for this load balancer (not a fail-open pass).
    poll_until(
        "the waf inspected a request",
        Duration::from_secs(10),
        || {
            waf.metrics()
                .contains("vpsie_lb_waf_requests_total{lb_id=\"shop\",verdict=\"pass\"}")
                .then_some(())
                .ok_or_else(|| waf.log())
        },
    );
    assert!(
        !waf.log().contains("no waf policy"),
        "the policy is there before the first request: {}",
        waf.log()
    );
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
    let log = waf.log();
    assert!(
        log.contains("waf refused the request") && log.contains("949110"),
        "{log}"
    );
    poll_until(
        "the access log names the waf's verdict",
        Duration::from_secs(10),
        || {
            let access = std::fs::read_to_string(lab.access_log()).unwrap_or_default();
            access
                .lines()
                .any(|l| l.contains("\"status\":403") && l.contains("\"waf_action\":\"block\""))
                .then_some(())
                .ok_or(access)
        },
    );

    let modified = lab
        .envoy()
        .stat("listener_manager.listener_modified")
        .unwrap_or(0);
    render(&mut lab, &with_waf(port, &bs, json!({"mode": "detect"})));
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
    assert!(
        waf.log().contains("waf rules matched; passed"),
        "{}",
        waf.log()
    );
    // Counted, per load balancer and rule: the only count of a detect match.
    let counted = waf.metrics();
    assert!(
        counted.contains(
            "vpsie_lb_waf_rule_matches_total{lb_id=\"shop\",rule=\"942100\",action=\"detect\"}"
        ) && counted.contains("vpsie_lb_waf_requests_total{lb_id=\"shop\",verdict=\"block\"}"),
        "{counted}"
    );
    assert_eq!(
        lab.envoy()
            .stat("listener_manager.listener_modified")
            .unwrap_or(0),
        modified,
        "a mode change is the service's, not the listener's"
    );

    // 913100 is the Core Rule Set's scanner User-Agent rule.
    render(
        &mut lab,
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

/// With the service gone, `fail_open` decides: open passes, closed answers
/// 403; both recover when the service is back.
fn a_dead_waf_fails_open_or_closed_as_asked(via: Via) {
    let (open, closed) = (free_port(), free_port());
    let bs = backends(&["a"]);
    let mut one = with_waf(open, &bs, json!({"mode": "block", "fail_open": true}));
    one["id"] = json!("open");
    let mut two = with_waf(closed, &bs, json!({"mode": "block", "fail_open": false}));
    two["id"] = json!("closed");
    let (lab, mut waf) = start(via, &json!([one, two]));
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
fn regression_http_1_0_http_3_and_chunked_bodies_were_refused_or_scored(via: Via) {
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
    let (_lab, waf) = serve(lab, &json!([shop, secure]));
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
    // The benign requests matched nothing: no detection, no 920180/920430.
    let m = waf.metrics();
    for lb in ["shop", "secure"] {
        let detected = format!("vpsie_lb_waf_requests_total{{lb_id=\"{lb}\",verdict=\"detect\"}}");
        assert!(
            !m.contains(&detected),
            "{lb}: a benign request matched a rule:\n{m}"
        );
    }
    assert!(
        !m.contains("rule=\"920180\"") && !m.contains("rule=\"920430\""),
        "{m}"
    );
}

over_deliveries!(
    regression_http_1_0_http_3_and_chunked_bodies_were_refused_or_scored,
    the_waf_blocks_detects_and_excludes,
    a_dead_waf_fails_open_or_closed_as_asked,
);

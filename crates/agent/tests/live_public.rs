//! Live: `source: vpsie_public` against the emulator's public API, a
//! managed Envoy and real backends. The load balancer is made the way the
//! Terraform provider and the cloud controller make one: an asynchronous
//! create with ports as strings, then rule, domain and backend calls.

mod common;

use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use common::{RunningAgent, Via, agent_config_via, over_deliveries, serves};
use serde_json::{Value, json};
use vpsie_lb_model::public::rule_document_id;
use vpsie_lb_testkit::backend::HttpBackend;
use vpsie_lb_testkit::http::{self, request_to};
use vpsie_lb_testkit::tls::{ClientOptions, https_get};
use vpsie_lb_testkit::{free_port, pki, poll_until};

const KEY: &str = "public-key-5be1d0";

/// The emulator, spoken to as VPSie's clients speak to the real API.
struct PublicApi {
    port: u16,
}

impl PublicApi {
    fn start() -> PublicApi {
        let sim = vpsie_api_sim::Sim::new(KEY, None);
        let api = PublicApi {
            port: sim.spawn(0).expect("start emulator").port(),
        };
        api.control("PUT", "/public_settings", &json!({"create_delay_ms": 300}));
        api
    }

    /// One call with `Vpsie-Auth`; the envelope's `data`, or a panic.
    fn call(&self, method: &str, path: &str, body: &Value) -> Value {
        let body = body.to_string();
        let mut s = http::connect(None, self.port).expect("connect");
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: api.vpsie.com\r\nVpsie-Auth: {KEY}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        std::io::Write::write_all(&mut s, req.as_bytes()).expect("send");
        let r = http::read_response(&mut s).expect("answer");
        let v: Value = serde_json::from_str(&r.body).expect("json");
        assert!(
            r.status == 200 && v["error"] == false,
            "{method} {path}: {} {v}",
            r.status
        );
        v["data"].clone()
    }

    fn control(&self, method: &str, path: &str, body: &Value) {
        let r = http::send(
            self.port,
            method,
            &format!("/_sim{path}"),
            &body.to_string(),
        )
        .expect("emulator control");
        assert!(r.status < 300, "{method} {path}: {} {}", r.status, r.body);
    }

    fn details(&self, identifier: &str) -> Value {
        self.call("GET", &format!("/api/v1/lb/{identifier}"), &Value::Null)
    }

    /// Creates `body` and waits, as Terraform does, until the list shows it.
    fn create(&self, body: &Value) -> String {
        self.call("POST", "/api/v1/lb/create", body);
        let name = body["lbName"].clone();
        poll_until(
            "the load balancer turns active",
            Duration::from_secs(10),
            || {
                let list = self.call(
                    "GET",
                    "/api/v1/lb/all?sortField=created_on&sortDirection=DESC",
                    &Value::Null,
                );
                list.as_array()
                    .into_iter()
                    .flatten()
                    .find(|lb| lb["lbName"] == name)
                    .and_then(|lb| lb["identifier"].as_str().map(str::to_owned))
                    .ok_or_else(|| {
                        format!(
                            "pending: {}",
                            self.call("GET", "/api/v2/lbs/pending", &Value::Null)
                        )
                    })
            },
        )
    }

    /// The rule listening on `port`, and the domain serving `host` in it.
    fn find(&self, identifier: &str, port: u16, host: Option<&str>) -> (String, Option<String>) {
        let d = self.details(identifier);
        let rule = d["rules"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|r| r["frontPort"] == port)
            .unwrap_or_else(|| panic!("no rule on {port}: {d}"));
        let domain = host.map(|h| {
            rule["domains"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|x| x["domainName"] == h)
                .and_then(|x| x["domainId"].as_str())
                .unwrap_or_else(|| panic!("no domain {h}: {rule}"))
                .to_owned()
        });
        (rule["ruleId"].as_str().expect("ruleId").to_owned(), domain)
    }
}

fn write_key(dir: &Path, key: &str) -> std::path::PathBuf {
    let path = dir.join("api-key");
    std::fs::write(&path, format!("{key}\n")).expect("write key");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    path
}

fn config(
    via: Via,
    dir: &Path,
    api: &PublicApi,
    identifier: &str,
    key: &str,
    redirect: u16,
) -> std::path::PathBuf {
    let source = format!(
        "source: vpsie_public\nvpsie:\n  api_url: http://127.0.0.1:{}\n  api_key_file: {}\n  loadbalancer_ids: [{identifier}]\n  poll_interval: 1s\n  certificate_dir: {}/certs\n  redirect_port: {redirect}\n  agent_api_url: http://127.0.0.1:{}/v1\n",
        api.port,
        write_key(dir, key).display(),
        dir.display(),
        api.port
    );
    agent_config_via(dir, free_port(), &source, via)
}

/// A certificate for `host` in the certbot layout.
fn certificate(dir: &Path, host: &str) {
    let pair = pki::self_signed(host);
    let at = dir.join("certs").join(host);
    std::fs::create_dir_all(&at).expect("cert dir");
    std::fs::write(at.join("fullchain.pem"), pair.cert_pem).expect("cert");
    std::fs::write(at.join("privkey.pem"), pair.key_pem).expect("key");
}

/// Who answers `host` on `port`, or the status when no backend did.
fn answer(port: u16, host: &str) -> Result<String, String> {
    let r = request_to(None, port, host, "GET", "/", &[]).map_err(|e| e.to_string())?;
    match r.status {
        200 => Ok(r.body.trim().to_owned()),
        s => Err(format!("status {s}: {}", r.body)),
    }
}

struct Ports {
    tcp: u16,
    http: u16,
    https: u16,
    redirect: u16,
}

/// A tcp rule and an http rule with two domains, as Terraform sends them
/// (ports as strings); then an https rule, a sticky cookie and a redirect
/// through the rule and domain calls.
fn build(api: &PublicApi, p: &Ports, www: u16, shop: u16, db: u16, sec: u16) -> String {
    let id = api.create(&json!({
        "lbName": "shop", "algorithm": "roundrobin", "cookieName": "", "cookieCheck": false,
        "redirectHTTP": 0, "healthCheckPath": "/healthz", "checkInterval": 1000, "fastInterval": 500,
        "rise": 1, "fall": 2, "resourceIdentifier": "8152952c-87ca-11eb-9353-0242ac110004",
        "dcIdentifier": "dc-emulated",
        "rules": [
            {"scheme": "tcp", "frontPort": p.tcp.to_string(), "backPort": db.to_string(),
             "backends": [{"ip": "127.0.0.1", "vmIdentifier": "vm-db"}]},
            {"scheme": "http", "frontPort": p.http.to_string(), "backPort": "0", "domainName": "",
             "domains": [
                {"domainId": "", "domainName": "www.shop.test", "backendScheme": "http",
                 "backPort": www.to_string(), "backends": [{"ip": "127.0.0.1", "vmIdentifier": "vm-1"}]},
                {"domainId": "", "domainName": "api.shop.test", "backendScheme": "http",
                 "backPort": shop.to_string(),
                 "backends": [{"ip": "127.0.0.1", "vmIdentifier": "vm-2"}, {"ip": "127.0.0.3", "vmIdentifier": "vm-3"}]}]}
        ]
    }));
    api.call("POST", "/api/v1/lb/rule/add", &json!({
        "lbId": id, "scheme": "https", "frontPort": p.https.to_string(), "backPort": sec.to_string(),
        "domains": [{"domainId": "", "domainName": "secure.shop.test", "backendScheme": "http",
                     "backPort": sec.to_string(), "backends": [{"ip": "127.0.0.1", "vmIdentifier": "vm-4"}]}]
    }));
    let (_, api_domain) = api.find(&id, p.http, Some("api.shop.test"));
    api.call(
        "POST",
        "/api/v1/lb/domain/update",
        &json!({
            "domainId": api_domain, "subdomain": "", "algorithm": "roundrobin", "redirectHTTP": 0,
            "cookieCheck": true, "cookieName": "vlb", "backPort": shop, "checkInterval": 1000,
            "fastInterval": 500, "rise": 1, "fall": 2
        }),
    );
    let (_, secure) = api.find(&id, p.https, Some("secure.shop.test"));
    api.call("POST", "/api/v1/lb/domain/update", &json!({
        "domainId": secure, "algorithm": "leastconn", "redirectHTTP": 1, "cookieCheck": false,
        "cookieName": "", "backPort": sec, "checkInterval": 1000, "fastInterval": 500, "rise": 1, "fall": 2
    }));
    id
}

fn public_api_rules_and_domains_serve_and_follow_changes(via: Via) {
    let dir = tempfile::tempdir().expect("tempdir");
    let api = PublicApi::start();
    let (www, shop, db, sec) = (free_port(), free_port(), free_port(), free_port());
    let _b = [
        HttpBackend::start_on("www1", www).expect("www1"),
        HttpBackend::start_on("shop1", shop).expect("shop1"),
        HttpBackend::start_at("shop2", Ipv4Addr::new(127, 0, 0, 3), shop).expect("shop2"),
        HttpBackend::start_on("db", db).expect("db"),
        HttpBackend::start_on("sec", sec).expect("sec"),
    ];
    let p = Ports {
        tcp: free_port(),
        http: free_port(),
        https: free_port(),
        redirect: free_port(),
    };
    let id = build(&api, &p, www, shop, db, sec);
    certificate(dir.path(), "secure.shop.test");
    let agent = RunningAgent::start(
        dir.path(),
        &config(via, dir.path(), &api, &id, KEY, p.redirect),
    );

    // The tcp rule and both domains of the http rule serve; a host no
    // domain names gets 404.
    poll_until("tcp rule served", Duration::from_secs(30), || {
        serves(p.tcp, "db")
    });
    poll_until("www domain served", Duration::from_secs(15), || {
        answer(p.http, "www.shop.test").and_then(|b| (b == "www1").then_some(()).ok_or(b))
    });
    let unknown = request_to(None, p.http, "other.test", "GET", "/", &[]).expect("request");
    assert_eq!(unknown.status, 404, "{}", unknown.body);

    // The https rule answers its host with its certificate, and plain
    // http on the redirect port answers 301 towards it.
    let tls = ClientOptions {
        server_name: "secure.shop.test".into(),
        ..ClientOptions::default()
    };
    poll_until("https rule served", Duration::from_secs(15), || {
        let (_, r) = https_get(p.https, &tls, "/")?;
        (r.body.trim() == "sec").then_some(()).ok_or(r.body)
    });
    let moved =
        request_to(None, p.redirect, "secure.shop.test", "GET", "/a?b=1", &[]).expect("redirect");
    assert_eq!(moved.status, 301, "{}", moved.body);
    assert_eq!(
        moved.header("location"),
        Some(format!("https://secure.shop.test:{}/a?b=1", p.https).as_str())
    );

    // The sticky cookie holds a client on one backend.
    let first = request_to(None, p.http, "api.shop.test", "GET", "/", &[]).expect("sticky");
    let cookie = first
        .header("set-cookie")
        .and_then(|c| c.split(';').next())
        .expect("the first answer sets the cookie")
        .to_owned();
    assert!(cookie.starts_with("vlb="), "{cookie}");
    for _ in 0..10 {
        let again = request_to(
            None,
            p.http,
            "api.shop.test",
            "GET",
            "/",
            &[("cookie", &cookie)],
        )
        .expect("again");
        assert_eq!(
            again.body.trim(),
            first.body.trim(),
            "the cookie keeps the backend"
        );
    }

    // backend/update replaces the domain's backends; the new one goes live.
    let _www2 = HttpBackend::start_at("www2", Ipv4Addr::new(127, 0, 0, 2), www).expect("www2");
    let (_, www_domain) = api.find(&id, p.http, Some("www.shop.test"));
    api.call(
        "POST",
        "/api/v1/lb/backend/update",
        &json!({"domainId": www_domain, "backends": [
        {"ip": "127.0.0.1", "vmIdentifier": "vm-1"}, {"ip": "127.0.0.2", "vmIdentifier": "vm-5"}]}),
    );
    poll_until("the added backend serves", Duration::from_secs(20), || {
        let counts = http::count_by_backend_to(p.http, "www.shop.test", 8);
        counts
            .contains_key("www2")
            .then_some(())
            .ok_or(format!("{counts:?}"))
    });

    // A rule with a broken domain is refused with its api path; the
    // other rules keep serving.
    let mut details = api.details(&id);
    let broken_port = free_port();
    details["rules"].as_array_mut().expect("rules").push(json!({
        "ruleId": "broken-rule", "scheme": "http", "frontPort": broken_port, "backPort": 0,
        "domains": [{"domainId": "d-x", "domainName": "broken.shop.test", "backendScheme": "http",
                     "algorithm": "roundrobin", "backends": [{"ip": "127.0.0.1", "identifier": "b-x"}]}]
    }));
    api.control("PUT", &format!("/public/{id}"), &details);
    let broken = rule_document_id(&id, "broken-rule");
    let agent_status = |lb: &str| -> Value {
        let s = http::get(agent_port(dir.path()), "/status").expect("status");
        serde_json::from_str::<Value>(&s.body).expect("json")["load_balancers"][lb].clone()
    };
    poll_until(
        "the broken rule is reported by its api path",
        Duration::from_secs(20),
        || {
            let s = agent_status(&broken);
            let e = s["last_error"].as_str().unwrap_or_default().to_owned();
            e.contains("rules[3].domains[0].backPort: is required")
                .then_some(())
                .ok_or(s.to_string())
        },
    );
    assert!(
        agent
            .log()
            .contains("rules[3].domains[0].backPort: is required")
    );
    assert!(serves(p.tcp, "db").is_ok() && answer(p.http, "www.shop.test").is_ok());

    // `error: true` under HTTP 200 is a failed fetch; the last good
    // config keeps serving.
    api.control(
        "PUT",
        "/faults",
        &json!({"endpoint": "public_get_lb", "kind": "error_in_200", "count": 3}),
    );
    agent.wait_log(
        "the reported error is logged",
        "the api reported an error: injected: lost in the clouds",
    );
    assert!(serves(p.tcp, "db").is_ok());
    assert!(answer(p.http, "www.shop.test").is_ok());

    assert!(!agent.log().contains(KEY), "the key must never be logged");
}

/// The agent's own port, from the config the helper wrote.
fn agent_port(dir: &Path) -> u16 {
    let text = std::fs::read_to_string(dir.join("agent.yaml")).expect("config");
    let at = text
        .find("listen_address: 127.0.0.1:")
        .expect("agent listen")
        + 26;
    text[at..]
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .and_then(|p| p.parse().ok())
        .expect("port")
}

over_deliveries!(public_api_rules_and_domains_serve_and_follow_changes);

#[test]
fn a_wrong_key_says_api_key_rejected_and_is_never_logged() {
    let dir = tempfile::tempdir().expect("tempdir");
    let api = PublicApi::start();
    let id = api.create(&json!({"lbName": "k", "rules": []}));
    let wrong = "wrong-key-0c94e1";
    let agent = RunningAgent::start(
        dir.path(),
        &config(Via::Files, dir.path(), &api, &id, wrong, free_port()),
    );
    agent.wait_log("the refused key", "api key rejected");
    let log = agent.log();
    assert!(!log.contains(wrong) && !log.contains(KEY), "{log}");
}

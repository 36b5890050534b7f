//! The emulator over real sockets: persistence, the agent API's key and
//! ETags, and the public API's asynchronous create.

use super::*;
use std::io::Write;

fn call(port: u16, method: &str, path: &str, body: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .expect("send");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read");
    out
}

#[test]
fn load_balancers_survive_a_restart_when_persisted() {
    let dir = std::env::temp_dir().join(format!("api-sim-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let file = dir.join("state.json");
    let first = Sim::new("k", Some(file.clone()));
    let port = first.spawn(0).expect("spawn").port();
    let put = call(
        port,
        "PUT",
        "/_sim/loadbalancers/web",
        "id: web\nport: 80\n",
    );
    assert!(put.starts_with("HTTP/1.1 200"), "{put}");

    let second = Sim::new("k", Some(file));
    let port = second.spawn(0).expect("spawn").port();
    let listed = call(port, "GET", "/_sim/loadbalancers", "");
    assert!(
        listed.contains("\"web\":{\"id\":\"web\",\"port\":80}"),
        "{listed}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_api_wants_the_key_and_answers_304_to_a_known_etag() {
    let sim = Sim::new("k", None);
    let port = sim.spawn(0).expect("spawn").port();
    call(port, "PUT", "/_sim/loadbalancers/web", "{\"id\":\"web\"}");
    let anon = call(port, "GET", "/v1/loadbalancers/web", "");
    assert!(anon.starts_with("HTTP/1.1 401"), "{anon}");
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    write!(
        s,
        "GET /v1/loadbalancers/web HTTP/1.1\r\nAuthorization: Bearer k\r\n\r\n"
    )
    .expect("send");
    let mut first = String::new();
    s.read_to_string(&mut first).expect("read");
    let etag = first
        .lines()
        .find_map(|l| l.strip_prefix("ETag: "))
        .expect("etag")
        .to_owned();
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    write!(s, "GET /v1/loadbalancers/web HTTP/1.1\r\nAuthorization: Bearer k\r\nIf-None-Match: {etag}\r\n\r\n").expect("send");
    let mut second = String::new();
    s.read_to_string(&mut second).expect("read");
    assert!(second.starts_with("HTTP/1.1 304"), "{second}");
}

fn public(port: u16, method: &str, path: &str, body: &str) -> (u16, Value) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nVpsie-Auth: k\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .expect("send");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read");
    let status = out[9..12].parse().expect("status");
    let body = out.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

#[test]
fn the_public_api_creates_asynchronously_and_deletes_by_ids_in_bodies() {
    let sim = Sim::new("k", None);
    let port = sim.spawn(0).expect("spawn").port();
    call(
        port,
        "PUT",
        "/_sim/public_settings",
        "{\"create_delay_ms\": 200}",
    );
    let create = r#"{"lbName":"web","rules":[{"scheme":"tcp","frontPort":"5432","backPort":"5432",
        "backends":[{"ip":"10.0.0.5","vmIdentifier":"vm-1"}]},{"scheme":"http","frontPort":80,
        "domains":[{"domainName":"www.example.com","backPort":"8080","backends":[{"ip":"10.0.0.6"}]}]}]}"#;
    assert_eq!(public(port, "POST", "/api/v1/lb/create", create).0, 200);
    assert_eq!(
        public(port, "POST", "/api/v1/lb/create", create).0,
        409,
        "lbName is unique"
    );
    let (_, pending) = public(port, "GET", "/api/v2/lbs/pending", "");
    assert_eq!(pending["data"][0][0]["data"]["lbName"], "web");
    assert_eq!(public(port, "GET", "/api/v1/lb/all", "").1["total"], 0);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let list = loop {
        let (_, list) = public(port, "GET", "/api/v1/lb/all", "");
        if list["total"] == 1 || std::time::Instant::now() > deadline {
            break list;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let id = list["data"][0]["identifier"]
        .as_str()
        .expect("active")
        .to_owned();
    let (_, lb) = public(port, "GET", &format!("/api/v1/lb/{id}"), "");
    let rules = &lb["data"]["rules"];
    assert_eq!(
        (
            rules[0]["frontPort"].as_i64(),
            rules[0]["backPort"].as_i64()
        ),
        (Some(5432), Some(5432))
    );
    assert_eq!(rules[1]["domains"][0]["backPort"], 8080);
    assert_eq!(rules[1]["domains"][0]["cookieCheck"], 0);
    let backend = rules[0]["backends"][0]["identifier"]
        .as_str()
        .expect("backend id")
        .to_owned();
    let body = format!("{{\"backendId\":\"{backend}\"}}");
    assert_eq!(
        public(port, "DELETE", "/api/v1/lb/delete/backend", &body).0,
        200
    );
    let rule = rules[1]["ruleId"].as_str().expect("rule id").to_owned();
    let body = format!("{{\"ruleId\":\"{rule}\"}}");
    assert_eq!(
        public(port, "DELETE", "/api/v1/lb/delete/rule", &body).0,
        200
    );
    let (_, lb) = public(port, "GET", &format!("/api/v1/lb/{id}"), "");
    assert_eq!(lb["data"]["rules"].as_array().map(Vec::len), Some(1));
    assert_eq!(lb["data"]["rules"][0]["backends"], serde_json::json!([]));
    let (status, missing) = public(port, "GET", "/api/v1/lb/nope", "");
    assert_eq!(status, 404);
    assert!(
        missing["message"]
            .as_str()
            .is_some_and(|m| m.contains("not found"))
    );
    let anon = call(port, "GET", &format!("/api/v1/lb/{id}"), "");
    assert!(anon.starts_with("HTTP/1.1 401"), "{anon}");
}

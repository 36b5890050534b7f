//! An emulator of the VPSie agent API: enough to run the whole system
//! locally and to test the agent against every failure the real API could
//! show. Not shipped with the agent.
//!
//! API (relative to `/v1`, bearer-key auth):
//! `GET /loadbalancers/{id}` (ETag, If-None-Match), `PUT .../status`,
//! `PUT .../backends/{backend}/health`, `POST .../events`.
//!
//! Control surface (no auth, for operators and tests), under `/_sim`:
//! `PUT|DELETE /_sim/loadbalancers/{id}`, `GET /_sim/loadbalancers`,
//! `GET /_sim/reports/{id}`, `PUT /_sim/faults` (one fault rule as JSON),
//! `DELETE /_sim/faults`, `GET /_sim/requests` (counts per endpoint, and
//! `not_modified` for answers of 304 to If-None-Match).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// Largest request body accepted (a load-balancer document).
const MAX_REQUEST_BODY: usize = 10 * 1024 * 1024;
/// Size of the `huge_body` fault's response.
pub const HUGE_BODY_BYTES: usize = 50 * 1024 * 1024;

/// Which API endpoint a request is for (faults and counters key on this).
pub const ENDPOINTS: &[&str] = &["get_loadbalancer", "put_status", "put_health", "post_event"];

/// Everything the emulator holds.
#[derive(Debug, Default)]
struct State {
    loadbalancers: BTreeMap<String, Value>,
    status: BTreeMap<String, Value>,
    health: BTreeMap<String, BTreeMap<String, Value>>,
    events: BTreeMap<String, Vec<Value>>,
    faults: Vec<Fault>,
    requests: BTreeMap<String, u64>,
}

/// One injected fault.
#[derive(Debug, Clone)]
struct Fault {
    endpoint: String,
    kind: String,
    ms: u64,
    retry_after: u64,
    remaining: Option<u64>,
}

/// The emulator: state plus settings.
pub struct Sim {
    state: Mutex<State>,
    api_key: String,
    persist: Option<PathBuf>,
}

impl Sim {
    /// An emulator that accepts `api_key`, optionally persisting its state to `persist`.
    pub fn new(api_key: &str, persist: Option<PathBuf>) -> Arc<Sim> {
        let mut state = State::default();
        if let Some(p) = &persist
            && let Ok(v) = std::fs::read(p).map(|b| serde_json::from_slice::<Value>(&b))
            && let Ok(Value::Object(lbs)) = v.map(|v| v["loadbalancers"].clone())
        {
            state.loadbalancers = lbs.into_iter().collect();
        }
        Arc::new(Sim {
            state: Mutex::new(state),
            api_key: api_key.to_owned(),
            persist,
        })
    }

    /// Serves on `listener` until the process exits, one thread per connection.
    pub fn serve(self: &Arc<Self>, listener: TcpListener) {
        for stream in listener.incoming().flatten() {
            let sim = self.clone();
            thread::spawn(move || {
                let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
                let _ = sim.handle(stream);
            });
        }
    }

    /// Binds 127.0.0.1:`port` and serves in a background thread.
    pub fn spawn(self: &Arc<Self>, port: u16) -> std::io::Result<SocketAddr> {
        let listener = TcpListener::bind(("127.0.0.1", port))?;
        let addr = listener.local_addr()?;
        let sim = self.clone();
        thread::spawn(move || sim.serve(listener));
        Ok(addr)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn save(&self, state: &State) {
        let Some(path) = &self.persist else { return };
        let doc = json!({ "loadbalancers": state.loadbalancers });
        let tmp = path.with_extension("tmp");
        if std::fs::write(&tmp, doc.to_string()).is_ok() {
            let _ = std::fs::rename(&tmp, path);
        }
    }

    fn handle(&self, stream: TcpStream) -> std::io::Result<()> {
        let mut reader = BufReader::new(stream.try_clone()?);
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let mut parts = line.split_whitespace();
        let method = parts.next().unwrap_or("").to_owned();
        let target = parts.next().unwrap_or("/").to_owned();
        let mut headers = BTreeMap::new();
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h)? == 0 {
                break;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
            }
        }
        let len: usize = headers
            .get("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        if len > MAX_REQUEST_BODY {
            return respond(
                stream,
                413,
                "application/json",
                b"{\"error\":\"body too large\"}",
                &[],
            );
        }
        let mut body = vec![0; len];
        reader.read_exact(&mut body)?;
        let path = target.split('?').next().unwrap_or("/").to_owned();
        let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
        if segs.first() == Some(&"_sim") {
            return self.control(stream, &method, &segs[1..], &body);
        }
        self.api(stream, &method, &segs, &headers, &body)
    }

    fn control(
        &self,
        stream: TcpStream,
        method: &str,
        segs: &[&str],
        body: &[u8],
    ) -> std::io::Result<()> {
        // JSON, or YAML so an operator can send examples/demo.yaml as it is.
        let parsed: Option<Value> = serde_json::from_slice(body)
            .ok()
            .or_else(|| serde_norway::from_slice(body).ok());
        let mut st = self.lock();
        let (status, reply) = match (method, segs) {
            ("GET", ["loadbalancers"]) => (200, json!(st.loadbalancers)),
            ("PUT", ["loadbalancers", id]) => match parsed {
                Some(doc) => {
                    st.loadbalancers.insert((*id).to_owned(), doc);
                    self.save(&st);
                    (200, json!({"ok": true}))
                }
                None => (400, json!({"error": "body must be json"})),
            },
            ("DELETE", ["loadbalancers", id]) => {
                let found = st.loadbalancers.remove(*id).is_some();
                self.save(&st);
                (if found { 200 } else { 404 }, json!({"ok": found}))
            }
            ("GET", ["reports", id]) => (
                200,
                json!({
                    "status": st.status.get(*id),
                    "health": st.health.get(*id),
                    "events": st.events.get(*id).cloned().unwrap_or_default(),
                }),
            ),
            ("GET", ["requests"]) => (200, json!(st.requests)),
            ("PUT", ["faults"]) => match parsed.as_ref().and_then(parse_fault) {
                Some(f) => {
                    st.faults.push(f);
                    (200, json!({"ok": true}))
                }
                None => (
                    400,
                    json!({"error": "fault needs endpoint (one of get_loadbalancer, put_status, put_health, post_event, *) and kind (latency, error_5xx, error_4xx, rate_limit, reset, malformed_json, huge_body, wrong_content_type, unauthorized)"}),
                ),
            },
            ("DELETE", ["faults"]) => {
                st.faults.clear();
                (200, json!({"ok": true}))
            }
            _ => (404, json!({"error": "unknown control path"})),
        };
        drop(st);
        respond(
            stream,
            status,
            "application/json",
            reply.to_string().as_bytes(),
            &[],
        )
    }

    fn api(
        &self,
        stream: TcpStream,
        method: &str,
        segs: &[&str],
        headers: &BTreeMap<String, String>,
        body: &[u8],
    ) -> std::io::Result<()> {
        let (endpoint, id) = match (method, segs) {
            ("GET", ["v1", "loadbalancers", id]) => ("get_loadbalancer", *id),
            ("PUT", ["v1", "loadbalancers", id, "status"]) => ("put_status", *id),
            ("PUT", ["v1", "loadbalancers", id, "backends", _, "health"]) => ("put_health", *id),
            ("POST", ["v1", "loadbalancers", id, "events"]) => ("post_event", *id),
            _ => {
                return respond(
                    stream,
                    404,
                    "application/json",
                    b"{\"error\":\"not found\"}",
                    &[],
                );
            }
        };
        let fault = {
            let mut st = self.lock();
            *st.requests.entry(endpoint.to_owned()).or_insert(0) += 1;
            take_fault(&mut st.faults, endpoint)
        };
        if let Some(f) = &fault {
            match f.kind.as_str() {
                "latency" => thread::sleep(Duration::from_millis(f.ms)),
                "error_5xx" => {
                    return respond(
                        stream,
                        503,
                        "application/json",
                        b"{\"error\":\"injected 503\"}",
                        &[],
                    );
                }
                "error_4xx" => {
                    return respond(
                        stream,
                        422,
                        "application/json",
                        b"{\"error\":\"injected 422\"}",
                        &[],
                    );
                }
                "rate_limit" => {
                    let ra = f.retry_after.to_string();
                    return respond(
                        stream,
                        429,
                        "application/json",
                        b"{\"error\":\"slow down\"}",
                        &[("Retry-After", &ra)],
                    );
                }
                "reset" => {
                    let sock = socket2::Socket::from(stream);
                    let _ = sock.set_linger(Some(Duration::ZERO));
                    return Ok(()); // dropping with linger 0 sends RST
                }
                "malformed_json" => {
                    return respond(
                        stream,
                        200,
                        "application/json",
                        b"{\"id\": \"lb\", \"backends\": [",
                        &[],
                    );
                }
                "huge_body" => return respond_huge(stream),
                "wrong_content_type" => {
                    return respond(stream, 200, "text/html", b"<html>maintenance</html>", &[]);
                }
                "unauthorized" => {
                    return respond(
                        stream,
                        401,
                        "application/json",
                        b"{\"error\":\"invalid token\"}",
                        &[],
                    );
                }
                _ => {}
            }
        }
        let authorized = headers.get("authorization").map(String::as_str)
            == Some(&format!("Bearer {}", self.api_key));
        if !authorized {
            return respond(
                stream,
                401,
                "application/json",
                b"{\"error\":\"invalid token\"}",
                &[],
            );
        }
        let parsed: Option<Value> = serde_json::from_slice(body).ok();
        if endpoint != "get_loadbalancer" && parsed.is_none() {
            return respond(
                stream,
                400,
                "application/json",
                b"{\"error\":\"body must be json\"}",
                &[],
            );
        }
        let mut st = self.lock();
        match endpoint {
            "get_loadbalancer" => {
                let Some(doc) = st.loadbalancers.get(id).cloned() else {
                    drop(st);
                    return respond(
                        stream,
                        404,
                        "application/json",
                        b"{\"error\":\"load balancer not found\"}",
                        &[],
                    );
                };
                drop(st);
                let text = doc.to_string();
                let etag = format!("\"{}\"", hex(&Sha256::digest(text.as_bytes())[..8]));
                if headers.get("if-none-match") == Some(&etag) {
                    *self
                        .lock()
                        .requests
                        .entry("not_modified".to_owned())
                        .or_insert(0) += 1;
                    return respond(stream, 304, "application/json", b"", &[("ETag", &etag)]);
                }
                respond(
                    stream,
                    200,
                    "application/json",
                    text.as_bytes(),
                    &[("ETag", &etag)],
                )
            }
            "put_status" => {
                let v = parsed.unwrap_or_default(); // checked above: never null here
                st.status.insert(id.to_owned(), v);
                drop(st);
                respond(stream, 204, "application/json", b"", &[])
            }
            "put_health" => {
                let backend = segs.get(4).copied().unwrap_or("");
                let v = parsed.unwrap_or_default(); // checked above: never null here
                st.health
                    .entry(id.to_owned())
                    .or_default()
                    .insert(backend.to_owned(), v);
                drop(st);
                respond(stream, 204, "application/json", b"", &[])
            }
            _ => {
                let v = parsed.unwrap_or_default(); // checked above: never null here
                st.events.entry(id.to_owned()).or_default().push(v);
                drop(st);
                respond(stream, 201, "application/json", b"{}", &[])
            }
        }
    }
}

fn parse_fault(v: &Value) -> Option<Fault> {
    let endpoint = v["endpoint"].as_str()?;
    let kind = v["kind"].as_str()?;
    let kinds = [
        "latency",
        "error_5xx",
        "error_4xx",
        "rate_limit",
        "reset",
        "malformed_json",
        "huge_body",
        "wrong_content_type",
        "unauthorized",
    ];
    if !(endpoint == "*" || ENDPOINTS.contains(&endpoint)) || !kinds.contains(&kind) {
        return None;
    }
    Some(Fault {
        endpoint: endpoint.to_owned(),
        kind: kind.to_owned(),
        ms: v["ms"].as_u64().unwrap_or(1000),
        retry_after: v["retry_after"].as_u64().unwrap_or(1),
        remaining: v["count"].as_u64(),
    })
}

/// The first fault that applies to `endpoint`, using up one of its count.
fn take_fault(faults: &mut Vec<Fault>, endpoint: &str) -> Option<Fault> {
    let i = faults
        .iter()
        .position(|f| f.endpoint == "*" || f.endpoint == endpoint)?;
    let f = faults[i].clone();
    if let Some(n) = faults[i].remaining.as_mut() {
        *n = n.saturating_sub(1);
        if *n == 0 {
            faults.remove(i);
        }
    }
    Some(f)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        304 => "Not Modified",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        413 => "Payload Too Large",
        429 => "Too Many Requests",
        _ => "Service Unavailable",
    }
}

fn respond(
    mut s: TcpStream,
    status: u16,
    content_type: &str,
    body: &[u8],
    extra: &[(&str, &str)],
) -> std::io::Result<()> {
    let mut head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n",
        reason(status),
        body.len()
    );
    for (k, v) in extra {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes())?;
    s.write_all(body)?;
    s.flush()
}

fn respond_huge(mut s: TcpStream) -> std::io::Result<()> {
    write!(
        s,
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {HUGE_BODY_BYTES}\r\nConnection: close\r\n\r\n"
    )?;
    let chunk = vec![b' '; 64 * 1024];
    for _ in 0..HUGE_BODY_BYTES / chunk.len() {
        // The client may hang up once it has read its limit; that is the point.
        if s.write_all(&chunk).is_err() {
            return Ok(());
        }
    }
    s.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

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
}

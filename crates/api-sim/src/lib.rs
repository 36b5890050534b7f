//! An emulator of the VPSie agent API: enough to run the whole system
//! locally and to test the agent against every failure the real API could
//! show. Not shipped with the agent.
//!
//! API (relative to `/v1`, bearer-key auth):
//! `GET /loadbalancers/{id}` (ETag, If-None-Match), `PUT .../status`,
//! `PUT .../backends/{backend}/health`, `POST .../events`.
//!
//! VPSie's public API (`Vpsie-Auth`, `{error, data}` envelope): `GET
//! /api/v1/lb/all`, `GET|DELETE /api/v1/lb/{id}`, `POST /api/v1/lb/create`
//! (pending in `GET /api/v2/lbs/pending` for a while, then active),
//! `POST /api/v1/lb/{rule,domain,backend}/...`, `DELETE
//! /api/v1/lb/delete/{rule,domain,backend}` with the id in the body,
//! `GET /api/v1/lb/datacenter`, `POST /api/v1/lb/offers`, and the DNS
//! zones at `GET /apps/v2/domains`.
//!
//! Control surface (no auth, for operators and tests), under `/_sim`:
//! `PUT|DELETE /_sim/loadbalancers/{id}`, `GET /_sim/loadbalancers`,
//! `GET /_sim/reports/{id}`, `PUT /_sim/faults` (one fault rule as JSON),
//! `DELETE /_sim/faults`, `GET /_sim/requests` (counts per endpoint, and
//! `not_modified` for answers of 304 to If-None-Match); for the public
//! API `GET /_sim/public`, `PUT /_sim/public/{identifier}` (a details
//! object as `GET` shows it, any shape), `PUT /_sim/zones/{id}`
//! (`{"domain_name": …}`) and `PUT /_sim/public_settings`
//! (`{"create_delay_ms": N}`, 1000 by default).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
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

mod faults;
mod public;
mod wire;

use faults::{FAULT_KINDS, Fault, inject, parse_fault, take_fault};
use wire::{hex, respond};

/// Which API endpoint a request is for (faults and counters key on this).
/// The `public_*` ones are the public API's: one load balancer, the lists
/// (all, datacenters, pending), the DNS zones, and every change.
pub const ENDPOINTS: &[&str] = &[
    "get_loadbalancer",
    "put_status",
    "put_health",
    "post_event",
    "public_get_lb",
    "public_list",
    "public_zones",
    "public_change",
];

/// Everything the emulator holds.
#[derive(Debug, Default)]
struct State {
    loadbalancers: BTreeMap<String, Value>,
    status: BTreeMap<String, Value>,
    health: BTreeMap<String, BTreeMap<String, Value>>,
    events: BTreeMap<String, Vec<Value>>,
    faults: Vec<Fault>,
    requests: BTreeMap<String, u64>,
    public: public::PublicState,
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
            && let Ok(saved) = v
        {
            let map = |key: &str| match &saved[key] {
                Value::Object(m) => m.clone().into_iter().collect(),
                _ => BTreeMap::new(),
            };
            state.loadbalancers = map("loadbalancers");
            state.public.lbs = map("public");
            state.public.zones = map("zones")
                .into_iter()
                .map(|(k, v)| (k, v.as_str().unwrap_or_default().to_owned()))
                .collect();
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
        let doc = json!({ "loadbalancers": state.loadbalancers, "public": state.public.lbs,
                          "zones": state.public.zones });
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
        if let Some(endpoint) = public::endpoint(&method, &segs) {
            return self.public_api(stream, endpoint, &method, &segs, &headers, &body);
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
                    json!({"error": format!("fault needs endpoint (one of {}, *) and kind (one of {})", ENDPOINTS.join(", "), FAULT_KINDS.join(", "))}),
                ),
            },
            ("GET", ["public"]) => (200, json!(st.public.lbs)),
            ("PUT", ["public", id]) => match parsed {
                Some(doc) => {
                    st.public.lbs.insert((*id).to_owned(), doc);
                    self.save(&st);
                    (200, json!({"ok": true}))
                }
                None => (400, json!({"error": "body must be json"})),
            },
            ("PUT", ["zones", id]) => match parsed.as_ref().and_then(|v| v["domain_name"].as_str())
            {
                Some(name) => {
                    st.public.zones.insert((*id).to_owned(), name.to_owned());
                    self.save(&st);
                    (200, json!({"ok": true}))
                }
                None => (400, json!({"error": "body must be {\"domain_name\": ...}"})),
            },
            ("PUT", ["public_settings"]) => {
                match parsed.as_ref().and_then(|v| v["create_delay_ms"].as_u64()) {
                    Some(ms) => {
                        st.public.create_delay = Duration::from_millis(ms);
                        (200, json!({"ok": true}))
                    }
                    None => (
                        400,
                        json!({"error": "body must be {\"create_delay_ms\": N}"}),
                    ),
                }
            }
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

    /// Counts a request to `endpoint` and plays the first fault for it:
    /// the stream back when the request goes on, `None` when answered.
    fn count_and_inject(
        &self,
        endpoint: &str,
        stream: TcpStream,
    ) -> std::io::Result<Option<TcpStream>> {
        let fault = {
            let mut st = self.lock();
            *st.requests.entry(endpoint.to_owned()).or_insert(0) += 1;
            take_fault(&mut st.faults, endpoint)
        };
        inject(fault.as_ref(), stream)
    }

    /// 200 with `text` and its ETag, or 304 when the client sent that ETag.
    fn respond_tagged(
        &self,
        stream: TcpStream,
        headers: &BTreeMap<String, String>,
        text: &str,
    ) -> std::io::Result<()> {
        let etag = format!("\"{}\"", hex(&Sha256::digest(text.as_bytes())[..8]));
        let tag = [("ETag", etag.as_str())];
        if headers.get("if-none-match") == Some(&etag) {
            *self
                .lock()
                .requests
                .entry("not_modified".to_owned())
                .or_insert(0) += 1;
            return respond(stream, 304, "application/json", b"", &tag);
        }
        respond(stream, 200, "application/json", text.as_bytes(), &tag)
    }

    /// The public API: `Vpsie-Auth` (or a bearer token), the envelope,
    /// ETags on `GET /api/v1/lb/{id}`.
    fn public_api(
        &self,
        stream: TcpStream,
        endpoint: &str,
        method: &str,
        segs: &[&str],
        headers: &BTreeMap<String, String>,
        body: &[u8],
    ) -> std::io::Result<()> {
        let Some(stream) = self.count_and_inject(endpoint, stream)? else {
            return Ok(());
        };
        let authorized = headers.get("vpsie-auth") == Some(&self.api_key)
            || headers.get("authorization") == Some(&format!("Bearer {}", self.api_key));
        let parsed: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        let (status, reply) = if !authorized {
            (
                401,
                json!({"error": true, "code": 401, "message": "invalid or missing Vpsie-Auth token"}),
            )
        } else if method != "GET" && !parsed.is_object() {
            (
                400,
                json!({"error": true, "code": 400, "message": "body must be a json object"}),
            )
        } else {
            let mut st = self.lock();
            let reply = st.public.handle(method, segs, &parsed);
            if method != "GET" {
                self.save(&st);
            }
            reply
        };
        let text = reply.to_string();
        if endpoint != "public_get_lb" || status != 200 {
            return respond(stream, status, "application/json", text.as_bytes(), &[]);
        }
        self.respond_tagged(stream, headers, &text)
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
        let Some(stream) = self.count_and_inject(endpoint, stream)? else {
            return Ok(());
        };
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
                self.respond_tagged(stream, headers, &text)
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

#[cfg(test)]
mod tests;

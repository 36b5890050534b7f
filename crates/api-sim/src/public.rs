//! VPSie's public load-balancer API (`/api/v1/lb`, `Vpsie-Auth`), as its
//! Go SDK, Terraform provider and cloud controller call it: the envelope
//! `{error, data}`, asynchronous create with the pending list, rules,
//! domains and backends, ids of deletes in JSON bodies, and ports sent as
//! strings or numbers.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// Everything the public API holds.
#[derive(Debug)]
pub(crate) struct PublicState {
    /// Active load balancers by identifier, as `GET /api/v1/lb/{id}` shows them.
    pub(crate) lbs: BTreeMap<String, Value>,
    /// Created, not yet active: the pending entry and when it turns active.
    pending: Vec<(Value, Instant)>,
    /// DNS zones by identifier (`GET /apps/v2/domains`).
    pub(crate) zones: BTreeMap<String, String>,
    /// How long a created load balancer stays pending.
    pub(crate) create_delay: Duration,
    next: u64,
}

impl Default for PublicState {
    fn default() -> Self {
        Self {
            lbs: BTreeMap::new(),
            pending: Vec::new(),
            zones: BTreeMap::new(),
            create_delay: Duration::from_secs(1),
            next: 0,
        }
    }
}

/// An answer: status and JSON body.
pub(crate) type Reply = (u16, Value);

/// Which fault and counter key a public request falls under.
pub(crate) fn endpoint(method: &str, segs: &[&str]) -> Option<&'static str> {
    Some(match (method, segs) {
        ("GET", ["api", "v1", "lb", "all"]) => "public_list",
        ("GET", ["api", "v1", "lb", "datacenter"]) => "public_list",
        ("GET", ["api", "v2", "lbs", "pending"]) => "public_list",
        ("GET", ["apps", "v2", "domains"]) => "public_zones",
        ("GET", ["api", "v1", "lb", _]) => "public_get_lb",
        (_, ["api", "v1", "lb", ..]) => "public_change",
        _ => return None,
    })
}

fn ok(data: Value) -> Reply {
    (200, json!({"error": false, "data": data}))
}

fn fail(status: u16, message: &str) -> Reply {
    (
        status,
        json!({"error": true, "code": status, "message": message}),
    )
}

/// A port or count as the clients send it: a number or a string of digits.
fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// A flag sent as a bool or as 0/1, stored the way `GET` shows it: 0/1.
fn flag(v: &Value) -> i64 {
    match v {
        Value::Bool(b) => i64::from(*b),
        v => int(v).unwrap_or(0).clamp(0, 1),
    }
}

fn text(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_owned()
}

impl PublicState {
    /// A new id shaped like VPSie's UUIDs; `kind` tells them apart.
    fn id(&mut self, kind: u8) -> String {
        self.next += 1;
        format!("{:08x}-{kind:04x}-4000-8000-{:012x}", self.next, self.next)
    }

    /// Turns pending load balancers whose delay passed into active ones.
    fn settle(&mut self) {
        let now = Instant::now();
        let (ready, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.pending)
            .into_iter()
            .partition(|(_, at)| *at <= now);
        self.pending = waiting;
        for (entry, _) in ready {
            let id = text(&entry["id"]);
            self.lbs.insert(id, entry["details"].clone());
        }
    }

    /// Serves one authorized request.
    pub(crate) fn handle(&mut self, method: &str, segs: &[&str], body: &Value) -> Reply {
        self.settle();
        match (method, segs) {
            ("GET", ["api", "v1", "lb", "all"]) => self.list(),
            ("GET", ["api", "v1", "lb", "datacenter"]) => ok(json!([
                {"dc_name": "Emulated", "dc_image": "", "state": "emulated", "country": "ZZ",
                 "identifier": "dc-emulated", "is_active": 1, "is_deleted": 0}
            ])),
            ("GET", ["api", "v2", "lbs", "pending"]) => ok(json!([self
                .pending
                .iter()
                .map(|(e, _)| e["entry"].clone())
                .collect::<Vec<_>>()])),
            ("GET", ["apps", "v2", "domains"]) => ok(Value::Array(
                self.zones
                    .iter()
                    .map(|(id, name)| json!({"identifier": id, "domain_name": name, "ns_validated": 1}))
                    .collect(),
            )),
            ("GET", ["api", "v1", "lb", id]) => match self.lbs.get(*id) {
                Some(lb) => ok(lb.clone()),
                None => fail(404, "load balancer not found"),
            },
            ("POST", ["api", "v1", "lb", "offers"]) => ok(json!([])),
            ("POST", ["api", "v1", "lb", "create"]) => self.create(body),
            ("DELETE", ["api", "v1", "lb", "delete", what]) => self.delete(what, body),
            ("DELETE", ["api", "v1", "lb", id]) => match self.lbs.remove(*id) {
                Some(_) => ok(json!({})),
                None => fail(404, "load balancer not found"),
            },
            ("POST", ["api", "v1", "lb", "rule", "add"]) => self.add_rule(body),
            ("POST", ["api", "v1", "lb", "rule", "update"]) => self.update_rule(body),
            ("POST", ["api", "v1", "lb", "domain", "add"]) => self.add_domain(body),
            ("POST", ["api", "v1", "lb", "domain", "update"]) => self.update_domain(body),
            ("POST", ["api", "v1", "lb", "domain", "replace"]) => {
                let new = text(&body["newDomainId"]);
                self.with_domain(body, |d| d["domainId"] = json!(new))
            }
            ("POST", ["api", "v1", "lb", "backend", "update"]) => {
                let backends = body["backends"].clone();
                let mut made = Vec::new();
                for b in backends.as_array().into_iter().flatten() {
                    made.push(self.backend(b));
                }
                self.with_domain(body, |d| d["backends"] = Value::Array(made))
            }
            _ => fail(404, "unknown endpoint: not found"),
        }
    }

    fn list(&self) -> Reply {
        let items: Vec<Value> = self
            .lbs
            .iter()
            .map(|(id, lb)| {
                json!({"identifier": id, "lbName": lb["lbName"], "cpu": 1, "ram": 1024, "ssd": 10,
                       "traffic": lb["traffic"], "boxsize_id": 1, "default_ip": lb["default_ip"],
                       "dc_name": lb["dc_name"], "created_on": "2026-01-01 00:00:00",
                       "updated_at": "2026-01-01 00:00:00", "package": "basic", "created_by": "emulator",
                       "user_id": 1})
            })
            .collect();
        let total = items.len();
        (200, json!({"error": false, "data": items, "total": total}))
    }

    fn backend(&mut self, b: &Value) -> Value {
        let mut out = json!({"ip": text(&b["ip"]), "identifier": self.id(3),
                             "created_on": "2026-01-01T00:00:00Z"});
        if let Some(vm) = b["vmIdentifier"].as_str().filter(|s| !s.is_empty()) {
            out["vmIdentifier"] = json!(vm);
        }
        out
    }

    fn backends(&mut self, list: &Value) -> Value {
        let list: Vec<Value> = list.as_array().cloned().unwrap_or_default();
        Value::Array(list.iter().map(|b| self.backend(b)).collect())
    }

    /// A domain as `GET` shows it, from a request's fields and `defaults`.
    fn domain(&mut self, d: &Value, defaults: &Value) -> Value {
        let pick = |key: &str| {
            if d[key].is_null() {
                defaults[key].clone()
            } else {
                d[key].clone()
            }
        };
        let domain_id = match text(&d["domainId"]) {
            s if s.is_empty() => self.id(2),
            s => s,
        };
        let mut out = json!({
            "domainId": domain_id, "domainName": text(&d["domainName"]),
            "backendScheme": match text(&d["backendScheme"]) { s if s.is_empty() => "http".to_owned(), s => s },
            "algorithm": match text(&pick("algorithm")) { s if s.is_empty() => "roundrobin".to_owned(), s => s },
            "redirectHTTP": flag(&pick("redirectHTTP")), "cookieCheck": flag(&pick("cookieCheck")),
            "cookieName": text(&pick("cookieName")),
            "healthCheckPath": match text(&pick("healthCheckPath")) { s if s.is_empty() => "/".to_owned(), s => s },
            "checkInterval": int(&pick("checkInterval")).unwrap_or(2000),
            "fastInterval": int(&pick("fastInterval")).unwrap_or(1000),
            "rise": int(&pick("rise")).unwrap_or(2), "fall": int(&pick("fall")).unwrap_or(3),
            "created_on": "2026-01-01T00:00:00Z",
        });
        if let Some(p) = int(&d["backPort"]) {
            out["backPort"] = json!(p);
        }
        if let Some(s) = d["subdomain"].as_str() {
            out["subdomain"] = json!(s);
        }
        out["backends"] = self.backends(&d["backends"]);
        out
    }

    /// A rule as `GET` shows it.
    fn rule(&mut self, r: &Value, defaults: &Value) -> Value {
        let scheme = text(&r["scheme"]).to_ascii_lowercase();
        let mut out = json!({"ruleId": self.id(1), "scheme": scheme,
                             "frontPort": int(&r["frontPort"]).unwrap_or(0),
                             "backPort": int(&r["backPort"]).unwrap_or(0),
                             "created_on": "2026-01-01T00:00:00Z"});
        if scheme == "tcp" {
            out["backends"] = self.backends(&r["backends"]);
        } else {
            let domains: Vec<Value> = r["domains"].as_array().cloned().unwrap_or_default();
            out["domains"] =
                Value::Array(domains.iter().map(|d| self.domain(d, defaults)).collect());
        }
        out
    }

    fn create(&mut self, body: &Value) -> Reply {
        let name = text(&body["lbName"]);
        if name.is_empty() {
            return fail(400, "lbName is required");
        }
        let taken = self.lbs.values().any(|l| l["lbName"] == json!(name))
            || self
                .pending
                .iter()
                .any(|(e, _)| e["entry"]["data"]["lbName"] == json!(name));
        if taken {
            return fail(409, "a load balancer with this lbName exists");
        }
        let identifier = self.id(0);
        let rules: Vec<Value> = body["rules"].as_array().cloned().unwrap_or_default();
        let rules: Vec<Value> = rules.iter().map(|r| self.rule(r, body)).collect();
        let details = json!({"lbName": name, "identifier": identifier, "traffic": 1000, "boxsize_id": 1,
                             "default_ip": "127.0.0.1", "dc_name": "Emulated", "dcId": text(&body["dcIdentifier"]),
                             "created_by": "emulator", "user_id": 1, "rules": rules});
        let entry = json!({"id": identifier, "user": {}, "user_id": 1, "data": body, "resourceData": {},
                           "datacenter": [], "osData": {}, "running": 1, "type": "lb"});
        let at = Instant::now() + self.create_delay;
        self.pending.push((
            json!({"id": identifier, "entry": entry, "details": details}),
            at,
        ));
        (200, json!({"error": false, "data": {}}))
    }

    /// Every rule of every load balancer, with the identifier it belongs to.
    fn rules_mut(&mut self) -> impl Iterator<Item = &mut Value> {
        self.lbs
            .values_mut()
            .filter_map(|lb| lb["rules"].as_array_mut())
            .flatten()
    }

    fn add_rule(&mut self, body: &Value) -> Reply {
        let lb_id = text(&body["lbId"]);
        if !self.lbs.contains_key(&lb_id) {
            return fail(404, "load balancer not found");
        }
        let rule = self.rule(body, &json!({}));
        if let Some(rules) = self
            .lbs
            .get_mut(&lb_id)
            .and_then(|lb| lb["rules"].as_array_mut())
        {
            rules.push(rule);
        }
        ok(json!({}))
    }

    fn update_rule(&mut self, body: &Value) -> Reply {
        let id = text(&body["ruleId"]);
        let backends = (!body["backends"].is_null()).then(|| self.backends(&body["backends"]));
        let Some(rule) = self.rules_mut().find(|r| r["ruleId"] == json!(id)) else {
            return fail(404, "rule not found");
        };
        for key in ["frontPort", "backPort"] {
            if let Some(p) = int(&body[key]) {
                rule[key] = json!(p);
            }
        }
        if let Some(s) = body["scheme"].as_str() {
            rule["scheme"] = json!(s);
        }
        if let Some(b) = backends {
            rule["backends"] = b;
        }
        ok(json!({}))
    }

    fn add_domain(&mut self, body: &Value) -> Reply {
        let id = text(&body["ruleId"]);
        let domain = self.domain(body, &json!({}));
        let Some(rule) = self.rules_mut().find(|r| r["ruleId"] == json!(id)) else {
            return fail(404, "rule not found");
        };
        if !rule["domains"].is_array() {
            rule["domains"] = json!([]);
        }
        if let Some(list) = rule["domains"].as_array_mut() {
            list.push(domain);
        }
        ok(json!({}))
    }

    fn update_domain(&mut self, body: &Value) -> Reply {
        let body = body.clone();
        self.with_domain(&body, |d| {
            for key in ["subdomain", "algorithm", "cookieName"] {
                if let Some(s) = body[key].as_str() {
                    d[key] = json!(s);
                }
            }
            for key in ["redirectHTTP", "cookieCheck"] {
                if !body[key].is_null() {
                    d[key] = json!(flag(&body[key]));
                }
            }
            for key in ["backPort", "checkInterval", "fastInterval", "rise", "fall"] {
                if let Some(n) = int(&body[key]) {
                    d[key] = json!(n);
                }
            }
        })
    }

    /// Runs `change` on the domain `body.domainId` names.
    fn with_domain(&mut self, body: &Value, change: impl FnOnce(&mut Value)) -> Reply {
        let id = text(&body["domainId"]);
        let found = self
            .rules_mut()
            .filter_map(|r| r["domains"].as_array_mut())
            .flatten()
            .find(|d| d["domainId"] == json!(id));
        match found {
            Some(d) => {
                change(d);
                ok(json!({}))
            }
            None => fail(404, "domain not found"),
        }
    }

    fn delete(&mut self, what: &str, body: &Value) -> Reply {
        let (key, list) = match what {
            "rule" => ("ruleId", None),
            "domain" => ("domainId", Some("domains")),
            "backend" => ("backendId", Some("backends")),
            _ => return fail(404, "unknown endpoint: not found"),
        };
        let id = json!(text(&body[key]));
        let mut found = false;
        for lb in self.lbs.values_mut() {
            let Some(rules) = lb["rules"].as_array_mut() else {
                continue;
            };
            match list {
                None => {
                    let before = rules.len();
                    rules.retain(|r| r["ruleId"] != id);
                    found |= rules.len() != before;
                }
                Some(_) => {
                    for rule in rules.iter_mut() {
                        found |= remove_nested(rule, what, &id);
                    }
                }
            }
        }
        if found {
            ok(json!({}))
        } else {
            fail(404, &format!("{what} not found"))
        }
    }
}

/// Removes the domain or backend with `id` anywhere below `rule`.
fn remove_nested(rule: &mut Value, what: &str, id: &Value) -> bool {
    if what == "domain" {
        return retain(rule.get_mut("domains"), "domainId", id);
    }
    let mut found = retain(rule.get_mut("backends"), "identifier", id);
    if let Some(domains) = rule.get_mut("domains").and_then(Value::as_array_mut) {
        for d in domains {
            found |= retain(d.get_mut("backends"), "identifier", id);
        }
    }
    found
}

/// Drops the items of `list` whose `key` is `id`; whether any was.
fn retain(list: Option<&mut Value>, key: &str, id: &Value) -> bool {
    let Some(list) = list.and_then(Value::as_array_mut) else {
        return false;
    };
    let before = list.len();
    list.retain(|item| item[key] != *id);
    list.len() != before
}

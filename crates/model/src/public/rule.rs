//! Rules (listeners) of a public-API load balancer, each one document.

use std::collections::BTreeSet;

use serde_json::{Map, Value, json};

use super::domain::MappedDomain;
use super::read::{ApiObj, Builder};
use super::{MapEnv, MappedLb, MappedRule, NeededCertificate, PathMap, rule_document_id};
use crate::problem::{FieldPath, Problem};

/// Longest name a document may carry.
const MAX_NAME: usize = 255;

/// What a rule leaves for the pass over the whole load balancer.
struct Pending {
    rule: MappedRule,
    scheme: String,
    port: Option<u16>,
    /// Hosts of an https rule whose domains ask for the redirect.
    redirect_hosts: Vec<(String, FieldPath)>,
}

pub(crate) fn map_all(identifier: &str, data: &Value, env: &MapEnv) -> MappedLb {
    let root = FieldPath::root();
    let mut out = MappedLb::default();
    let Some(lb) = ApiObj::new(data, &root, &mut out.problems) else {
        return out;
    };
    match lb.text("identifier", &mut out.problems) {
        Some(got) if got != identifier => {
            out.problems.push(Problem::new(
                &lb.at("identifier"),
                format!("the answer is about load balancer {got:?}, not {identifier:?}"),
            ));
            return out;
        }
        _ => {}
    }
    let name = lb
        .text("lbName", &mut out.problems)
        .unwrap_or_else(|| identifier.to_owned());
    let mut pending = Vec::new();
    let mut seen = BTreeSet::new();
    for (v, at) in lb.list("rules", &mut out.problems) {
        let Some(rule) = ApiObj::new(v, &at, &mut out.problems) else {
            continue;
        };
        let Some(rule_id) = rule.text("ruleId", &mut out.problems) else {
            out.problems.push(Problem::new(
                &rule.at("ruleId"),
                "is required: without it the rule has no stable id",
            ));
            continue;
        };
        if !seen.insert(rule_id.clone()) {
            out.problems.push(Problem::new(
                &rule.at("ruleId"),
                format!("{rule_id:?} is used by an earlier rule"),
            ));
            continue;
        }
        let id = rule_document_id(identifier, &rule_id);
        pending.push(one_rule(id, &name, rule, v, env));
    }
    place_redirects(&mut pending, env.redirect_port);
    out.rules = pending.into_iter().map(|p| p.rule).collect();
    out
}

fn one_rule(id: String, lb_name: &str, rule: ApiObj<'_>, raw: &Value, env: &MapEnv) -> Pending {
    let mut b = Builder {
        env,
        problems: Vec::new(),
        paths: PathMap::new(rule.path()),
    };
    let scheme = rule
        .text("scheme", &mut b.problems)
        .unwrap_or_default()
        .to_ascii_lowercase();
    let port = rule.port("frontPort", &mut b.problems);
    b.paths
        .add(&FieldPath::root().key("port"), &rule.at("frontPort"));
    b.paths
        .add(&FieldPath::root().key("protocol"), &rule.at("scheme"));
    let mut doc = Map::new();
    doc.insert("id".into(), json!(id));
    let name: String = format!("{lb_name} {scheme}:{}", port.unwrap_or(0))
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_NAME)
        .collect();
    doc.insert("name".into(), json!(name));
    let (body, certificates, redirect_hosts) = match scheme.as_str() {
        "tcp" => (b.tcp(&rule), Vec::new(), Vec::new()),
        "http" | "https" | "http2" => b.http(&rule, &scheme),
        other => {
            b.problems.push(Problem::new(
                &rule.at("scheme"),
                format!("must be tcp, http, https or http2 (got {other:?})"),
            ));
            (None, Vec::new(), Vec::new())
        }
    };
    if let Some(port) = port {
        doc.insert("port".into(), json!(port));
    }
    b.paths.sort();
    let doc = match body {
        Some(fields) if b.problems.is_empty() => {
            doc.extend(fields);
            Ok(Value::Object(doc))
        }
        _ => Err(b.problems),
    };
    Pending {
        rule: MappedRule {
            id,
            raw: raw.clone(),
            doc,
            certificates,
            paths: b.paths,
        },
        scheme,
        port,
        redirect_hosts,
    }
}

type Fields = Map<String, Value>;
type HttpParts = (
    Option<Fields>,
    Vec<NeededCertificate>,
    Vec<(String, FieldPath)>,
);

impl Builder<'_> {
    fn tcp(&mut self, rule: &ApiObj<'_>) -> Option<Fields> {
        let domains = rule.list("domains", &mut self.problems);
        if !domains.is_empty() {
            self.problems.push(Problem::new(
                &rule.at("domains"),
                "a tcp rule cannot route by domain; give its backends to the rule",
            ));
        }
        let port = rule.port("backPort", &mut self.problems);
        let root = FieldPath::root();
        let backends = self.backends(rule, port, &root);
        let health = self.health_check(rule, "", &root);
        let mut f = Fields::new();
        f.insert("protocol".into(), json!("tcp"));
        f.insert("algorithm".into(), json!("round_robin"));
        f.insert("backends".into(), backends?);
        f.insert("health_check".into(), health?);
        Some(f)
    }

    fn http(&mut self, rule: &ApiObj<'_>, scheme: &str) -> HttpParts {
        let tls = scheme != "http";
        let mut pools = Vec::new();
        let mut routes = Vec::new();
        let mut hosts: Vec<(String, FieldPath)> = Vec::new();
        let mut redirect_hosts = Vec::new();
        let mut complete = true;
        let domains = rule.list("domains", &mut self.problems);
        if domains.is_empty() {
            self.problems.push(Problem::new(
                &rule.at("domains"),
                format!("an {scheme} rule needs at least one domain"),
            ));
        }
        for (j, (v, at)) in domains.into_iter().enumerate() {
            let Some(d) = ApiObj::new(v, &at, &mut self.problems) else {
                complete = false;
                continue;
            };
            let Some(MappedDomain {
                host,
                pool,
                redirect,
            }) = self.domain(d, j)
            else {
                complete = false;
                continue;
            };
            if let Some((_, first)) = hosts.iter().find(|(h, _)| *h == host) {
                self.problems.push(Problem::new(
                    &d.at("domainName"),
                    format!("host {host:?} is already served by {first}"),
                ));
                complete = false;
                continue;
            }
            if redirect && tls {
                redirect_hosts.push((host.clone(), d.at("redirectHTTP")));
            }
            routes.push(json!({
                "id": pool["id"], "hosts": [host], "forward": [{"pool": pool["id"]}],
            }));
            pools.push(pool);
            hosts.push((host, at));
        }
        let certificates = if tls {
            self.certificates(&hosts)
        } else {
            Vec::new()
        };
        if !complete {
            return (None, certificates, redirect_hosts);
        }
        let mut f = Fields::new();
        f.insert("protocol".into(), json!(if tls { "https" } else { "http" }));
        f.insert("backends".into(), json!([]));
        f.insert("pools".into(), Value::Array(pools));
        f.insert("routes".into(), Value::Array(routes));
        if let Some((first, rest)) = certificates.split_first() {
            let alpn = if scheme == "http2" {
                json!(["h2", "http/1.1"])
            } else {
                json!(["http/1.1"])
            };
            let extra: Vec<Value> = rest
                .iter()
                .map(|c| json!({"server_names": [c.host], "certificate_path": c.certificate_path, "private_key_path": c.private_key_path}))
                .collect();
            let mut t = json!({
                "certificate_path": first.certificate_path,
                "private_key_path": first.private_key_path,
                "alpn": alpn,
            });
            if !extra.is_empty() {
                t["certificates"] = Value::Array(extra);
            }
            f.insert("tls_config".into(), t);
        }
        (Some(f), certificates, redirect_hosts)
    }

    /// The certbot-layout files of each host, the first being the default.
    fn certificates(&mut self, hosts: &[(String, FieldPath)]) -> Vec<NeededCertificate> {
        let dir = self.env.certificate_dir.trim_end_matches('/');
        hosts
            .iter()
            .enumerate()
            .map(|(n, (host, at))| {
                let doc_at = match n {
                    0 => FieldPath::root().key("tls_config"),
                    n => FieldPath::root()
                        .key("tls_config")
                        .key("certificates")
                        .index(n - 1),
                };
                self.paths.add(&doc_at, at);
                NeededCertificate {
                    host: host.clone(),
                    certificate_path: format!("{dir}/{host}/fullchain.pem"),
                    private_key_path: format!("{dir}/{host}/privkey.pem"),
                    at: at.clone(),
                }
            })
            .collect()
    }
}

/// `redirectHTTP` asks port 80 (`from`) to send a host to https. An http
/// rule on that port gets a redirect route per such host, ahead of its own routes;
/// without one, the first https rule asking for it gets a redirect
/// listener on port 80 (which answers every host of that rule). A later
/// rule that would need a second listener on 80 is a problem.
fn place_redirects(pending: &mut [Pending], from: u16) {
    let wanted: Vec<(usize, String, FieldPath, u16)> = pending
        .iter()
        .enumerate()
        .flat_map(|(i, p)| {
            p.redirect_hosts
                .iter()
                .filter_map(move |(h, at)| Some((i, h.clone(), at.clone(), p.port?)))
        })
        .collect();
    if wanted.is_empty() {
        return;
    }
    let plain = pending
        .iter()
        .position(|p| p.scheme == "http" && p.port == Some(from));
    if let Some(k) = plain {
        if let Ok(doc) = &mut pending[k].rule.doc {
            let redirects = wanted.iter().enumerate().map(|(n, (_, host, _, port))| {
                let mut to = json!({"scheme": "https"});
                if *port != 443 {
                    to["port"] = json!(port);
                }
                json!({"id": format!("redirect-{n}"), "hosts": [host], "redirect": to})
            });
            if let Some(routes) = doc.get_mut("routes").and_then(Value::as_array_mut) {
                let own = std::mem::take(routes);
                routes.extend(redirects);
                routes.extend(own);
            }
        }
        return;
    }
    let first = wanted[0].0;
    for (i, _, at, _) in &wanted {
        let rule = &mut pending[*i].rule;
        if *i == first {
            if let Ok(doc) = &mut rule.doc {
                doc["redirect_http_port"] = json!(from);
            }
        } else {
            let problem = Problem::new(
                at,
                format!(
                    "port {from} already redirects to {}, the first https rule that asks; one listener cannot redirect to two",
                    pending[first].rule.id
                ),
            );
            let rule = &mut pending[*i].rule;
            match &mut rule.doc {
                Ok(_) => rule.doc = Err(vec![problem]),
                Err(list) => list.push(problem),
            }
        }
    }
}

//! `plan`: what would change between the applied documents and new ones,
//! per load balancer and backend, and what Envoy would do about it. Pure.

use std::collections::BTreeMap;

use serde_json::Value;
use vpsie_lb_envoy::{
    Delivery, FilesLayout, ResourceSet, TranslateOptions, resource_set, translate_lb,
};
use vpsie_lb_model::{ValidateOptions, validate};

/// One line of a plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A load balancer that would be created.
    Added(String),
    /// A load balancer that would be removed (its listener drains).
    Removed(String),
    /// A load balancer that would change, with what changes.
    Modified(String, Vec<String>),
}

/// What Envoy would do for one load balancer: the kind of its change,
/// as the one change planner classifies it.
pub use crate::change::Kind as Impact;

/// What `vpsie-lb-agent plan` shows: per load balancer what changes, and
/// what Envoy would do. (The steps of an apply are `plan::Plan`.)
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Preview {
    /// Changes by load balancer, in id order.
    pub changes: Vec<Change>,
    /// Envoy's part, by load balancer id (for added and modified ones).
    pub impact: BTreeMap<String, Impact>,
}

/// Each load balancer's own resources, by id. Both sides were validated
/// before; an invalid side plans as empty, and a load balancer whose
/// resources cannot be rendered (a bug) as having none.
fn resources(
    docs: &BTreeMap<String, Value>,
    opts: &ValidateOptions,
) -> BTreeMap<String, ResourceSet> {
    let doc = Value::Array(docs.values().cloned().collect());
    let Ok(v) = validate(&doc, opts) else {
        return BTreeMap::new();
    };
    let translate = TranslateOptions::new(Delivery::Files(FilesLayout::new("/plan")));
    v.config
        .load_balancers
        .iter()
        .map(|lb| {
            let set = resource_set(&translate_lb(lb, &translate)).unwrap_or_default();
            (lb.id.clone(), set)
        })
        .collect()
}

/// What Envoy does for a change of one load balancer: the kind of the
/// change of its own resources ([`crate::change::plan`]), compared by
/// version, a hash of canonical JSON (protobuf map fields inside an `Any`
/// encode in random order, so bytes would not do).
fn impact(old: Option<&ResourceSet>, new: Option<&ResourceSet>) -> Impact {
    let none = ResourceSet::new();
    crate::change::plan(old.unwrap_or(&none), new.unwrap_or(&none)).kind
}

/// Plans `applied` → `desired` (documents by load-balancer id).
pub fn preview(
    applied: &BTreeMap<String, Value>,
    desired: &BTreeMap<String, Value>,
    opts: &ValidateOptions,
) -> Preview {
    let (old, new) = (resources(applied, opts), resources(desired, opts));
    let mut p = Preview::default();
    let ids: std::collections::BTreeSet<&String> = applied.keys().chain(desired.keys()).collect();
    for id in ids {
        match (applied.get(id), desired.get(id)) {
            (None, Some(_)) => {
                p.changes.push(Change::Added(id.clone()));
                p.impact.insert(id.clone(), Impact::EndpointsOnly);
            }
            (Some(_), None) => p.changes.push(Change::Removed(id.clone())),
            (Some(a), Some(d)) if a != d => {
                p.changes.push(Change::Modified(id.clone(), describe(a, d)));
                let impact = impact(old.get(id), new.get(id));
                p.impact.insert(id.clone(), impact);
            }
            _ => {}
        }
    }
    p
}

fn show(v: &Value) -> String {
    match v {
        Value::Null => "(unset)".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Field-level differences of one load balancer, backends by id.
fn describe(a: &Value, d: &Value) -> Vec<String> {
    let mut out = Vec::new();
    let keys: std::collections::BTreeSet<&String> = a
        .as_object()
        .into_iter()
        .chain(d.as_object())
        .flat_map(|m| m.keys())
        .collect();
    for k in keys {
        if ["backends", "pools", "routes"].contains(&k.as_str()) || a.get(k) == d.get(k) {
            continue;
        }
        out.push(format!(
            "{k}: {} -> {}",
            show(a.get(k).unwrap_or(&Value::Null)),
            show(d.get(k).unwrap_or(&Value::Null))
        ));
    }
    let by_id = |v: &Value| -> BTreeMap<String, Value> {
        v["backends"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|b| Some((b["id"].as_str()?.to_owned(), b.clone())))
            .collect()
    };
    let (ab, db) = (by_id(a), by_id(d));
    let endpoint = |b: &Value| format!("{}:{}", show(&b["address"]), show(&b["port"]));
    for (id, b) in &db {
        match ab.get(id) {
            None => out.push(format!("+ backend {id} ({})", endpoint(b))),
            Some(old) if old != b => {
                let fields: Vec<String> = ["address", "port", "weight", "enabled"]
                    .iter()
                    .filter(|f| old[**f] != b[**f])
                    .map(|f| format!("{f} {} -> {}", show(&old[*f]), show(&b[*f])))
                    .collect();
                out.push(format!("~ backend {id}: {}", fields.join(", ")));
            }
            _ => {}
        }
    }
    for (id, b) in &ab {
        if !db.contains_key(id) {
            out.push(format!("- backend {id} ({})", endpoint(b)));
        }
    }
    out.extend(describe_list(a, d, "pools", "pool"));
    out.extend(describe_list(a, d, "routes", "route"));
    out
}

/// Items of the list under `key` added, removed or changed, by id; a
/// changed item names the fields that differ (with both values when short).
fn describe_list(a: &Value, d: &Value, key: &str, noun: &str) -> Vec<String> {
    let items = |v: &Value| -> Vec<(String, Value)> {
        v[key]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|i| Some((i["id"].as_str()?.to_owned(), i.clone())))
            .collect()
    };
    let (old, new) = (items(a), items(d));
    let find = |list: &[(String, Value)], id: &str| {
        list.iter().find(|(i, _)| i == id).map(|(_, v)| v.clone())
    };
    let mut out = Vec::new();
    for (id, item) in &new {
        match find(&old, id) {
            None => out.push(format!("+ {noun} {id}")),
            Some(was) if was != *item => {
                let fields: std::collections::BTreeSet<&String> = was
                    .as_object()
                    .into_iter()
                    .chain(item.as_object())
                    .flat_map(|m| m.keys())
                    .filter(|f| was.get(*f) != item.get(*f))
                    .collect();
                let said: Vec<String> = fields
                    .into_iter()
                    .map(|f| {
                        let (x, y) = (show(&was[f]), show(&item[f]));
                        if x.len() + y.len() <= 120 {
                            format!("{f} {x} -> {y}")
                        } else {
                            f.clone()
                        }
                    })
                    .collect();
                out.push(format!("~ {noun} {id}: {}", said.join(", ")));
            }
            _ => {}
        }
    }
    for (id, _) in &old {
        if find(&new, id).is_none() {
            out.push(format!("- {noun} {id}"));
        }
    }
    out
}

/// The plan as text for humans.
pub fn render(p: &Preview) -> String {
    if p.changes.is_empty() {
        return "No changes: envoy already serves this configuration.\n".into();
    }
    let mut out = String::new();
    let (mut add, mut change, mut remove, mut drains) = (0, 0, 0, 0);
    for c in &p.changes {
        match c {
            Change::Added(id) => {
                add += 1;
                out.push_str(&format!("+ {id} (added): a new listener and cluster\n"));
            }
            Change::Removed(id) => {
                remove += 1;
                drains += 1;
                out.push_str(&format!(
                    "- {id} (removed): its listener closes and open connections drain\n"
                ));
            }
            Change::Modified(id, lines) => {
                change += 1;
                out.push_str(&format!("~ {id} (modified)\n"));
                for l in lines {
                    out.push_str(&format!("    {l}\n"));
                }
                let what = match p.impact.get(id) {
                    Some(Impact::ListenerDrains) => {
                        drains += 1;
                        "the listener changes: open connections drain"
                    }
                    Some(Impact::ClusterRebuilt) => {
                        "a cluster is rebuilt: upstream connections re-open; no listener drains"
                    }
                    Some(Impact::ListenerAdded) => {
                        "a listener is added: no drain, connections stay"
                    }
                    Some(Impact::RoutesOnly) => "routes only: no drain, connections stay",
                    Some(Impact::SecretsOnly) => {
                        "certificates only: no drain, new handshakes use them"
                    }
                    Some(Impact::None) => "nothing changes in envoy",
                    _ => "endpoints only: no drain, connections stay",
                };
                out.push_str(&format!("    envoy: {what}\n"));
            }
        }
    }
    out.push_str(&format!(
        "Plan: {add} to add, {change} to change, {remove} to remove; {drains} listener(s) drain.\n"
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn lb(id: &str, port: u16, algorithm: &str, backends: &[(&str, u16, u32)]) -> (String, Value) {
        let bs: Vec<Value> = backends
            .iter()
            .map(|(b, p, w)| json!({"id": b, "address": "10.0.0.1", "port": p, "weight": w}))
            .collect();
        (
            id.to_owned(),
            json!({"id": id, "name": id, "protocol": "http", "port": port, "algorithm": algorithm, "backends": bs}),
        )
    }

    fn check(applied: &[(String, Value)], desired: &[(String, Value)]) -> (Preview, String) {
        let p = preview(
            &applied.iter().cloned().collect(),
            &desired.iter().cloned().collect(),
            &ValidateOptions::default(),
        );
        let text = render(&p);
        (p, text)
    }

    /// An https load balancer on 443, with or without HTTP/3.
    fn https(http3: bool) -> (String, Value) {
        let (id, mut doc) = lb("web", 443, "round_robin", &[("a", 8080, 1)]);
        doc["protocol"] = json!("https");
        doc["http3"] = json!(http3);
        doc["tls_config"] =
            json!({"certificate_path": "/etc/tls/c.pem", "private_key_path": "/etc/tls/k.pem"});
        (id, doc)
    }

    #[test]
    fn regression_turning_http3_on_was_planned_as_a_listener_drain() {
        // On: a QUIC listener joins, the TCP one is untouched.
        let (p, text) = check(&[https(false)], &[https(true)]);
        assert_eq!(p.impact["web"], Impact::ListenerAdded, "{text}");
        assert!(text.contains("0 listener(s) drain"), "{text}");
        // Off: the QUIC listener closes, and its connections drain.
        let (p, text) = check(&[https(true)], &[https(false)]);
        assert_eq!(p.impact["web"], Impact::ListenerDrains, "{text}");
        assert!(text.contains("1 listener(s) drain"), "{text}");
    }

    #[test]
    fn regression_a_new_certificate_was_planned_as_an_endpoints_change() {
        let (_, mut renewed) = https(false);
        renewed["tls_config"]["certificate_path"] = json!("/etc/tls/renewed.pem");
        let (p, text) = check(&[https(false)], &[("web".into(), renewed)]);
        assert_eq!(p.impact["web"], Impact::SecretsOnly, "{text}");
        assert!(text.contains("certificates only: no drain"), "{text}");
    }

    #[test]
    fn nothing_to_do() {
        let a = [lb("web", 80, "round_robin", &[("a", 8080, 1)])];
        let (p, text) = check(&a, &a);
        assert!(p.changes.is_empty());
        assert!(text.starts_with("No changes"));
    }

    #[test]
    fn backend_changes_touch_endpoints_only() {
        let (p, text) = check(
            &[lb(
                "web",
                80,
                "round_robin",
                &[("a", 8080, 1), ("b", 8082, 1)],
            )],
            &[lb(
                "web",
                80,
                "round_robin",
                &[("a", 8080, 3), ("c", 8081, 1)],
            )],
        );
        assert_eq!(p.impact["web"], Impact::EndpointsOnly);
        assert!(text.contains("~ backend a: weight 1 -> 3"), "{text}");
        assert!(text.contains("+ backend c (10.0.0.1:8081)"), "{text}");
        assert!(text.contains("- backend b (10.0.0.1:8082)"), "{text}");
        assert!(text.contains("0 listener(s) drain"), "{text}");
    }

    #[test]
    fn an_algorithm_change_rebuilds_the_cluster_without_draining() {
        let (p, text) = check(
            &[lb("web", 80, "round_robin", &[("a", 8080, 1)])],
            &[lb("web", 80, "least_request", &[("a", 8080, 1)])],
        );
        assert_eq!(p.impact["web"], Impact::ClusterRebuilt);
        assert!(
            text.contains("algorithm: round_robin -> least_request"),
            "{text}"
        );
    }

    /// `web` with pool `next` and a canary route sending `next` of 100 to it.
    fn canary(next: u32, sticky: bool) -> (String, Value) {
        let (id, mut doc) = lb("web", 80, "round_robin", &[("a", 8080, 1)]);
        doc["pools"] =
            json!([{"id": "next", "backends": [{"id": "n", "address": "10.0.0.2", "port": 80}]}]);
        doc["routes"] = json!([{"id": "c", "forward": [
            {"pool": "default", "weight": 100 - next}, {"pool": "next", "weight": next}]}]);
        if sticky {
            doc["pools"][0]["sticky_sessions"] = json!({"cookie_name": "s"});
        }
        (id, doc)
    }

    #[test]
    fn a_canary_weight_change_is_routes_only_and_a_new_filter_drains() {
        let (p, text) = check(&[canary(10, false)], &[canary(50, false)]);
        assert_eq!(p.impact["web"], Impact::RoutesOnly);
        assert!(
            text.contains(r#"~ route c: forward [{"pool":"default","weight":90},{"pool":"next","weight":10}] -> [{"pool":"default","weight":50},{"pool":"next","weight":50}]"#),
            "{text}"
        );
        assert!(text.contains("routes only: no drain"), "{text}");
        assert!(text.contains("0 listener(s) drain"), "{text}");
        // Sticky sessions add a filter to the listener's connection manager.
        let (p, _) = check(&[canary(10, false)], &[canary(10, true)]);
        assert_eq!(p.impact["web"], Impact::ListenerDrains);
    }

    #[test]
    fn adding_a_pool_builds_its_cluster_without_draining() {
        let (p, _) = check(
            &[lb("web", 80, "round_robin", &[("a", 8080, 1)])],
            &[canary(10, false)],
        );
        assert_eq!(p.impact["web"], Impact::ClusterRebuilt);
    }

    #[test]
    fn http_rate_limits_and_access_lists_change_routes_only_tcp_access_drains() {
        let with = |protocol: &str, key: &str, v: serde_json::Value| {
            let (id, mut doc) = lb("web", 80, "round_robin", &[("a", 8080, 1)]);
            doc["protocol"] = json!(protocol);
            doc[key] = v;
            (id, doc)
        };
        for (key, old, new) in [
            (
                "rate_limit",
                json!({"requests_per_second": 5}),
                json!({"requests_per_second": 9}),
            ),
            (
                "access",
                json!({"deny": ["10.0.0.0/8"]}),
                json!({"allow": ["10.1.0.0/16"]}),
            ),
        ] {
            let (p, _) = check(
                &[with("http", key, old.clone())],
                &[with("http", key, new.clone())],
            );
            assert_eq!(p.impact["web"], Impact::RoutesOnly, "http {key}");
        }
        let (p, _) = check(
            &[with("tcp", "access", json!({"deny": ["10.0.0.0/8"]}))],
            &[with("tcp", "access", json!({"deny": ["10.9.0.0/16"]}))],
        );
        assert_eq!(
            p.impact["web"],
            Impact::ListenerDrains,
            "tcp access is a listener filter"
        );
    }

    #[test]
    fn a_port_change_drains_the_listener() {
        let (p, text) = check(
            &[lb("web", 80, "round_robin", &[("a", 8080, 1)])],
            &[lb("web", 8080, "round_robin", &[("a", 8080, 1)])],
        );
        assert_eq!(p.impact["web"], Impact::ListenerDrains);
        assert!(
            text.contains("port: 80 -> 8080") && text.contains("1 listener(s) drain"),
            "{text}"
        );
    }

    #[test]
    fn added_and_removed_load_balancers() {
        let (p, text) = check(
            &[lb("old", 81, "random", &[])],
            &[lb("new", 82, "random", &[])],
        );
        assert_eq!(
            p.changes,
            vec![Change::Added("new".into()), Change::Removed("old".into())]
        );
        assert!(
            text.contains("Plan: 1 to add, 0 to change, 1 to remove; 1 listener(s) drain."),
            "{text}"
        );
    }
}

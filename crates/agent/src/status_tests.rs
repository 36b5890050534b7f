//! The status as `/status`, the table and the reports show it, built
//! from inputs written out as data.

use super::*;
use crate::envoy_admin::HostHealth;
use serde_json::json;

#[test]
fn the_table_shows_the_config_version_and_each_ha_instance() {
    let s = AgentStatus {
        ready: true,
        envoy_reachable: true,
        config_version: "0123456789ab".into(),
        ha: Some(HaStatus {
            mode: "active_passive".into(),
            instances: vec![HaInstanceStatus {
                name: "vpsie_lb_1".into(),
                virtual_ips: vec!["192.0.2.10/24".into()],
                state: "master".into(),
                since: "2026-11-29T10:00:00Z".into(),
                notify_command: Some("exit 3: api said no".into()),
            }],
        }),
        ..Default::default()
    };
    let table = s.table();
    for want in [
        "config version: 0123456789ab\n",
        "ha: active_passive\n",
        "  vpsie_lb_1   MASTER   192.0.2.10/24                  since 2026-11-29T10:00:00Z\n",
        "    notify_command: exit 3: api said no\n",
    ] {
        assert!(table.contains(want), "missing {want:?} in:\n{table}");
    }
    assert!(!AgentStatus::default().table().contains("ha:"));
}

#[test]
fn long_ids_widen_their_columns_and_keep_the_table_aligned() {
    let lb_id = "00000001-0000-4000-8000-000000000001_h55f0635d3a88cf58";
    let backend = |id: &str, pool: &str| BackendStatus {
        id: id.into(),
        pool: pool.into(),
        address: "127.0.0.1".into(),
        port: 80,
        enabled: true,
        healthy: Some(true),
    };
    let lb = LbStatus {
        status: "active".into(),
        backends: vec![
            backend("00000004-0003-4000-8000-000000000004", "www_demo_test"),
            backend("a", "default"),
        ],
        ..Default::default()
    };
    let s = AgentStatus {
        load_balancers: BTreeMap::from([(lb_id.to_owned(), lb)]),
        ..Default::default()
    };
    let table = s.table();
    let lines: Vec<&str> = table.lines().collect();
    let column = |line: &str, word: &str| line.find(word).expect(word);
    assert_eq!(
        column(lines[1], "STATUS"),
        column(lines[2], "active"),
        "{table}"
    );
    assert_eq!(
        column(lines[3], "127.0.0.1"),
        column(lines[4], "127.0.0.1"),
        "{table}"
    );
    assert!(column(lines[3], "www_demo_test") > 2 + 36, "{table}");
}

fn host(cluster: &str, address: &str, hostname: &str, healthy: bool) -> HostHealth {
    HostHealth {
        cluster: cluster.into(),
        address: address.into(),
        port: 80,
        hostname: hostname.into(),
        healthy,
    }
}

fn doc(backends: serde_json::Value) -> serde_json::Value {
    json!({"id": "web", "backends": backends})
}

fn build_with(
    good: &[(&str, serde_json::Value)],
    problems: &[(&str, &str)],
    hosts: Option<&[HostHealth]>,
) -> StatusView {
    let good = good
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect();
    let problems = problems
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    build(&StatusInput {
        good: &good,
        good_version: "",
        fetched: &BTreeMap::new(),
        problems: &problems,
        hosts,
        draining: &[],
        serving_verified: true,
        last_result: "applied".into(),
        now: "2026-01-01T00:00:00Z".into(),
    })
}

#[test]
fn a_backend_in_its_deregistration_delay_is_shown_draining_until_its_end() {
    let lb = |backends: serde_json::Value| {
        json!({"id": "web", "name": "web", "protocol": "http", "port": 80,
               "deregistration_delay": 30, "backends": backends})
    };
    let both = lb(json!([{"id": "a", "address": "10.0.0.1", "port": 80},
                         {"id": "b", "address": "10.0.0.2", "port": 80}]));
    let one = lb(json!([{"id": "a", "address": "10.0.0.1", "port": 80}]));
    let config = |doc: &serde_json::Value| {
        vpsie_lb_model::validate(doc, &Default::default())
            .expect("valid")
            .config
    };
    let served = vpsie_lb_model::drain::overlay(Some(&config(&both)), config(&one), 1_000_000);
    let good = BTreeMap::from([("web".to_owned(), one)]);
    let view = build(&StatusInput {
        good: &good,
        good_version: "",
        fetched: &BTreeMap::new(),
        problems: &BTreeMap::new(),
        hosts: Some(&[]),
        draining: &vpsie_lb_model::drain::saved(&served),
        serving_verified: true,
        last_result: "applied".into(),
        now: "2026-01-01T00:00:00Z".into(),
    });
    let web = &view.snapshot.load_balancers["web"];
    assert_eq!(
        web.draining,
        [DrainingStatus {
            id: "b".into(),
            pool: "default".into(),
            address: "10.0.0.2".into(),
            port: 80,
            until: "1970-01-01T00:17:10Z".into(),
        }]
    );
    let table = view.snapshot.table();
    assert!(
        table.contains("draining until 1970-01-01T00:17:10Z"),
        "{table}"
    );
    // Nothing draining: the key is left out of /status.
    let json = serde_json::to_value(&build_with(&[("web", doc(json!([])))], &[], None).snapshot)
        .expect("json");
    assert!(
        json["load_balancers"]["web"].get("draining").is_none(),
        "{json}"
    );
}

#[test]
fn active_degraded_and_error_follow_what_is_served_and_why_not() {
    let v = build_with(
        &[("a", doc(json!([]))), ("b", doc(json!([])))],
        &[("b", "port taken"), ("c", "invalid")],
        Some(&[]),
    );
    let got: Vec<(&str, &str)> = v
        .reports
        .iter()
        .map(|r| (r.id.as_str(), r.status))
        .collect();
    assert_eq!(got, [("a", "active"), ("b", "degraded"), ("c", "error")]);
    assert_eq!(v.reports[2].message, "not serving: invalid");
    assert_eq!(v.reports[2].version, "");
    assert!(v.snapshot.ready);
}

#[test]
fn backend_health_is_matched_by_cluster_port_and_address_or_name() {
    let good = doc(json!([
        {"id": "ip", "address": "10.0.0.1", "port": 80},
        {"id": "name", "address": "App.Example.com", "port": 80},
        {"id": "off", "address": "10.0.0.3", "port": 80, "enabled": false},
        {"id": "unknown", "address": "10.0.0.4", "port": 80},
    ]));
    let hosts = [
        host("lb_web", "10.0.0.1", "", false),
        host("lb_web", "10.9.9.9", "app.example.com", false),
        host("lb_web", "10.9.9.8", "app.example.com", true),
        host("lb_web", "10.0.0.3", "", true),
        host("lb_other", "10.0.0.4", "", true),
    ];
    let v = build_with(&[("web", good)], &[], Some(&hosts));
    let health: Vec<(&str, bool)> = v.health.iter().map(|(_, b, h)| (b.as_str(), *h)).collect();
    assert_eq!(health, [("ip", false), ("name", true)]);
    let off = &v.snapshot.load_balancers["web"].backends[2];
    assert_eq!((off.enabled, off.healthy), (false, None));
}

#[test]
fn backends_of_every_pool_are_shown_with_their_pool_and_its_cluster() {
    let mut good = doc(json!([{"id": "www", "address": "10.0.0.1", "port": 80}]));
    good["pools"] = json!([{"id": "api", "backends": [
        {"id": "api-1", "address": "10.0.0.1", "port": 80},
    ]}]);
    // The same address in both pools: each is judged by its own cluster.
    let hosts = [
        host("lb_web", "10.0.0.1", "", true),
        host("lb_web~api", "10.0.0.1", "", false),
    ];
    let v = build_with(&[("web", good)], &[], Some(&hosts));
    let shown: Vec<(&str, &str, Option<bool>)> = v.snapshot.load_balancers["web"]
        .backends
        .iter()
        .map(|b| (b.id.as_str(), b.pool.as_str(), b.healthy))
        .collect();
    assert_eq!(
        shown,
        [
            ("www", "default", Some(true)),
            ("api-1", "api", Some(false))
        ]
    );
}

#[test]
fn envoy_unreachable_is_not_ready_and_knows_no_health() {
    let v = build_with(
        &[(
            "web",
            doc(json!([{"id": "ip", "address": "10.0.0.1", "port": 80}])),
        )],
        &[],
        None,
    );
    assert!(!v.snapshot.ready && !v.snapshot.envoy_reachable);
    assert!(v.health.is_empty());
}

#[test]
fn regression_a_victim_was_reported_active_while_its_change_was_held_back() {
    let served = doc(json!([{"id": "a", "address": "10.0.0.1", "port": 80}]));
    let wanted = doc(json!([{"id": "a", "address": "10.0.0.2", "port": 80}]));
    let good: BTreeMap<String, serde_json::Value> = [("web".to_owned(), served.clone())].into();
    let view = |fetched: &serde_json::Value| {
        build(&StatusInput {
            good: &good,
            good_version: "",
            fetched: &[("web".to_owned(), fetched.clone())].into(),
            problems: &BTreeMap::new(),
            hosts: Some(&[]),
            draining: &[],
            serving_verified: true,
            last_result: "error".into(),
            now: "2026-01-01T00:00:00Z".into(),
        })
    };
    let behind = view(&wanted);
    assert_eq!(behind.reports[0].status, "degraded");
    assert!(behind.reports[0].message.contains("not applied yet"));
    assert_eq!(view(&served).reports[0].status, "active");
}

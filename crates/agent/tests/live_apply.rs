//! Live: `apply` against a running Envoy: ordered steps confirmed through
//! the admin API, no IO for an unchanged config, rollback when Envoy refuses.
//! `apply` is the files delivery's one-shot command (over xDS, a one-shot
//! process could not keep serving), so these run over files only; the xds
//! counterparts are in `live_xds.rs`.

mod common;

use std::net::TcpListener;
use std::time::Duration;

use common::{Lab, Via, backends, lb_over};
use serde_json::json;
use vpsie_lb_testkit::http::{self, count_by_backend};
use vpsie_lb_testkit::{free_port, poll_until};

fn stdout(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn apply_adds_refuses_rolls_back_and_removes() {
    let bs = backends(&["a", "b"]);
    let (p1, p2) = (free_port(), free_port());
    let one = lb_over("one", "http", p1, "round_robin", &bs[..1]);
    let lab = Lab::start(Via::Files, &one);
    lab.wait_healthy("one", 1);
    let envoy = lab.envoy();
    let rejected = |e: &vpsie_lb_testkit::envoy::Envoy| {
        (
            e.stat("listener_manager.lds.update_rejected"),
            e.stat("cluster_manager.cds.update_rejected"),
        )
    };

    // A new load balancer brings a new cluster and a listener that uses it in
    // one change; written naively, Envoy would refuse the listener.
    let two = json!([one, lb_over("two", "http", p2, "round_robin", &bs[1..])]);
    let out = lab.apply(&two);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    assert!(stdout(&out).starts_with("applied"), "{}", stdout(&out));
    assert_eq!(count_by_backend(p2, 5).get("b"), Some(&5));
    assert_eq!(count_by_backend(p1, 5).get("a"), Some(&5));
    assert_eq!(rejected(envoy), (Some(0), Some(0)));
    let lkg = lab.dir.path().join("state/last-known-good");
    assert_eq!(
        std::fs::read(lkg.join("lds/lds.json")).expect("lkg lds"),
        std::fs::read(lab.out_dir().join("lds/lds.json")).expect("lds"),
        "last-known-good is what envoy confirmed"
    );
    // The same state `run` keeps: the documents beside the files.
    let saved = vpsie_lb_agent::state::load(&lab.dir.path().join("state"))
        .expect("state")
        .expect("saved");
    assert_eq!(
        saved.keys().collect::<Vec<_>>(),
        ["one", "two"],
        "apply --state-dir keeps the documents as run does"
    );

    // The same document again does no IO at all.
    let attempts = envoy.stat("listener_manager.lds.update_attempt");
    let out = lab.apply(&two);
    assert_eq!(out.status.code(), Some(0));
    assert!(stdout(&out).starts_with("unchanged"), "{}", stdout(&out));
    assert_eq!(envoy.stat("listener_manager.lds.update_attempt"), attempts);

    // A port held by another process: validation and Envoy's validate mode
    // both pass, and only the live Envoy can refuse it.
    let squatter = TcpListener::bind("127.0.0.1:0").expect("bind squatter");
    let taken = squatter.local_addr().expect("addr").port();
    let mut three = two.clone();
    three.as_array_mut().expect("array").push(lb_over(
        "three",
        "http",
        taken,
        "round_robin",
        &bs[..1],
    ));
    let before = std::fs::read(lab.out_dir().join("lds/lds.json")).expect("lds");
    let out = lab.apply(&three);
    assert_eq!(out.status.code(), Some(3), "{}", stdout(&out));
    let text = stdout(&out);
    assert!(text.starts_with("rolled back: envoy rejected"), "{text}");
    assert!(
        text.contains("lb_three"),
        "the reason names the listener: {text}"
    );
    assert_eq!(
        std::fs::read(lab.out_dir().join("lds/lds.json")).expect("lds"),
        before,
        "previous listeners restored"
    );
    assert!(
        !lab.out_dir().join("eds/lb_three").exists(),
        "the refused cluster's endpoints were removed"
    );
    assert_eq!(
        std::fs::read(lkg.join("lds/lds.json")).expect("lkg"),
        before,
        "last-known-good untouched"
    );
    poll_until(
        "the refused cluster to be gone",
        Duration::from_secs(10),
        || {
            if envoy.admin("/clusters").contains("lb_three::") {
                Err("still there".into())
            } else {
                Ok(())
            }
        },
    );
    assert_eq!(
        count_by_backend(p1, 5).get("a"),
        Some(&5),
        "old config still serves"
    );
    assert_eq!(
        count_by_backend(p2, 5).get("b"),
        Some(&5),
        "old config still serves"
    );
    drop(squatter);

    // Removing a load balancer: its listener goes, then its cluster and files.
    let out = lab.apply(&json!([lb_over(
        "one",
        "http",
        p1,
        "round_robin",
        &bs[..1]
    )]));
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    poll_until(
        "listener two closed",
        Duration::from_secs(10),
        || match http::get(p2, "/") {
            Err(_) => Ok(()),
            Ok(r) => Err(format!("still answering {}", r.status)),
        },
    );
    assert!(
        !envoy.admin("/clusters").contains("lb_two::"),
        "cluster of the removed load balancer remains"
    );
    assert!(!lab.out_dir().join("eds/lb_two").exists());
    assert_eq!(count_by_backend(p1, 5).get("a"), Some(&5));
}

#[test]
fn apply_refuses_what_envoy_validate_refuses_without_touching_files() {
    let bs = backends(&["a"]);
    let p = free_port();
    let lab = Lab::start(Via::Files, &lb_over("v", "http", p, "round_robin", &bs));
    let dir = lab.dir.path();
    let (cert, _) = vpsie_lb_testkit::pki::write_pair(
        dir,
        "one",
        &vpsie_lb_testkit::pki::self_signed("one.test"),
    );
    let (_, key) = vpsie_lb_testkit::pki::write_pair(
        dir,
        "two",
        &vpsie_lb_testkit::pki::self_signed("two.test"),
    );
    let mut doc = lb_over("v", "https", p, "round_robin", &bs);
    doc["tls_config"] = json!({"certificate_path": cert, "private_key_path": key});
    let before = std::fs::read(lab.out_dir().join("lds/lds.json")).expect("lds");
    let attempts = lab.envoy().stat("listener_manager.lds.update_attempt");
    let out = lab.apply(&doc);
    assert_eq!(out.status.code(), Some(2), "{}", stdout(&out));
    assert!(
        stdout(&out).starts_with("envoy: envoy rejected the configuration"),
        "{}",
        stdout(&out)
    );
    assert_eq!(
        std::fs::read(lab.out_dir().join("lds/lds.json")).expect("lds"),
        before
    );
    assert_eq!(
        lab.envoy().stat("listener_manager.lds.update_attempt"),
        attempts,
        "envoy saw nothing"
    );
    assert!(
        !dir.join("state").exists(),
        "no last-known-good for a refused config"
    );
}

#[test]
fn regression_apply_without_a_state_dir_could_empty_envoy_after_a_refusal() {
    let bs = backends(&["a", "b"]);
    let (p1, p2) = (free_port(), free_port());
    let one = lb_over("one", "http", p1, "round_robin", &bs[..1]);
    let lab = Lab::start(Via::Files, &one);
    lab.wait_healthy("one", 1);
    // Two new load balancers, one on a port another process holds: only
    // the live Envoy can refuse it.
    let squatter = TcpListener::bind("127.0.0.1:0").expect("bind squatter");
    let taken = squatter.local_addr().expect("addr").port();
    let doc = json!([
        one,
        lb_over("two", "http", p2, "round_robin", &bs[1..]),
        lb_over("three", "http", taken, "round_robin", &bs[..1])
    ]);
    let out = lab.apply_without_state(&doc);
    assert_eq!(out.status.code(), Some(3), "{}", stdout(&out));
    let text = stdout(&out);
    assert!(text.starts_with("rolled back: envoy rejected"), "{text}");
    // All or nothing: what served before still serves, and nothing of the
    // refused change does.
    assert_eq!(count_by_backend(p1, 5).get("a"), Some(&5));
    assert!(http::get(p2, "/").is_err(), "two was served on its own");
    drop(squatter);

    // apply keeps last-known-good in --state-dir, and leaves the drains a
    // running agent keeps there alone.
    let state = lab.dir.path().join("state");
    std::fs::create_dir_all(&state).expect("state dir");
    let drains = state.join("draining.json");
    std::fs::write(&drains, "[]").expect("drains");
    let out = lab.apply(&json!([
        one,
        lb_over("two", "http", p2, "round_robin", &bs[1..])
    ]));
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    assert_eq!(count_by_backend(p2, 5).get("b"), Some(&5));
    assert_eq!(std::fs::read_to_string(&drains).expect("drains kept"), "[]");

    // With a last-known-good to search on, apply is still all or nothing:
    // a refused change serves none of its load balancers.
    let squatter = TcpListener::bind("127.0.0.1:0").expect("bind squatter");
    let taken = squatter.local_addr().expect("addr").port();
    let p4 = free_port();
    let out = lab.apply(&json!([
        one,
        lb_over("two", "http", p2, "round_robin", &bs[1..]),
        lb_over("four", "http", p4, "round_robin", &bs[..1]),
        lb_over("five", "http", taken, "round_robin", &bs[..1])
    ]));
    assert_eq!(out.status.code(), Some(3), "{}", stdout(&out));
    assert!(http::get(p4, "/").is_err(), "four was served on its own");
    assert_eq!(count_by_backend(p2, 5).get("b"), Some(&5));
}

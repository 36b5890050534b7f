//! The deregistration delay's state across passes, one step at a time: each
//! step is a document (its backends) at a time, and what must drain then.

use serde_json::{Value, json};
use vpsie_lb_model::drain::{SavedDrain, ended, next_deadline, overlay, resume};
use vpsie_lb_model::{Address, Config, IpNet, ValidateOptions, validate};

/// A backend in a step: its last address octet, and whether it is enabled.
type B = (u8, bool);

fn doc(delay: u32, backends: &[B]) -> Config {
    let backends: Vec<Value> = backends
        .iter()
        .map(|&(n, enabled)| {
            json!({"id": format!("b{n}"), "address": format!("10.0.0.{n}"), "port": 80, "enabled": enabled})
        })
        .collect();
    let d = json!({"id": "lb", "protocol": "http", "port": 80, "backends": backends,
                   "deregistration_delay": delay});
    validate(&d, &ValidateOptions::default())
        .expect("valid")
        .config
}

/// One pass: the document, the time in seconds, the (octet, until in
/// seconds) that must drain after it, and the octets whose drain it ends.
struct Step {
    delay: u32,
    backends: &'static [B],
    now: u64,
    draining: &'static [(u8, u64)],
    ended: &'static [u8],
}

fn check(steps: &[Step]) {
    let mut served: Option<Config> = None;
    for (i, s) in steps.iter().enumerate() {
        let next = overlay(served.as_ref(), doc(s.delay, s.backends), s.now * 1000);
        let got: Vec<(u8, u64)> = next.load_balancers[0]
            .default_pool
            .draining
            .iter()
            .map(|d| (octet(&d.backend.address), d.until_ms / 1000))
            .collect();
        assert_eq!(got, s.draining, "step {i}: draining");
        let cut: Vec<u8> = served
            .as_ref()
            .map(|b| {
                ended(b, &next)
                    .iter()
                    .map(|(_, b)| octet(&b.address))
                    .collect()
            })
            .unwrap_or_default();
        assert_eq!(cut, s.ended, "step {i}: ended");
        let deadline = s.draining.iter().map(|d| d.1 * 1000).min();
        assert_eq!(next_deadline(&next), deadline, "step {i}: deadline");
        served = Some(next);
    }
}

fn octet(a: &Address) -> u8 {
    match a {
        Address::Ip(std::net::IpAddr::V4(v4)) => v4.octets()[3],
        other => panic!("not an ipv4 backend: {other}"),
    }
}

#[test]
fn a_removed_backend_drains_for_the_delay_then_ends() {
    check(&[
        Step {
            delay: 30,
            backends: &[(1, true), (2, true)],
            now: 100,
            draining: &[],
            ended: &[],
        },
        Step {
            delay: 30,
            backends: &[(1, true)],
            now: 110,
            draining: &[(2, 140)],
            ended: &[],
        },
        // A pass in between keeps the original end.
        Step {
            delay: 30,
            backends: &[(1, true)],
            now: 120,
            draining: &[(2, 140)],
            ended: &[],
        },
        Step {
            delay: 30,
            backends: &[(1, true)],
            now: 140,
            draining: &[],
            ended: &[2],
        },
        Step {
            delay: 30,
            backends: &[(1, true)],
            now: 150,
            draining: &[],
            ended: &[],
        },
    ]);
}

#[test]
fn a_disabled_backend_drains_like_a_removed_one() {
    check(&[
        Step {
            delay: 10,
            backends: &[(1, true), (2, true)],
            now: 0,
            draining: &[],
            ended: &[],
        },
        Step {
            delay: 10,
            backends: &[(1, true), (2, false)],
            now: 5,
            draining: &[(2, 15)],
            ended: &[],
        },
        Step {
            delay: 10,
            backends: &[(1, true), (2, false)],
            now: 16,
            draining: &[],
            ended: &[2],
        },
    ]);
}

#[test]
fn a_backend_back_during_its_delay_is_simply_active() {
    check(&[
        Step {
            delay: 10,
            backends: &[(1, true), (2, true)],
            now: 0,
            draining: &[],
            ended: &[],
        },
        Step {
            delay: 10,
            backends: &[(1, true)],
            now: 1,
            draining: &[(2, 11)],
            ended: &[],
        },
        // Back: active again, and its connections are never cut.
        Step {
            delay: 10,
            backends: &[(1, true), (2, true)],
            now: 2,
            draining: &[],
            ended: &[],
        },
        // Removed again later: a fresh delay from then.
        Step {
            delay: 10,
            backends: &[(1, true)],
            now: 20,
            draining: &[(2, 30)],
            ended: &[],
        },
    ]);
}

#[test]
fn no_delay_removes_at_once_and_a_shortened_delay_ends_sooner() {
    check(&[
        Step {
            delay: 0,
            backends: &[(1, true), (2, true)],
            now: 0,
            draining: &[],
            ended: &[],
        },
        Step {
            delay: 0,
            backends: &[(1, true)],
            now: 1,
            draining: &[],
            ended: &[],
        },
        Step {
            delay: 60,
            backends: &[(1, true), (3, true)],
            now: 2,
            draining: &[],
            ended: &[],
        },
        Step {
            delay: 60,
            backends: &[(1, true)],
            now: 3,
            draining: &[(3, 63)],
            ended: &[],
        },
        Step {
            delay: 5,
            backends: &[(1, true)],
            now: 4,
            draining: &[(3, 9)],
            ended: &[],
        },
        // The delay turned off while draining: the drain ends now.
        Step {
            delay: 0,
            backends: &[(1, true)],
            now: 5,
            draining: &[],
            ended: &[3],
        },
    ]);
}

#[test]
fn several_backends_drain_each_on_its_own_clock() {
    check(&[
        Step {
            delay: 10,
            backends: &[(1, true), (2, true), (3, true)],
            now: 0,
            draining: &[],
            ended: &[],
        },
        Step {
            delay: 10,
            backends: &[(1, true), (3, true)],
            now: 1,
            draining: &[(2, 11)],
            ended: &[],
        },
        Step {
            delay: 10,
            backends: &[(1, true)],
            now: 5,
            draining: &[(2, 11), (3, 15)],
            ended: &[],
        },
        Step {
            delay: 10,
            backends: &[(1, true)],
            now: 12,
            draining: &[(3, 15)],
            ended: &[2],
        },
        Step {
            delay: 10,
            backends: &[(1, true)],
            now: 15,
            draining: &[],
            ended: &[3],
        },
    ]);
}

#[test]
fn an_endpoint_another_load_balancer_serves_is_never_cut() {
    let two = |b_backends: &[B]| {
        let a = json!({"id": "a", "protocol": "tcp", "port": 81, "deregistration_delay": 5,
            "backends": [{"id": "x", "address": "10.0.0.9", "port": 80}]});
        let backends: Vec<Value> = b_backends
            .iter()
            .map(|&(n, _)| json!({"id": format!("y{n}"), "address": format!("10.0.0.{n}"), "port": 80}))
            .collect();
        let b = json!({"id": "b", "protocol": "tcp", "port": 82, "backends": backends});
        validate(&json!([a, b]), &ValidateOptions::default())
            .expect("valid")
            .config
    };
    let first = overlay(None, two(&[]), 0);
    // Load balancer a drops 10.0.0.9, which b starts serving.
    let mut next = two(&[(9, true)]);
    next.load_balancers[0].default_pool.backends.clear();
    let second = overlay(Some(&first), next.clone(), 1000);
    assert_eq!(second.load_balancers[0].default_pool.draining.len(), 1);
    let third = overlay(Some(&second), next, 10_000);
    assert!(third.load_balancers[0].default_pool.draining.is_empty());
    assert!(ended(&second, &third).is_empty(), "b still serves it");
}

/// The octets (with their end, in seconds) draining in the default pool.
fn draining_of(c: &Config) -> Vec<(u8, u64)> {
    c.load_balancers[0]
        .default_pool
        .draining
        .iter()
        .map(|d| (octet(&d.backend.address), d.until_ms / 1000))
        .collect()
}

/// A restart: drains saved at 100 s (b2 until 130, b3 until 110), resumed
/// at `now` on a document with `delay` and `backends`, then the first pass:
/// what drains after it, and what it ends.
fn resumed_at(now: u64, delay: u32, backends: &[B]) -> (Vec<(u8, u64)>, Vec<u8>) {
    let before = overlay(
        Some(&overlay(
            Some(&doc(30, &[(1, true), (2, true), (3, true)])),
            doc(10, &[(1, true), (2, true)]),
            100_000,
        )),
        doc(30, &[(1, true)]),
        100_000,
    );
    assert_eq!(draining_of(&before), [(3, 110), (2, 130)]);
    let saved = vpsie_lb_model::drain::saved(&before);
    let resumed = resume(doc(delay, backends), &saved, &[], now * 1000);
    let next = overlay(Some(&resumed), doc(delay, backends), now * 1000);
    let cut = ended(&resumed, &next)
        .iter()
        .map(|(_, b)| octet(&b.address))
        .collect();
    (draining_of(&next), cut)
}

#[test]
fn a_restart_resumes_the_saved_drains_and_ends_those_that_ended_meanwhile() {
    // Both still running: resumed as they were.
    assert_eq!(
        resumed_at(105, 30, &[(1, true)]),
        (vec![(3, 110), (2, 130)], vec![])
    );
    // b3's drain ended while the agent was away: ended now, to be closed.
    assert_eq!(resumed_at(115, 30, &[(1, true)]), (vec![(2, 130)], vec![3]));
    // A shorter delay now caps the resumed drain.
    assert_eq!(resumed_at(115, 5, &[(1, true)]), (vec![(2, 120)], vec![3]));
    // Delay 0 ends both at once.
    assert_eq!(resumed_at(105, 0, &[(1, true)]), (vec![], vec![3, 2]));
    // Served again: active, nothing drains and nothing is cut.
    assert_eq!(
        resumed_at(105, 30, &[(1, true), (2, true), (3, true)]),
        (vec![], vec![])
    );
}

/// A tampered drains file naming an address validation refuses (the VM
/// itself) is not resumed, so its end closes nothing there; a network the
/// operator trusts is.
#[test]
fn a_saved_drain_of_an_address_validation_refuses_is_not_resumed() {
    let saved = |ip: &str| SavedDrain {
        lb: "lb".into(),
        pool: "default".into(),
        id: "b9".into(),
        ip: ip.parse().expect("ip"),
        port: 5432,
        weight: 1,
        until_ms: 130_000,
    };
    let resumed = |ip: &str, allowed: &[IpNet]| {
        draining_of(&resume(
            doc(30, &[(1, true)]),
            &[saved(ip)],
            allowed,
            100_000,
        ))
        .len()
    };
    assert_eq!(resumed("10.0.0.9", &[]), 1);
    assert_eq!(resumed("127.0.0.1", &[]), 0);
    assert_eq!(resumed("169.254.169.254", &[]), 0);
    let loopback: IpNet = "127.0.0.0/8".parse().expect("net");
    assert_eq!(resumed("127.0.0.1", &[loopback]), 1);
}

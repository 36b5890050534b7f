//! What the kernel is told: the per-client bounds of the udp load
//! balancers Envoy serves, and the nft commands that move the agent's table
//! from one set of bounds to the next. Pure: the same bounds always give the
//! same text, so it is tested as data.
//!
//! Every name and number here comes from the validated model (ports,
//! counts, rates, seconds) or from the agent's config (the table name,
//! checked to be `[a-z_][a-z0-9_]*`): nothing a document wrote reaches the
//! script as text.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use vpsie_lb_model::{Config, Protocol};

// The default lives with the config that reads it, which must not depend
// on the guard (a module circle).
pub use crate::config::DEFAULT_UDP_TRACKED_CLIENTS as TRACKED_CLIENTS;

/// The bounds on one udp listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bound {
    /// Whose listener it is, for the metrics.
    pub lb_id: String,
    /// Sessions one client may hold at once.
    pub max_sessions: u32,
    /// New sessions per second and burst, per client.
    pub rate: Option<(u32, u32)>,
    /// Envoy's idle timeout of a session, seconds: the kernel forgets a
    /// session a second after Envoy does, never before, so a session Envoy
    /// still holds is always counted.
    pub idle: u32,
}

/// What to hold while Envoy is handed `candidate` and still serves
/// `served`: per port, the stricter of the two, so a pass that ends before
/// Envoy confirms never leaves a served listener looser than it is.
pub fn ahead(
    served: &BTreeMap<u16, Bound>,
    candidate: &BTreeMap<u16, Bound>,
) -> BTreeMap<u16, Bound> {
    let mut out = served.clone();
    for (&port, new) in candidate {
        let merged = match served.get(&port) {
            None => new.clone(),
            Some(old) => Bound {
                lb_id: new.lb_id.clone(),
                max_sessions: old.max_sessions.min(new.max_sessions),
                rate: match (old.rate, new.rate) {
                    (Some((r1, b1)), Some((r2, b2))) => Some((r1.min(r2), b1.min(b2))),
                    (one, other) => one.or(other),
                },
                // The kernel must not forget a session before Envoy does.
                idle: old.idle.max(new.idle),
            },
        };
        out.insert(port, merged);
    }
    out
}

/// The bounds of every udp load balancer in `config`, by port.
pub fn bounds(config: &Config) -> BTreeMap<u16, Bound> {
    config
        .load_balancers
        .iter()
        .filter(|lb| lb.protocol == Protocol::Udp)
        .filter_map(|lb| {
            let p = lb.per_client?;
            Some((
                lb.port,
                Bound {
                    lb_id: lb.id.clone(),
                    max_sessions: p.max_sessions,
                    rate: p.new_sessions.map(|r| (r.per_second, r.burst)),
                    idle: lb
                        .timeouts
                        .idle
                        .unwrap_or(vpsie_lb_model::limits::DEFAULT_UDP_IDLE_TIMEOUT),
                },
            ))
        })
        .collect()
}

/// The nft script that takes table `table` from `before` (`None`: unknown,
/// so whatever is there goes) to `after`, in one transaction.
///
/// The per-client sets are kept across changes: replacing them would
/// forget which sessions each client holds, and every change of any load
/// balancer would hand every client a fresh allowance. A set is emptied
/// only when its own limit changes, since its elements keep the limit they
/// were made with.
pub fn script(
    table: &str,
    tracked: u32,
    before: Option<&BTreeMap<u16, Bound>>,
    after: &BTreeMap<u16, Bound>,
) -> String {
    let mut s = String::new();
    let empty = BTreeMap::new();
    let before = match before {
        Some(b) => b,
        None => {
            // `add` first, so deleting never fails on a table that is not there.
            let _ = writeln!(s, "add table inet {table}");
            let _ = writeln!(s, "delete table inet {table}");
            &empty
        }
    };
    if after.is_empty() {
        if !before.is_empty() {
            let _ = writeln!(s, "delete table inet {table}");
        }
        return s;
    }
    let _ = writeln!(s, "add table inet {table}");
    // Before Envoy's socket, after conntrack (priority -200) found the flow.
    let _ = writeln!(
        s,
        "add chain inet {table} input {{ type filter hook input priority filter - 10 ; policy accept ; }}"
    );
    let _ = writeln!(s, "flush chain inet {table} input");
    for (&port, bound) in after {
        objects(&mut s, table, tracked, port, bound, before.get(&port));
    }
    for (&port, bound) in after {
        rules(&mut s, table, port, bound);
    }
    retire(&mut s, table, before, after);
    s
}

/// The sets, counters and timeout policy listener `port` needs.
fn objects(
    s: &mut String,
    table: &str,
    tracked: u32,
    port: u16,
    bound: &Bound,
    before: Option<&Bound>,
) {
    for (family, kind) in [("4", "ipv4_addr"), ("6", "ipv6_addr")] {
        let _ = writeln!(
            s,
            "add set inet {table} c{family}_{port} {{ type {kind} ; size {tracked} ; flags dynamic ; }}"
        );
        if before.is_some_and(|b| b.max_sessions != bound.max_sessions) {
            let _ = writeln!(s, "flush set inet {table} c{family}_{port}");
        }
        if let Some(rate) = bound.rate {
            let _ = writeln!(
                s,
                "add set inet {table} r{family}_{port} {{ type {kind} ; size {tracked} ; flags dynamic,timeout ; timeout {}s ; }}",
                bucket_memory(rate)
            );
            if before.is_some_and(|b| b.rate.is_some() && b.rate != bound.rate) {
                let _ = writeln!(s, "flush set inet {table} r{family}_{port}");
            }
        }
    }
    let _ = writeln!(s, "add counter inet {table} sessions_{port}");
    if bound.rate.is_some() {
        let _ = writeln!(s, "add counter inet {table} rate_{port}");
    }
    // Both states: the kernel refreshes a flow with the unreplied timeout
    // for its first two seconds even after an answer, so a shorter one
    // would forget a quiet request/response session Envoy still holds.
    let idle = bound.idle + 1;
    let _ = writeln!(
        s,
        "add ct timeout inet {table} idle_{idle} {{ protocol udp ; l3proto inet ; policy = {{ unreplied : {idle}, replied : {idle} }} ; }}"
    );
}

/// How long a client's rate bucket is remembered, seconds: at least until
/// it has refilled, so forgetting it never hands out a fuller one.
fn bucket_memory((per_second, burst): (u32, u32)) -> u32 {
    (burst.div_ceil(per_second.max(1)) + 1).max(60)
}

/// Listener `port`'s rules: its sessions live as long as Envoy's, then a
/// new one is refused past the client's rate, then past its count. IPv6
/// clients count per /64. A client a full set could not take is refused
/// too: nft's `add` then fails, its rule does not match, and the packet
/// would pass unbounded.
fn rules(s: &mut String, table: &str, port: u16, bound: &Bound) {
    let new = format!("add rule inet {table} input udp dport {port} ct state new");
    let _ = writeln!(s, "{new} ct timeout set \"idle_{}\"", bound.idle + 1);
    let sources = [
        ("4", "ip saddr"),
        ("6", "ip6 saddr and ffff:ffff:ffff:ffff::"),
    ];
    if let Some((per_second, burst)) = bound.rate {
        for (family, key) in sources {
            let _ = writeln!(
                s,
                "{new} add @r{family}_{port} {{ {key} limit rate over {per_second}/second burst {burst} packets }} counter name \"rate_{port}\" drop"
            );
        }
        for (family, key) in sources {
            let _ = writeln!(
                s,
                "{new} {key} != @r{family}_{port} counter name \"rate_{port}\" drop"
            );
        }
    }
    for (family, key) in sources {
        let _ = writeln!(
            s,
            "{new} add @c{family}_{port} {{ {key} ct count over {} }} counter name \"sessions_{port}\" drop",
            bound.max_sessions
        );
    }
    for (family, key) in sources {
        let _ = writeln!(
            s,
            "{new} {key} != @c{family}_{port} counter name \"sessions_{port}\" drop"
        );
    }
}

/// Deletes what no listener uses any more; the chain was flushed above, so
/// nothing refers to it.
fn retire(
    s: &mut String,
    table: &str,
    before: &BTreeMap<u16, Bound>,
    after: &BTreeMap<u16, Bound>,
) {
    for (&port, old) in before {
        let new = after.get(&port);
        if new.is_none() {
            for family in ["4", "6"] {
                let _ = writeln!(s, "delete set inet {table} c{family}_{port}");
            }
            let _ = writeln!(s, "delete counter inet {table} sessions_{port}");
        }
        if old.rate.is_some() && new.is_none_or(|n| n.rate.is_none()) {
            for family in ["4", "6"] {
                let _ = writeln!(s, "delete set inet {table} r{family}_{port}");
            }
            let _ = writeln!(s, "delete counter inet {table} rate_{port}");
        }
    }
    let idle = |m: &BTreeMap<u16, Bound>| m.values().map(|b| b.idle + 1).collect::<BTreeSet<_>>();
    for gone in idle(before).difference(&idle(after)) {
        let _ = writeln!(s, "delete ct timeout inet {table} idle_{gone}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bound(max_sessions: u32, rate: Option<(u32, u32)>, idle: u32) -> Bound {
        Bound {
            lb_id: "dns".into(),
            max_sessions,
            rate,
            idle,
        }
    }

    fn lines(s: &str) -> Vec<&str> {
        s.lines().collect()
    }

    /// Whether `script` has a line containing each of `want`, and none
    /// containing any of `never`.
    fn check(script: &str, want: &[&str], never: &[&str]) {
        for w in want {
            assert!(
                script.lines().any(|l| l.contains(w)),
                "no line with {w:?} in:\n{script}"
            );
        }
        for n in never {
            assert!(
                !script.lines().any(|l| l.contains(n)),
                "a line with {n:?} in:\n{script}"
            );
        }
    }

    #[test]
    fn a_first_script_replaces_whatever_table_was_there() {
        let after = BTreeMap::from([(53, bound(25, None, 60))]);
        let s = script("vpsie_lb", 65_536, None, &after);
        assert_eq!(
            lines(&s)[..3],
            [
                "add table inet vpsie_lb",
                "delete table inet vpsie_lb",
                "add table inet vpsie_lb"
            ]
        );
        check(
            &s,
            &[
                "add set inet vpsie_lb c4_53 { type ipv4_addr ; size 65536 ; flags dynamic ; }",
                "add set inet vpsie_lb c6_53 { type ipv6_addr",
                "policy = { unreplied : 61, replied : 61 }",
                "udp dport 53 ct state new ct timeout set \"idle_61\"",
                "udp dport 53 ct state new add @c4_53 { ip saddr ct count over 25 } counter name \"sessions_53\" drop",
                "add @c6_53 { ip6 saddr and ffff:ffff:ffff:ffff:: ct count over 25 }",
                "udp dport 53 ct state new ip saddr != @c4_53 counter name \"sessions_53\" drop",
                "udp dport 53 ct state new ip6 saddr and ffff:ffff:ffff:ffff:: != @c6_53 counter name",
            ],
            &["limit rate", "flush set"],
        );
    }

    #[test]
    fn nothing_to_bound_removes_the_table() {
        let before = BTreeMap::from([(53, bound(25, None, 60))]);
        assert_eq!(
            script("t", 65_536, Some(&before), &BTreeMap::new()),
            "delete table inet t\n"
        );
        assert_eq!(
            script("t", 65_536, Some(&BTreeMap::new()), &BTreeMap::new()),
            ""
        );
        assert_eq!(
            script("t", 65_536, None, &BTreeMap::new()),
            "add table inet t\ndelete table inet t\n"
        );
    }

    #[test]
    fn another_listener_changing_keeps_each_clients_count() {
        let before = BTreeMap::from([(53, bound(25, Some((10, 20)), 60))]);
        let mut after = before.clone();
        after.insert(123, bound(5, None, 30));
        check(
            &script("t", 65_536, Some(&before), &after),
            &["add set inet t c4_123", "idle_31", "over 5"],
            &["flush set", "delete"],
        );
    }

    #[test]
    fn a_changed_limit_restarts_only_its_own_count() {
        let before = BTreeMap::from([
            (53, bound(25, Some((10, 20)), 60)),
            (123, bound(5, None, 60)),
        ]);
        let mut after = before.clone();
        after.get_mut(&53).expect("53").max_sessions = 30;
        check(
            &script("t", 65_536, Some(&before), &after),
            &[
                "flush set inet t c4_53",
                "flush set inet t c6_53",
                "over 30",
            ],
            &["flush set inet t c4_123", "flush set inet t r4_53"],
        );
        let mut faster = before.clone();
        faster.get_mut(&53).expect("53").rate = Some((20, 20));
        check(
            &script("t", 65_536, Some(&before), &faster),
            &[
                "flush set inet t r4_53",
                "limit rate over 20/second burst 20 packets",
            ],
            &["flush set inet t c4_53"],
        );
    }

    #[test]
    fn what_no_listener_uses_is_deleted() {
        let before = BTreeMap::from([
            (53, bound(25, Some((10, 20)), 60)),
            (123, bound(5, None, 30)),
        ]);
        let after = BTreeMap::from([(53, bound(25, None, 60))]);
        check(
            &script("t", 65_536, Some(&before), &after),
            &[
                "delete set inet t c4_123",
                "delete set inet t c6_123",
                "delete counter inet t sessions_123",
                "delete set inet t r4_53",
                "delete counter inet t rate_53",
                "delete ct timeout inet t idle_31",
            ],
            &[
                "delete set inet t c4_53",
                "delete ct timeout inet t idle_61",
            ],
        );
    }

    #[test]
    fn regression_a_full_client_set_let_new_clients_through_unbounded() {
        let after = BTreeMap::from([(53, bound(25, Some((10, 20)), 60))]);
        let s = script("t", 2, None, &after);
        check(
            &s,
            &[
                "add set inet t c4_53 { type ipv4_addr ; size 2 ;",
                "add set inet t r6_53 { type ipv6_addr ; size 2 ;",
                "ip saddr != @r4_53 counter name \"rate_53\" drop",
                "ip6 saddr and ffff:ffff:ffff:ffff:: != @r6_53 counter name \"rate_53\" drop",
                "ip saddr != @c4_53 counter name \"sessions_53\" drop",
            ],
            &[],
        );
        // Each "not tracked" refusal comes after the rule that adds.
        let at = |needle: &str| s.find(needle).expect(needle);
        assert!(at("add @c4_53") < at("!= @c4_53"));
        assert!(at("add @r4_53") < at("!= @r4_53"));
    }

    #[test]
    fn regression_bounds_set_ahead_could_loosen_a_served_listener() {
        let served = BTreeMap::from([
            (53, bound(10, Some((5, 10)), 60)),
            (123, bound(5, None, 30)),
        ]);
        let candidate = BTreeMap::from([
            (53, bound(100, Some((50, 5)), 30)),
            (5353, bound(7, None, 20)),
        ]);
        let got = ahead(&served, &candidate);
        // The stricter of each, the longer memory, and both sides' ports.
        assert_eq!(got[&53], bound(10, Some((5, 5)), 60));
        assert_eq!(got[&123], served[&123]);
        assert_eq!(got[&5353], candidate[&5353]);
        let unrated = BTreeMap::from([(53, bound(10, None, 60))]);
        assert_eq!(ahead(&unrated, &candidate)[&53].rate, Some((50, 5)));
    }

    #[test]
    fn a_slow_bucket_is_remembered_until_it_refills() {
        assert_eq!(bucket_memory((10, 20)), 60);
        assert_eq!(bucket_memory((1, 600)), 601);
    }
}

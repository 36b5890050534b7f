//! The `ha` keys: defaults, and each bad value named with its reason.

use super::Config;
use super::ha::*;
use std::path::PathBuf;
use std::time::Duration;

const PAIR: &str = "mode: active_passive\n  priority: 100\n  interface: eth0\n  virtual_ips: [192.0.2.10/24]\n  peers: [10.0.0.2]\n  source_address: 10.0.0.1\n";

fn load(ha: &str) -> Result<Ha, Vec<String>> {
    let text = format!("source: file\nfile: /x\nstate_dir: /var/lib/x\nha:\n  {ha}");
    Config::parse(&text, "agent.yaml")
        .map(|c| c.ha.expect("ha"))
        .map_err(|e| e.problems)
}

/// `ha` lines replacing `PAIR`'s keys of the same name.
fn with(extra: &str) -> String {
    let mut lines: Vec<String> = PAIR.split("\n  ").map(str::to_owned).collect();
    for e in extra.split('\n').filter(|l| !l.is_empty()) {
        let key = e.split(':').next().unwrap_or_default();
        lines.retain(|l| !l.starts_with(&format!("{key}:")));
        lines.push(e.to_owned());
    }
    lines.join("\n  ")
}

#[test]
fn a_minimal_pair_gets_the_documented_defaults() {
    let ha = load(PAIR).expect("valid");
    assert_eq!(ha.mode, HaMode::ActivePassive);
    assert_eq!(ha.advert_interval, Duration::from_millis(200));
    assert_eq!((ha.virtual_router_id, ha.check_interval_secs), (51, 1));
    assert_eq!((ha.check_fall, ha.check_rise), (2, 2));
    assert_eq!(ha.script_user, "vpsie-lb");
    assert_eq!(ha.agent_path, PathBuf::from("/usr/bin/vpsie-lb-agent"));
    assert_eq!(ha.status_dir, PathBuf::from("/var/lib/x/ha"));
    assert_eq!(ha.notify_command, None);
    assert_eq!(ha.notify_timeout, Duration::from_secs(30));
}

#[test]
fn notify_command_is_words_never_a_shell_line() {
    let ha = load(&with(
        "notify_command: /usr/local/bin/move-ip --ip 192.0.2.10",
    ))
    .expect("string");
    assert_eq!(
        ha.notify_command.expect("set"),
        ["/usr/local/bin/move-ip", "--ip", "192.0.2.10"]
    );
    let ha = load(&with("notify_command: [/usr/local/bin/move-ip, 'a b']")).expect("list");
    assert_eq!(
        ha.notify_command.expect("set"),
        ["/usr/local/bin/move-ip", "a b"]
    );
}

#[test]
fn each_bad_value_is_named_with_its_reason() {
    let check = |extra: &str, want: &str| {
        let errs = load(&with(extra)).expect_err(extra);
        assert!(
            errs.iter().any(|e| e.contains(want)),
            "{extra:?}: wanted {want:?} in {errs:?}"
        );
    };
    for (extra, want) in [
        (
            "mode: active_standby",
            "ha.mode: must be active_passive or active_active",
        ),
        ("priority: 255", "ha.priority: must be 1..=254 (got 255)"),
        ("priority: 0", "ha.priority: must be 1..=254 (got 0)"),
        ("interface: ''", "ha.interface: is required"),
        (
            "interface: averyveryverylongname",
            "ha.interface: \"averyveryverylongname\" is not an interface name",
        ),
        ("virtual_ips: []", "ha.virtual_ips: at least one address"),
        (
            "virtual_ips: [192.0.2.10]",
            "ha.virtual_ips[0]: \"192.0.2.10\" needs its prefix length",
        ),
        (
            "virtual_ips: [192.0.2.10/24, 192.0.2.10/32]",
            "ha.virtual_ips[1]: 192.0.2.10 is listed twice",
        ),
        (
            "virtual_ips: [10.0.0.1/24]",
            "ha.virtual_ips[0]: 10.0.0.1 is a node's own address",
        ),
        (
            "virtual_ips: ['2001:db8::10/64']",
            "ha.virtual_ips[0]: 2001:db8::10 and source_address 10.0.0.1 must be of one family",
        ),
        (
            "peers: []",
            "ha.peers: at least one peer address is required (unicast",
        ),
        (
            "peers: [10.0.0.1]",
            "ha.peers: 10.0.0.1 is this node's own source_address",
        ),
        ("peers: [nope]", "ha.peers[0]: \"nope\""),
        (
            "source_address: x",
            "ha.source_address: invalid IP address syntax",
        ),
        (
            "advert_interval: 5ms",
            "ha.advert_interval: 5ms: must be 10ms..=40950ms in steps of 10ms",
        ),
        (
            "advert_interval: 41s",
            "ha.advert_interval: 41000ms: must be 10ms..=40950ms",
        ),
        (
            "virtual_router_id: 0",
            "ha.virtual_router_id: must be 1..=255 (got 0)",
        ),
        (
            "check_interval: 500ms",
            "ha.check_interval: must be whole seconds from 1s to 1h",
        ),
        ("check_fall: 0", "ha.check_fall: must be 1..=100 (got 0)"),
        (
            "preempt_delay: 5s",
            "ha.preempt_delay: applies to active_active only",
        ),
        (
            "primary_ip: 192.0.2.10",
            "ha.primary_ip: applies to active_active only",
        ),
        (
            "notify_command: relative/hook",
            "ha.notify_command: \"relative/hook\" must be an absolute path",
        ),
        ("notify_command: []", "ha.notify_command: is empty"),
        (
            "notify_timeout: 0s",
            "ha.notify_timeout: must be more than 0s",
        ),
        (
            "script_user: root",
            "ha.script_user: \"root\" must be an unprivileged user",
        ),
        (
            "agent_path: /opt/my agent",
            "ha.agent_path: \"/opt/my agent\" has a space",
        ),
        (
            "status_dir: relative",
            "ha.status_dir: relative must be an absolute path",
        ),
        ("bogus: 1", "ha.bogus: unknown field"),
    ] {
        check(extra, want);
    }
}

#[test]
fn active_active_takes_two_addresses_and_this_nodes_own() {
    let aa = "mode: active_active\nvirtual_ips: [192.0.2.10/24, 192.0.2.20/24]\nprimary_ip: 192.0.2.20\nvirtual_router_id: 60";
    let ha = load(&with(aa)).expect("valid");
    assert_eq!(ha.primary_ip, Some("192.0.2.20".parse().expect("ip")));
    assert_eq!(ha.preempt_delay_secs, 10);
    for (extra, want) in [
        (
            "mode: active_active\nvirtual_ips: [192.0.2.10/24]\nprimary_ip: 192.0.2.10",
            "exactly two addresses, one per node (got 1)",
        ),
        (
            "mode: active_active\nvirtual_ips: [192.0.2.10/24, 192.0.2.20/24]",
            "ha.primary_ip: is required with active_active",
        ),
        (
            "mode: active_active\nvirtual_ips: [192.0.2.10/24, 192.0.2.20/24]\nprimary_ip: 192.0.2.30",
            "ha.primary_ip: 192.0.2.30 is not one of virtual_ips",
        ),
        (
            "mode: active_active\nvirtual_ips: [192.0.2.10/24, 192.0.2.20/24]\nprimary_ip: 192.0.2.10\nvirtual_router_id: 255",
            "ha.virtual_router_id: must be 1..=254 (got 255)",
        ),
    ] {
        let errs = load(&with(extra)).expect_err(extra);
        assert!(
            errs.iter().any(|e| e.contains(want)),
            "{extra:?}: wanted {want:?} in {errs:?}"
        );
    }
}

#[test]
fn a_pair_listens_on_the_wildcard_so_addresses_move_without_envoy() {
    let text =
        format!("source: file\nfile: /x\nenvoy: {{listen_address: 192.0.2.10}}\nha:\n  {PAIR}");
    let errs = Config::parse(&text, "agent.yaml")
        .expect_err("bound")
        .problems;
    assert!(
        errs[0].starts_with("envoy.listen_address: 192.0.2.10 must be 0.0.0.0 or :: in an ha pair"),
        "{errs:?}"
    );
}

//! `keepalived.conf` from the `ha` section: pure, so the same agent config
//! always gives the same bytes and a table test pins every line that
//! matters.

use std::fmt::Write as _;
use std::path::Path;

use crate::config::{Ha, HaMode};

/// The track script's name in keepalived's config.
pub const CHECK_SCRIPT: &str = "vpsie_lb_ready";

/// One VRRP instance: its name, router id, priority and addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    /// `vpsie_lb_1`, `vpsie_lb_2`.
    pub name: String,
    /// VRRP router id.
    pub vrid: u8,
    /// This node's priority in it.
    pub priority: u8,
    /// The addresses it moves, `addr/prefix`.
    pub addresses: Vec<String>,
    /// Whether a higher priority takes the address back (active-active).
    pub preempt: bool,
}

/// The instances `ha` asks for. Active-passive: one, holding every address,
/// never preempting. Active-active: one per address; this node has its
/// priority in the instance of `primary_ip` and half of it in the other,
/// so each node is master of one address while both are up.
pub fn instances(ha: &Ha) -> Vec<Instance> {
    match ha.mode {
        HaMode::ActivePassive => vec![Instance {
            name: "vpsie_lb_1".into(),
            vrid: ha.virtual_router_id,
            priority: ha.priority,
            addresses: ha.virtual_ips.iter().map(ToString::to_string).collect(),
            preempt: false,
        }],
        HaMode::ActiveActive => ha
            .virtual_ips
            .iter()
            .enumerate()
            .map(|(i, vip)| Instance {
                name: format!("vpsie_lb_{}", i + 1),
                vrid: ha.virtual_router_id + i as u8,
                priority: if Some(vip.addr()) == ha.primary_ip {
                    ha.priority
                } else {
                    (ha.priority / 2).max(1)
                },
                addresses: vec![vip.to_string()],
                preempt: true,
            })
            .collect(),
    }
}

/// keepalived's config for this node. `config_path` is the agent config
/// `ha check` and `ha notify` are run with; it must be absolute.
pub fn render(ha: &Ha, config_path: &Path) -> String {
    let agent = format!(
        "{} ha {{}} --config {}",
        ha.agent_path.display(),
        config_path.display()
    );
    let run = |what: &str| agent.replacen("{}", what, 1);
    let mut out = String::new();
    let w = &mut out;
    // Writing to a String cannot fail.
    let _ = writeln!(
        w,
        "# Rendered by `vpsie-lb-agent ha render` from {}.\n# Edit that file and render again; changes made here are lost.",
        config_path.display()
    );
    let _ = writeln!(w, "global_defs {{");
    let _ = writeln!(w, "    vrrp_version 3");
    let _ = writeln!(w, "    enable_script_security");
    let _ = writeln!(w, "    script_user {}", ha.script_user);
    // Adverts must leave on time while Envoy keeps both cores busy: a late
    // advert is a failover nobody asked for.
    let _ = writeln!(w, "    vrrp_rt_priority 50");
    let _ = writeln!(w, "    vrrp_no_swap");
    let _ = writeln!(w, "}}\n");
    let _ = writeln!(w, "vrrp_script {CHECK_SCRIPT} {{");
    let _ = writeln!(w, "    script \"{}\"", run("check"));
    let _ = writeln!(w, "    interval {}", ha.check_interval_secs);
    let _ = writeln!(w, "    timeout {}", ha.check_interval_secs);
    let _ = writeln!(w, "    fall {}", ha.check_fall);
    let _ = writeln!(w, "    rise {}", ha.check_rise);
    // Until the first check passes, the node does not claim the address.
    let _ = writeln!(w, "    init_fail");
    let _ = writeln!(w, "}}");
    for i in instances(ha) {
        instance(w, ha, &i, &run);
    }
    out
}

fn instance(w: &mut String, ha: &Ha, i: &Instance, run: &dyn Fn(&str) -> String) {
    let _ = writeln!(w, "\nvrrp_instance {} {{", i.name);
    // Both nodes start as BACKUP: `nopreempt` and `preempt_delay` need it,
    // and a node that boots never grabs an address another node holds.
    let _ = writeln!(w, "    state BACKUP");
    let _ = writeln!(w, "    interface {}", ha.interface);
    let _ = writeln!(w, "    virtual_router_id {}", i.vrid);
    let _ = writeln!(w, "    priority {}", i.priority);
    let _ = writeln!(
        w,
        "    advert_int {}",
        seconds(ha.advert_interval.as_millis())
    );
    if i.preempt {
        let _ = writeln!(w, "    preempt_delay {}", ha.preempt_delay_secs);
    } else {
        let _ = writeln!(w, "    nopreempt");
    }
    let _ = writeln!(w, "    unicast_src_ip {}", ha.source_address);
    let _ = writeln!(w, "    unicast_peer {{");
    for peer in &ha.peers {
        let _ = writeln!(w, "        {peer}");
    }
    let _ = writeln!(w, "    }}");
    // Adverts from anyone but a listed peer are ignored.
    let _ = writeln!(w, "    check_unicast_src");
    let _ = writeln!(w, "    virtual_ipaddress {{");
    for a in &i.addresses {
        let _ = writeln!(w, "        {a} dev {}", ha.interface);
    }
    let _ = writeln!(w, "    }}");
    let _ = writeln!(w, "    track_script {{\n        {CHECK_SCRIPT}\n    }}");
    for state in ["master", "backup", "fault", "stop"] {
        let _ = writeln!(
            w,
            "    notify_{state} \"{} --instance {} {state}\"",
            run("notify"),
            i.name
        );
    }
    let _ = writeln!(w, "}}");
}

/// Milliseconds as keepalived's decimal seconds (`0.1`, `1`, `2.25`).
fn seconds(ms: u128) -> String {
    let (s, frac) = (ms / 1000, ms % 1000);
    if frac == 0 {
        return s.to_string();
    }
    format!("{s}.{frac:03}").trim_end_matches('0').to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_are_keepalived_decimals() {
        for (ms, want) in [
            (100, "0.1"),
            (1000, "1"),
            (2250, "2.25"),
            (10, "0.01"),
            (40950, "40.95"),
        ] {
            assert_eq!(seconds(ms), want);
        }
    }
}

//! High availability with keepalived. The records, the keepalived config
//! and the notify hook live in `vpsie-lb-ha`, re-exported here; the agent
//! adds the `ha` commands and `ha check`, which reads Envoy's admin and
//! this node's confirmed state.

use std::path::Path;
use std::time::Duration;

use crate::envoy_admin::EnvoyAdmin;

pub use vpsie_lb_ha::*;

pub mod cli;

/// What `ha check` concluded: this node may hold the virtual IPs, and
/// serves the confirmed config `version`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fit {
    /// The confirmed config Envoy serves.
    pub version: String,
    /// Its listeners, all active in Envoy.
    pub listeners: usize,
}

/// The whole check, given up after this: keepalived kills a script that
/// outlives its `timeout` (at least a second), and a kill reads as a failure
/// without a reason.
pub const CHECK_DEADLINE: Duration = Duration::from_millis(800);

/// Whether this node may hold the virtual IPs: Envoy says it is ready, and
/// it has every listener of the config confirmed last on this node, which
/// has at least one. Reads Envoy's admin and the state directory only,
/// never the agent, so an agent that is down while Envoy serves does not
/// move an address.
pub fn check(admin: &EnvoyAdmin, state_dir: &Path) -> Result<Fit, String> {
    let admin = admin.clone().with_timeout(CHECK_DEADLINE / 2);
    let ready = admin
        .get("/ready")
        .map_err(|e| format!("envoy is not ready: {e}"))?;
    if ready.trim() != "LIVE" {
        return Err(format!("envoy is not ready: it says {:?}", ready.trim()));
    }
    let confirmed = crate::state::confirmed(state_dir)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| {
            format!(
                "no config was ever confirmed on this node (nothing in {})",
                state_dir.display()
            )
        })?;
    if confirmed.listeners.is_empty() {
        // Holding the address would answer every client with a refusal;
        // the peer may serve something.
        return Err(format!(
            "the config confirmed on this node (version {}) has no listeners",
            confirmed.version
        ));
    }
    let active = admin
        .active_listeners()
        .map_err(|e| format!("envoy's listeners: {e}"))?;
    let missing: Vec<&String> = confirmed
        .listeners
        .iter()
        .filter(|l| !active.contains(*l))
        .collect();
    if !missing.is_empty() {
        let shown: Vec<&str> = missing.iter().take(5).map(|s| s.as_str()).collect();
        return Err(format!(
            "envoy lacks {} of the {} confirmed listeners ({}{}) of version {}",
            missing.len(),
            confirmed.listeners.len(),
            shown.join(", "),
            if missing.len() > 5 { ", ..." } else { "" },
            confirmed.version
        ));
    }
    Ok(Fit {
        version: confirmed.version,
        listeners: confirmed.listeners.len(),
    })
}

#[cfg(test)]
mod render_tests {
    use super::*;
    use crate::config::Config;

    fn ha(extra: &str) -> Ha {
        let text = format!(
            "source: file\nfile: /x\nha:\n  priority: 150\n  interface: eth1\n  virtual_ips: [192.0.2.10/24, 192.0.2.11/24]\n  peers: [10.0.0.2]\n  source_address: 10.0.0.1\n  advert_interval: 100ms\n{extra}"
        );
        Config::parse(&text, "agent.yaml")
            .expect("valid")
            .ha
            .expect("ha")
    }

    #[test]
    fn active_passive_is_one_instance_that_never_takes_an_address_back() {
        let conf = render(
            &ha("  mode: active_passive\n"),
            Path::new("/etc/vpsie-lb/agent.yaml"),
        );
        for want in [
            "    vrrp_version 3\n",
            "    enable_script_security\n    script_user vpsie-lb\n",
            "    script \"/usr/bin/vpsie-lb-agent ha check --config /etc/vpsie-lb/agent.yaml\"\n    interval 1\n    timeout 1\n    fall 2\n    rise 2\n    init_fail\n",
            "vrrp_instance vpsie_lb_1 {\n    state BACKUP\n    interface eth1\n    virtual_router_id 51\n    priority 150\n    advert_int 0.1\n    nopreempt\n",
            "    unicast_src_ip 10.0.0.1\n    unicast_peer {\n        10.0.0.2\n    }\n    check_unicast_src\n",
            "        192.0.2.10/24 dev eth1\n        192.0.2.11/24 dev eth1\n",
            "    track_script {\n        vpsie_lb_ready\n    }\n",
            "    notify_master \"/usr/bin/vpsie-lb-agent ha notify --config /etc/vpsie-lb/agent.yaml --instance vpsie_lb_1 master\"\n",
            "    notify_stop \"/usr/bin/vpsie-lb-agent ha notify --config /etc/vpsie-lb/agent.yaml --instance vpsie_lb_1 stop\"\n",
        ] {
            assert!(conf.contains(want), "missing {want:?} in:\n{conf}");
        }
        assert_eq!(conf.matches("vrrp_instance").count(), 1);
        assert!(!conf.contains("preempt_delay"));
    }

    #[test]
    fn active_active_gives_each_node_one_address_at_its_priority_and_half_for_the_other() {
        let aa = ha(
            "  mode: active_active\n  primary_ip: 192.0.2.11\n  virtual_router_id: 60\n  preempt_delay: 5s\n",
        );
        let names: Vec<(String, u8, u8, bool)> = instances(&aa)
            .into_iter()
            .map(|i| (i.addresses.join(" "), i.vrid, i.priority, i.preempt))
            .collect();
        assert_eq!(
            names,
            [
                ("192.0.2.10/24".to_owned(), 60, 75, true),
                ("192.0.2.11/24".to_owned(), 61, 150, true)
            ]
        );
        let conf = render(&aa, Path::new("/etc/vpsie-lb/agent.yaml"));
        assert_eq!(conf.matches("    preempt_delay 5\n").count(), 2);
        assert!(!conf.contains("nopreempt"));
    }
}

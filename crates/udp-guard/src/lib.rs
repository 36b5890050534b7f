//! Per-client bounds on udp load balancers, kept by the kernel.
//!
//! Envoy's UDP proxy counts sessions for a listener, never per client: one
//! client with a hundred source ports took every session of a listener
//! with `max_connections: 100`. The agent owns an nftables table (`inet
//! vpsie_lb` by default) whose rules refuse a client's new session past
//! its `per_client` count or rate, counted by conntrack. The table follows
//! what Envoy serves (called from the reconcile pass's settle), changes in
//! one `nft -f` transaction, and is removed when nothing is bounded.
//!
//! What it cannot do: a spoofed source is a new client each time, so a
//! spoofing flood still fills the listener's `max_connections` (and past
//! the tracked clients, [`rules::TRACKED_CLIENTS`] by default, holds new
//! clients off until tracked ones' sessions end). Envoy's own limit stays
//! the bound on the whole listener.

pub mod config;
pub mod rules;

use std::collections::BTreeMap;
use std::io::Write as _;
use std::process::{Command, Stdio};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use rules::Bound;

pub use config::DEFAULT_UDP_GUARD_TABLE as DEFAULT_TABLE;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefusedLabels {
    lb_id: String,
    /// `sessions` (over the count) or `rate` (too many new at once).
    limit: &'static str,
}

/// The guard's metrics.
#[derive(Clone, Default)]
pub struct UdpGuardMetrics {
    refused: Family<RefusedLabels, Counter>,
    in_force: Gauge,
}

impl UdpGuardMetrics {
    /// Registers the guard's families in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register(
            "udp_sessions_refused",
            "New udp sessions the kernel refused because their client was over its per_client bound",
            m.refused.clone(),
        );
        registry.register(
            "udp_guard_in_force",
            "1 when the kernel enforces the per_client bounds of every udp load balancer Envoy serves, else 0",
            m.in_force.clone(),
        );
        m
    }
}

/// The agent's nftables table and what it was last made to hold.
pub struct UdpGuard {
    table: String,
    /// Each set's size: clients tracked per listener and family.
    tracked: u32,
    /// What the table holds; `None` until the agent has written it once
    /// (a table left by an earlier run is then replaced whole).
    applied: Option<BTreeMap<u16, Bound>>,
    /// The counters' last readings, so a table rebuilt from zero does not
    /// make the exported counters go back.
    seen: BTreeMap<String, u64>,
    /// The last failure reported, so it is logged once, not every pass.
    failing: Option<String>,
    metrics: UdpGuardMetrics,
}

impl UdpGuard {
    /// A guard over the table `config` names.
    pub fn new(config: config::UdpGuardConfig, metrics: UdpGuardMetrics) -> Self {
        UdpGuard {
            table: config.table,
            tracked: config.tracked_clients,
            applied: None,
            seen: BTreeMap::new(),
            failing: None,
            metrics,
        }
    }

    /// Makes the kernel hold `want` (from [`rules::bounds`]); `Err` once
    /// per distinct failure, `Ok` while it repeats.
    pub fn sync(&mut self, want: BTreeMap<u16, Bound>) -> Result<(), String> {
        let result = self.apply(&want);
        self.metrics
            .in_force
            .set(i64::from(result.is_ok() || want.is_empty()));
        match result {
            Ok(()) => {
                self.failing = None;
                Ok(())
            }
            Err(e) if self.failing.as_ref() == Some(&e) => Ok(()),
            Err(e) => {
                self.failing = Some(e.clone());
                Err(e)
            }
        }
    }

    fn apply(&mut self, want: &BTreeMap<u16, Bound>) -> Result<(), String> {
        if self.applied.as_ref() == Some(want) {
            return Ok(());
        }
        let script = rules::script(&self.table, self.tracked, self.applied.as_ref(), want);
        if want.is_empty() && self.applied.is_none() {
            // Nothing to bound, and nothing of ours known to be there: clear
            // what an earlier run may have left, but a VM without nft (or
            // without the table) must not fail every pass over nothing.
            let _ = nft(&["-f", "-"], Some(&script));
        } else {
            // One transaction: a failed script leaves the kernel holding
            // `applied`, which the next try diffs against.
            nft(&["-f", "-"], Some(&script))?;
        }
        self.applied = Some(want.clone());
        Ok(())
    }

    /// Adds what the kernel refused since the last reading to the metrics.
    pub fn count_refused(&mut self) {
        let Some(bounds) = self.applied.as_ref().filter(|b| !b.is_empty()) else {
            return;
        };
        let Ok(listing) = nft(
            &["-j", "list", "counters", "table", "inet", &self.table],
            None,
        ) else {
            // Gone (`systemctl restart nftables` flushes every rule set)?
            // Then the next sync rebuilds it whole; a listing that merely
            // failed changes nothing, since a rebuild resets every count.
            if nft(&["list", "table", "inet", &self.table], None).is_err() {
                self.applied = None;
                self.metrics.in_force.set(0);
            }
            return;
        };
        for (name, packets) in counters(&listing) {
            let Some((limit, port)) = name.split_once('_') else {
                continue;
            };
            let limit = match limit {
                "sessions" => "sessions",
                "rate" => "rate",
                _ => continue,
            };
            let Some(bound) = port.parse().ok().and_then(|p: u16| bounds.get(&p)) else {
                continue;
            };
            let last = self.seen.insert(name, packets).unwrap_or(0);
            // A counter below its last reading was made anew: all of it is new.
            let new = if packets >= last {
                packets - last
            } else {
                packets
            };
            self.metrics
                .refused
                .get_or_create(&RefusedLabels {
                    lb_id: bound.lb_id.clone(),
                    limit,
                })
                .inc_by(new);
        }
    }

    /// Removes the table: Envoy stops with the agent, so nothing is left to bound.
    pub fn remove(&mut self) -> Result<(), String> {
        if self.applied.as_ref().is_some_and(|a| !a.is_empty()) {
            nft(&["delete", "table", "inet", &self.table], None)?;
        }
        self.applied = Some(BTreeMap::new());
        Ok(())
    }
}

/// The named counters in `nft -j list counters` output, with their packets.
fn counters(listing: &str) -> Vec<(String, u64)> {
    let Ok(doc) = serde_json::from_str::<serde_json::Value>(listing) else {
        return Vec::new();
    };
    doc["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|item| {
            let c = item.get("counter")?;
            Some((c["name"].as_str()?.to_owned(), c["packets"].as_u64()?))
        })
        .collect()
}

/// Runs `nft ARGS`, with `input` on its stdin; its stdout.
fn nft(args: &[&str], input: Option<&str>) -> Result<String, String> {
    let mut child = Command::new("nft")
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("run nft (nftables): {e}"))?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin
            .write_all(text.as_bytes())
            .map_err(|e| format!("write to nft: {e}"))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("wait for nft: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "nft {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_read_from_nft_json() {
        let listing = r#"{"nftables": [{"metainfo": {"version": "1.0.6"}},
            {"counter": {"family": "inet", "name": "sessions_53", "table": "vpsie_lb", "handle": 4, "packets": 7, "bytes": 203}},
            {"counter": {"family": "inet", "name": "rate_53", "table": "vpsie_lb", "handle": 5, "packets": 0, "bytes": 0}}]}"#;
        assert_eq!(
            counters(listing),
            [("sessions_53".to_owned(), 7), ("rate_53".to_owned(), 0)]
        );
        assert!(counters("not json").is_empty());
    }
}

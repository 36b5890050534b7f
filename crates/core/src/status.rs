//! The agent's view of itself and of Envoy, served as `GET /status` and
//! printed by `vpsie-lb-agent status`. Never holds a secret.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Everything `/status` shows.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AgentStatus {
    /// Envoy serves a config Envoy itself confirmed (what `/readyz` says).
    pub ready: bool,
    /// Envoy's admin API answered on the last pass.
    pub envoy_reachable: bool,
    /// The version of everything served: the same on both nodes of an HA
    /// pair exactly when they serve the same documents (the hash in
    /// last-known-good's name).
    #[serde(default)]
    pub config_version: String,
    /// This node's keepalived instances, when it is in an HA pair.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ha: Option<HaStatus>,
    /// Per load balancer.
    pub load_balancers: BTreeMap<String, LbStatus>,
    /// The ACME certificates the served documents ask for.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub certificates: Vec<CertificateStatus>,
}

/// One ACME certificate (`tls_config.acme`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertificateStatus {
    /// Whose certificate.
    pub load_balancer: String,
    /// The names it is for.
    pub domains: Vec<String>,
    /// `waiting` (none issued yet: the https listener is not configured),
    /// `ordering`, `valid`, `renewing` (due, or the names changed; the old
    /// one still serves), or `standby` (one is needed, but this HA node
    /// does not hold the address the challenges come to).
    pub state: String,
    /// When the stored certificate expires, RFC 3339.
    pub not_after: Option<String>,
    /// When its renewal starts, RFC 3339.
    pub renew_at: Option<String>,
    /// Orders that failed since the last success.
    pub failures: u32,
    /// Why the last order failed.
    pub last_error: Option<String>,
    /// No order before this, RFC 3339, while backing off.
    pub next_attempt: Option<String>,
}

/// This node's part in an HA pair.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HaStatus {
    /// `active_passive` or `active_active`.
    pub mode: String,
    /// Each VRRP instance, as keepalived last reported it.
    pub instances: Vec<HaInstanceStatus>,
}

/// One keepalived instance on this node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HaInstanceStatus {
    /// `vpsie_lb_1`.
    pub name: String,
    /// The addresses it moves.
    pub virtual_ips: Vec<String>,
    /// `master`, `backup`, `fault`, `stop`, or `unknown` before keepalived reported.
    pub state: String,
    /// Since when, RFC 3339 (empty when unknown).
    pub since: String,
    /// How `notify_command` ended the last time it ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notify_command: Option<String>,
}

/// One load balancer.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LbStatus {
    /// `active`, `degraded` or `error`.
    pub status: String,
    /// Version of the newest document fetched (valid or not).
    pub desired_version: String,
    /// Version of the document Envoy serves.
    pub applied_version: String,
    /// When the last pass ended, RFC 3339.
    pub last_sync: String,
    /// How the last pass ended.
    pub last_result: String,
    /// Why the newest document is not served, if it is not.
    pub last_error: Option<String>,
    /// The served backends, with Envoy's view of their health.
    pub backends: Vec<BackendStatus>,
    /// Backends a change removed or disabled that still hold their
    /// in-flight connections (the deregistration delay).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub draining: Vec<DrainingStatus>,
}

/// A backend in its deregistration delay: no new connections, the open
/// ones kept until `until`, then closed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrainingStatus {
    /// Backend id.
    pub id: String,
    /// The pool it left.
    pub pool: String,
    /// Address as configured.
    pub address: String,
    /// Port.
    pub port: u16,
    /// When its remaining connections are closed, RFC 3339.
    pub until: String,
}

/// One backend.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BackendStatus {
    /// Backend id.
    pub id: String,
    /// Address as configured.
    pub address: String,
    /// Port.
    pub port: u16,
    /// Whether it may get traffic by configuration.
    pub enabled: bool,
    /// Envoy's view: None when Envoy does not know the host (disabled, or not yet resolved).
    pub healthy: Option<bool>,
    /// The pool it belongs to (`default` for the top-level backends).
    #[serde(default)]
    pub pool: String,
}

impl CertificateStatus {
    /// One line for humans, and one more with the last error.
    fn line(&self) -> String {
        let mut out = format!(
            "certificate of {}: {} ({}), expires {}\n",
            self.load_balancer,
            self.state,
            self.domains.join(", "),
            self.not_after.as_deref().unwrap_or("-")
        );
        if let Some(e) = &self.last_error {
            let next = self.next_attempt.as_deref().unwrap_or("now");
            out.push_str(&format!("  error: {e} (next attempt {next})\n"));
        }
        out
    }
}

impl AgentStatus {
    /// The status as a table for humans (`vpsie-lb-agent status`).
    pub fn table(&self) -> String {
        let s = self;
        let mut out = format!(
            "envoy: {}, {}\n",
            if s.envoy_reachable {
                "reachable"
            } else {
                "UNREACHABLE"
            },
            if s.ready {
                "serving a verified config"
            } else {
                "NOT READY"
            }
        );
        if !s.config_version.is_empty() {
            out.push_str(&format!("config version: {}\n", s.config_version));
        }
        if let Some(ha) = &s.ha {
            out.push_str(&ha.lines());
        }
        let w = Widths::of(s);
        out.push_str(&format!(
            "{:<lb$} {:<9} {:<13} {:<13} {:<21} {}\n",
            "LOAD BALANCER",
            "STATUS",
            "APPLIED",
            "DESIRED",
            "LAST SYNC",
            "RESULT",
            lb = w.lb
        ));
        for c in &s.certificates {
            out.push_str(&c.line());
        }
        for (id, lb) in &s.load_balancers {
            out.push_str(&lb.lines(id, &w));
        }
        out
    }
}

/// The table's column widths: the defaults, or wider for longer ids (the
/// public API's load balancers are named by UUIDs).
struct Widths {
    lb: usize,
    backend: usize,
    pool: usize,
}

impl Widths {
    fn of(s: &AgentStatus) -> Widths {
        let mut w = Widths {
            lb: 20,
            backend: 18,
            pool: 12,
        };
        let fit = |width: &mut usize, name: &str| *width = (*width).max(name.chars().count());
        for (id, lb) in &s.load_balancers {
            fit(&mut w.lb, id);
            let backends = lb.backends.iter().map(|b| (&b.id, &b.pool));
            for (id, pool) in backends.chain(lb.draining.iter().map(|d| (&d.id, &d.pool))) {
                fit(&mut w.backend, id);
                fit(&mut w.pool, pool);
            }
        }
        w
    }
}

impl LbStatus {
    /// The table's lines for load balancer `id`: its own, its error, and
    /// one per backend, draining ones last.
    fn lines(&self, id: &str, w: &Widths) -> String {
        let mut out = format!(
            "{id:<lbw$} {:<9} {:<13} {:<13} {:<21} {}\n",
            self.status,
            self.applied_version,
            self.desired_version,
            self.last_sync,
            self.last_result,
            lbw = w.lb
        );
        if let Some(e) = &self.last_error {
            out.push_str(&format!("  error: {e}\n"));
        }
        let (bw, pw) = (w.backend, w.pool);
        for b in &self.backends {
            let health = match (b.enabled, b.healthy) {
                (false, _) => "disabled",
                (true, Some(true)) => "healthy",
                (true, Some(false)) => "UNHEALTHY",
                (true, None) => "unknown",
            };
            out.push_str(&format!(
                "  {:<bw$} {:<pw$} {:<39} {:<6} {health}\n",
                b.id, b.pool, b.address, b.port
            ));
        }
        for d in &self.draining {
            out.push_str(&format!(
                "  {:<bw$} {:<pw$} {:<39} {:<6} draining until {}\n",
                d.id, d.pool, d.address, d.port, d.until
            ));
        }
        out
    }
}

impl HaStatus {
    /// The HA part of the table: the mode, then a line per instance.
    fn lines(&self) -> String {
        let mut out = format!("ha: {}\n", self.mode);
        for i in &self.instances {
            out.push_str(&format!(
                "  {:<12} {:<8} {:<30} since {}\n",
                i.name,
                i.state.to_uppercase(),
                i.virtual_ips.join(" "),
                if i.since.is_empty() { "-" } else { &i.since }
            ));
            if let Some(hook) = &i.notify_command {
                out.push_str(&format!("    notify_command: {hook}\n"));
            }
        }
        out
    }
}

/// What one pass reports about a load balancer: its status, the version it
/// serves, and why not the newest (`reporter.status`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusReport {
    /// Load-balancer id.
    pub id: String,
    /// `active`, `degraded` or `error`.
    pub status: &'static str,
    /// Version of the served document ("" when nothing is served).
    pub version: String,
    /// A sentence for humans.
    pub message: String,
}

/// Everything a pass tells about the state of things, built without IO.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StatusView {
    /// One report per load balancer that is served or has a problem.
    pub reports: Vec<StatusReport>,
    /// (load balancer, backend, healthy) for each enabled backend Envoy knows.
    pub health: Vec<(String, String, bool)>,
    /// The `/status` snapshot.
    pub snapshot: AgentStatus,
}

/// What the status of the load balancers is, from the documents served
/// (`good`), the newest fetched (`fetched`), why some are not served
/// (`problems`), and Envoy's hosts (`None` when its admin did not answer).
pub struct StatusInput<'a> {
    /// The documents served, by id.
    pub good: &'a BTreeMap<String, serde_json::Value>,
    /// Their version as a whole (`state::docs_version`).
    pub good_version: &'a str,
    /// The newest documents fetched, by id; the reconciler keeps only
    /// those that differ from `good` (an absent one is served as fetched).
    pub fetched: &'a BTreeMap<String, serde_json::Value>,
    /// Why a load balancer is not fully served, by id.
    pub problems: &'a BTreeMap<String, String>,
    /// Envoy's hosts, or `None` when its admin API did not answer.
    pub hosts: Option<&'a [crate::health::HostHealth]>,
    /// The drains Envoy runs (`vpsie_lb_model::drain::saved` of the
    /// config it serves).
    pub draining: &'a [vpsie_lb_model::drain::SavedDrain],
    /// Whether Envoy serves a config it confirmed.
    pub serving_verified: bool,
    /// How the pass ended, lowercase.
    pub last_result: String,
    /// Now, RFC 3339.
    pub now: String,
}

/// Builds the reports and the snapshot a pass publishes. Pure.
pub fn build(input: &StatusInput<'_>) -> StatusView {
    let envoy_reachable = input.hosts.is_some();
    let mut view = StatusView {
        snapshot: AgentStatus {
            envoy_reachable,
            ready: envoy_reachable && input.serving_verified,
            config_version: if input.good.is_empty() {
                String::new()
            } else {
                input.good_version.to_owned()
            },
            ..Default::default()
        },
        ..Default::default()
    };
    let ids: std::collections::BTreeSet<&String> =
        input.good.keys().chain(input.problems.keys()).collect();
    let mut draining = draining_by_lb(input.draining);
    for id in ids {
        let good = input.good.get(id);
        let version = good.map(version_of).unwrap_or_default();
        let problem = input.problems.get(id);
        // A wanted change that is not served is never "active", whatever
        // held it back (another load balancer must not be able to make a
        // stale config look current).
        let behind = input.fetched.get(id).is_some_and(|f| Some(f) != good);
        let (status, message) = match (good.is_some(), problem) {
            (true, None) if behind => (
                "degraded",
                "serving the previous configuration: the wanted change is not applied yet"
                    .to_owned(),
            ),
            (true, None) => ("active", "serving the desired configuration".to_owned()),
            (true, Some(p)) => (
                "degraded",
                format!("serving the previous configuration: {p}"),
            ),
            (false, Some(p)) => ("error", format!("not serving: {p}")),
            (false, None) => continue,
        };
        let backends = backends(id, good, input.hosts.unwrap_or_default());
        for b in &backends {
            if let Some(h) = b.healthy {
                view.health.push((id.clone(), b.id.clone(), h));
            }
        }
        view.snapshot.load_balancers.insert(
            id.clone(),
            LbStatus {
                status: status.to_owned(),
                desired_version: input
                    .fetched
                    .get(id)
                    .map_or_else(|| version.clone(), version_of),
                applied_version: version.clone(),
                last_sync: input.now.clone(),
                last_result: input.last_result.clone(),
                last_error: problem.cloned(),
                backends,
                draining: draining.remove(id.as_str()).unwrap_or_default(),
            },
        );
        view.reports.push(StatusReport {
            id: id.clone(),
            status,
            version,
            message,
        });
    }
    view
}

/// The running drains by load balancer, as `/status` shows them.
fn draining_by_lb(
    drains: &[vpsie_lb_model::drain::SavedDrain],
) -> BTreeMap<&str, Vec<DrainingStatus>> {
    let mut out: BTreeMap<&str, Vec<DrainingStatus>> = BTreeMap::new();
    for d in drains {
        out.entry(d.lb.as_str()).or_default().push(DrainingStatus {
            id: d.id.clone(),
            pool: d.pool.clone(),
            address: d.ip.to_string(),
            port: d.port,
            until: crate::time::rfc3339((d.until_ms / 1000) as i64),
        });
    }
    out
}

/// A document's version: the first 12 hex digits of the SHA-256 of its JSON.
pub fn version_of(doc: &serde_json::Value) -> String {
    crate::version::short_hash(doc.to_string().as_bytes())
}

/// The backends of a served document, each with Envoy's view of its health:
/// a backend is matched to Envoy's hosts by cluster, port, and address (or
/// the host name it was resolved from); healthy when any match is.
fn backends(
    id: &str,
    good: Option<&serde_json::Value>,
    hosts: &[crate::health::HostHealth],
) -> Vec<BackendStatus> {
    let Some(doc) = good else {
        return vec![];
    };
    let default = (vpsie_lb_model::DEFAULT_POOL, &doc["backends"]);
    let pools = doc["pools"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["id"].as_str().map(|pid| (pid, &p["backends"])));
    let mut out = Vec::new();
    for (pool, members) in std::iter::once(default).chain(pools) {
        let cluster = vpsie_lb_envoy::names::pool_cluster(id, pool);
        for b in members.as_array().into_iter().flatten() {
            out.extend(backend(b, pool, &cluster, hosts));
        }
    }
    out
}

/// One backend of `pool` (Envoy cluster `cluster`) with its health.
fn backend(
    b: &serde_json::Value,
    pool: &str,
    cluster: &str,
    hosts: &[crate::health::HostHealth],
) -> Option<BackendStatus> {
    let (Some(bid), Some(addr), Some(port)) =
        (b["id"].as_str(), b["address"].as_str(), b["port"].as_u64())
    else {
        return None;
    };
    let enabled = b["enabled"].as_bool() != Some(false);
    let addr_lc = addr.to_ascii_lowercase();
    let mine: Vec<&crate::health::HostHealth> = hosts
        .iter()
        .filter(|h| {
            h.cluster == cluster
                && u64::from(h.port) == port
                && (h.address == addr_lc || h.hostname == addr_lc)
        })
        .collect();
    Some(BackendStatus {
        id: bid.to_owned(),
        address: addr.to_owned(),
        port: u16::try_from(port).unwrap_or(0),
        enabled,
        healthy: (enabled && !mine.is_empty()).then(|| mine.iter().any(|h| h.healthy)),
        pool: pool.to_owned(),
    })
}

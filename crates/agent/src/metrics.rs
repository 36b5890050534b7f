//! Prometheus metrics: the reconcile loop's families, the build info, and
//! the text encoding. Each component registers its own families into the
//! registry it is handed (no global statics) and keeps cheap clones; the
//! API client's live in `api.rs`.
//!
//! Label cardinality is bounded by configuration: `result` has 5 values,
//! `endpoint` 4, `class` 6, and `lb_id`/`backend_id` pairs are the backends
//! of the configured load balancers (the only unbounded-looking labels, and
//! they are bounded by what the operator configures).

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::pass::PassResult;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabels {
    version: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BackendLabels {
    lb_id: String,
    backend_id: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabels {
    phase: &'static str,
}

/// A latency histogram from 1 ms to about 33 s, shared by the components.
pub(crate) fn seconds_histogram() -> Histogram {
    // 1 ms to about 33 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

/// Metrics of the reconcile loop and of Envoy as the loop sees it.
#[derive(Clone, Debug)]
pub struct ReconcileMetrics {
    passes: Family<ResultLabels, Counter>,
    last_apply: Gauge<f64, AtomicU64>,
    config_info: Family<VersionLabels, Gauge>,
    apply_seconds: Histogram,
    verify_seconds: Histogram,
    phase_seconds: Family<PhaseLabels, Histogram>,
    rollbacks: Counter,
    backend_healthy: Family<BackendLabels, Gauge>,
    envoy_reachable: Gauge,
}

impl ReconcileMetrics {
    /// Registers the loop's metrics.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            passes: Family::default(),
            last_apply: Gauge::default(),
            config_info: Family::default(),
            apply_seconds: seconds_histogram(),
            verify_seconds: seconds_histogram(),
            phase_seconds: Family::new_with_constructor(seconds_histogram),
            rollbacks: Counter::default(),
            backend_healthy: Family::default(),
            envoy_reachable: Gauge::default(),
        };
        registry.register(
            "reconcile_passes",
            "Reconcile passes by result",
            m.passes.clone(),
        );
        registry.register(
            "last_successful_apply_timestamp_seconds",
            "Unix time of the last config Envoy confirmed",
            m.last_apply.clone(),
        );
        registry.register(
            "config",
            "The config version Envoy serves (value 1)",
            m.config_info.clone(),
        );
        registry.register(
            "apply_duration_seconds",
            "Time to apply a change, verification included",
            m.apply_seconds.clone(),
        );
        registry.register(
            "verify_duration_seconds",
            "Time Envoy took to confirm the steps of a change",
            m.verify_seconds.clone(),
        );
        registry.register(
            "pass_phase_duration_seconds",
            "Time each phase of a pass that changed Envoy took",
            m.phase_seconds.clone(),
        );
        registry.register(
            "rollbacks",
            "Changes Envoy refused and that were rolled back",
            m.rollbacks.clone(),
        );
        registry.register(
            "backend_healthy",
            "1 when Envoy would send the backend traffic, 0 when not",
            m.backend_healthy.clone(),
        );
        registry.register(
            "envoy_reachable",
            "1 when Envoy's admin API answers",
            m.envoy_reachable.clone(),
        );
        m
    }

    /// Counts a finished pass.
    pub fn pass(&self, result: PassResult) {
        let result = match result {
            PassResult::Applied => "applied",
            PassResult::Unchanged => "unchanged",
            PassResult::Rejected => "rejected",
            PassResult::RolledBack => "rolled_back",
            PassResult::Error => "error",
        };
        self.passes.get_or_create(&ResultLabels { result }).inc();
    }

    /// Records a confirmed apply of `version`, taking `took`, of which `verify` waiting on Envoy.
    pub fn applied(&self, version: &str, took: Duration, verify: Duration) {
        self.apply_seconds.observe(took.as_secs_f64());
        self.verify_seconds.observe(verify.as_secs_f64());
        let now = std::time::SystemTime::now()
            .duration_since(std::time::SystemTime::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        self.last_apply.set(now);
        self.serving(version);
    }

    /// Records the version Envoy serves (one series at a time).
    pub fn serving(&self, version: &str) {
        self.config_info.clear();
        self.config_info
            .get_or_create(&VersionLabels {
                version: version.to_owned(),
            })
            .set(1);
    }

    /// Records the phase times of a pass that applied a change.
    pub fn phases(&self, times: &crate::pass::PhaseTimes) {
        for (phase, took) in times.named() {
            self.phase_seconds
                .get_or_create(&PhaseLabels { phase })
                .observe(took.as_secs_f64());
        }
    }

    /// Counts a rollback.
    pub fn rolled_back(&self) {
        self.rollbacks.inc();
    }

    /// Sets one backend's health, after dropping backends no longer configured.
    pub fn backends(&self, health: &[(String, String, bool)]) {
        self.backend_healthy.clear();
        for (lb_id, backend_id, healthy) in health {
            self.backend_healthy
                .get_or_create(&BackendLabels {
                    lb_id: lb_id.clone(),
                    backend_id: backend_id.clone(),
                })
                .set(i64::from(*healthy));
        }
    }

    /// Whether Envoy's admin answered.
    pub fn envoy_reachable(&self, up: bool) {
        self.envoy_reachable.set(i64::from(up));
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
}

/// Registers `build_info{version}` = 1.
pub fn register_build_info(registry: &mut Registry) {
    let info: Family<BuildLabels, Gauge> = Family::default();
    info.get_or_create(&BuildLabels {
        version: env!("CARGO_PKG_VERSION"),
    })
    .set(1);
    registry.register("build_info", "The agent's version (value 1)", info);
}

/// The registry in the Prometheus text format 0.0.4, which `promtool check
/// metrics` and every Prometheus accept.
///
/// The library writes OpenMetrics: a counter's HELP and TYPE lines name the
/// family (`x`) while its samples are `x_total`, and the text ends in `# EOF`.
/// Prometheus text wants HELP and TYPE named like the samples, and no EOF.
pub fn encode(registry: &Registry) -> String {
    let mut open_metrics = String::new();
    if prometheus_client::encoding::text::encode(&mut open_metrics, registry).is_err() {
        return String::new();
    }
    let counters: std::collections::HashSet<&str> = open_metrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(open_metrics.len());
    for line in open_metrics.lines() {
        if line == "# EOF" {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{prefix}{name}_total {tail}"))
        });
        out.push_str(renamed.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_family_encodes() {
        let mut r = Registry::with_prefix("vpsie_lb");
        let rec = ReconcileMetrics::register(&mut r);
        let api = crate::api::ApiMetrics::register(&mut r);
        register_build_info(&mut r);
        rec.pass(PassResult::Applied);
        rec.applied("abc", Duration::from_millis(30), Duration::from_millis(20));
        rec.rolled_back();
        rec.backends(&[("web".into(), "a".into(), true)]);
        rec.envoy_reachable(true);
        api.observe("get_loadbalancer", Some(200), Duration::from_millis(3));
        api.observe("get_loadbalancer", None, Duration::from_millis(3));
        let text = encode(&r);
        if let Ok(path) = std::env::var("METRICS_SAMPLE") {
            std::fs::write(path, &text).expect("write sample");
        }
        for needle in [
            "vpsie_lb_reconcile_passes_total{result=\"applied\"} 1",
            "vpsie_lb_rollbacks_total 1",
            "vpsie_lb_backend_healthy{lb_id=\"web\",backend_id=\"a\"} 1",
            "vpsie_lb_api_requests_total{endpoint=\"get_loadbalancer\",class=\"network_error\"} 1",
            "vpsie_lb_config{version=\"abc\"} 1",
            "vpsie_lb_build_info{version=",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in\n{text}");
        }
    }
}

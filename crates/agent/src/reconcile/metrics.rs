//! The reconcile loop's metrics, and Envoy as the loop sees it.

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::metrics::seconds_histogram;
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
struct LbLabels {
    lb_id: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LbStatusLabels {
    lb_id: String,
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabels {
    phase: &'static str,
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
    backends_draining: Family<LbLabels, Gauge>,
    lb_status: Family<LbStatusLabels, Gauge>,
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
            backends_draining: Family::default(),
            lb_status: Family::default(),
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
            "backends_draining",
            "Backends in their deregistration delay: no new connections, the open ones kept",
            m.backends_draining.clone(),
        );
        registry.register(
            "load_balancer_status",
            "1 for each load balancer's status as /status shows it: active, degraded (its wanted change is not served) or error (it serves nothing)",
            m.lb_status.clone(),
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

    /// How many backends drain per load balancer; a load balancer with
    /// none has no series.
    pub fn draining(&self, lbs: &std::collections::BTreeMap<String, crate::status::LbStatus>) {
        self.backends_draining.clear();
        for (lb_id, lb) in lbs.iter().filter(|(_, lb)| !lb.draining.is_empty()) {
            self.backends_draining
                .get_or_create(&LbLabels {
                    lb_id: lb_id.clone(),
                })
                .set(lb.draining.len() as i64);
        }
    }

    /// Each load balancer's status (one series, value 1), after dropping
    /// the load balancers no longer shown.
    pub fn statuses(&self, lbs: &std::collections::BTreeMap<String, crate::status::LbStatus>) {
        self.lb_status.clear();
        for (lb_id, lb) in lbs {
            self.lb_status
                .get_or_create(&LbStatusLabels {
                    lb_id: lb_id.clone(),
                    status: lb.status.clone(),
                })
                .set(1);
        }
    }

    /// Whether Envoy's admin answered.
    pub fn envoy_reachable(&self, up: bool) {
        self.envoy_reachable.set(i64::from(up));
    }
}

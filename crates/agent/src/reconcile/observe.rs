//! What a pass tells the others: the status of each load balancer and
//! backend (reporter, metrics, the `/status` snapshot), the API's
//! reachability, and rejected documents, as events.

use std::collections::BTreeMap;

use super::{Reconciler, capped_problems};
use crate::pass::Delivery;
use crate::pass::PassResult;
use crate::reconcile::ReconcileMetrics;
use crate::report::{EventKind, Reporter};
use crate::status::AgentStatus;
use vpsie_lb_model::Problem;

/// Where a reconciler publishes what it sees.
#[derive(Clone)]
pub struct Observe {
    /// The loop's metrics.
    pub metrics: ReconcileMetrics,
    /// The snapshot `/status` and `/readyz` serve.
    pub status: std::sync::Arc<std::sync::Mutex<AgentStatus>>,
}

impl<D: Delivery> Reconciler<D> {
    /// Status per load balancer and backend health as Envoy sees it: to the
    /// reporter, the metrics and the `/status` snapshot.
    pub(super) fn report_state(&self, reporter: &mut dyn Reporter, result: PassResult) {
        let hosts = self.delivery.host_health();
        let drains = self
            .served
            .as_ref()
            .map(vpsie_lb_model::drain::saved)
            .unwrap_or_default();
        self.observe.metrics.envoy_reachable(hosts.is_some());
        let view = crate::status::build(&crate::status::StatusInput {
            good: &self.good,
            good_version: &self.good_version,
            fetched: &self.fetched,
            problems: &self.problems,
            hosts: hosts.as_deref(),
            draining: &drains,
            serving_verified: self.serving_verified,
            last_result: format!("{result:?}").to_lowercase(),
            now: crate::report::rfc3339((self.ports.clock.now_ms() / 1000) as i64),
        });
        for r in &view.reports {
            reporter.status(&r.id, r.status, &r.version, &r.message);
        }
        for (lb, backend, healthy) in &view.health {
            reporter.health(lb, backend, *healthy);
        }
        self.observe.metrics.backends(&view.health);
        self.observe.metrics.draining(&view.snapshot.load_balancers);
        self.observe.metrics.statuses(&view.snapshot.load_balancers);
        if let Ok(mut s) = self.observe.status.lock() {
            *s = view.snapshot;
        }
    }

    /// Sends `api_unreachable` once when the API stops answering and
    /// `api_recovered` once when it answers again.
    pub(super) fn track_reachability(
        &mut self,
        reachable: Option<bool>,
        ids: Vec<String>,
        reporter: &mut dyn Reporter,
    ) {
        let Some(now) = reachable else { return };
        let was = self.api_up.replace(now);
        let (kind, message) = match (was, now) {
            (Some(true) | None, false) => (
                EventKind::ApiUnreachable,
                "the vpsie api is unreachable; serving the last known good configuration",
            ),
            (Some(false), true) => (EventKind::ApiRecovered, "the vpsie api answers again"),
            _ => return,
        };
        for id in ids {
            reporter.event(&id, kind, message, serde_json::json!({}));
        }
    }

    /// Sends `ha_state_changed` for every load balancer served when
    /// keepalived moved one of this node's instances since the last pass;
    /// the first look (at start) is the baseline and says nothing.
    pub(super) fn track_ha(&mut self, reporter: &mut dyn Reporter) {
        let Some(ha) = &self.ha else { return };
        let status = ha.status();
        let now: BTreeMap<String, String> = status
            .instances
            .iter()
            .map(|i| (i.name.clone(), i.state.clone()))
            .collect();
        let Some(seen) = self.ha_seen.replace(now) else {
            return;
        };
        for i in &status.instances {
            let was = seen.get(&i.name).map_or("unknown", String::as_str);
            if was == i.state {
                continue;
            }
            let message = format!(
                "{} ({}) on this node: {was} -> {}",
                i.name,
                i.virtual_ips.join(" "),
                i.state
            );
            let metadata = serde_json::json!({"instance": i.name, "state": i.state,
                "previous": was, "virtual_ips": i.virtual_ips, "since": i.since});
            for id in self.good.keys() {
                reporter.event(id, EventKind::HaStateChanged, &message, metadata.clone());
            }
        }
    }

    pub(super) fn reject(&mut self, reporter: &mut dyn Reporter, id: &str, problems: &[Problem]) {
        let (lines, more) = capped_problems(problems);
        let tail = if more > 0 {
            format!("; and {more} more")
        } else {
            String::new()
        };
        self.problems.insert(
            id.to_owned(),
            format!("configuration rejected: {}{tail}", lines.join("; ")),
        );
        reporter.event(
            id,
            EventKind::ConfigRejected,
            &format!(
                "configuration rejected, {} problem(s): {}{tail}",
                problems.len(),
                lines.join("; ")
            ),
            serde_json::json!({ "problems": lines, "more_problems": more }),
        );
    }
}

//! Prometheus metrics: the build info, the text encoding and a shared
//! histogram shape. Each component registers its own families into the
//! registry it is handed (no global statics) and keeps cheap clones: the
//! reconcile loop's in `reconcile/metrics.rs`, the API client's in `api.rs`,
//! the xDS server's in `xds/metrics.rs`.
//!
//! Label cardinality is bounded by configuration: `result` has 5 values,
//! `endpoint` 4, `class` 6, and `lb_id`/`backend_id` pairs are the backends
//! of the configured load balancers (the only unbounded-looking labels, and
//! they are bounded by what the operator configures).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
}

/// A latency histogram from 1 ms to about 33 s, shared by the components.
pub(crate) use vpsie_lb_api::seconds_histogram;

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
    use crate::pass::PassResult;
    use crate::reconcile::ReconcileMetrics;
    use std::time::Duration;

    #[test]
    fn every_family_encodes() {
        let mut r = Registry::with_prefix("vpsie_lb");
        let rec = ReconcileMetrics::register(&mut r);
        let api = crate::api::ApiMetrics::register(&mut r);
        let xds = crate::xds::metrics::XdsMetrics::register(&mut r);
        xds.stream(1);
        xds.responded(vpsie_lb_envoy::ResourceType::Cluster);
        xds.nacked(vpsie_lb_envoy::ResourceType::Listener);
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
            "vpsie_lb_xds_streams 1",
            "vpsie_lb_xds_responses_total{type=\"clusters\"} 1",
            "vpsie_lb_xds_nacks_total{type=\"listeners\"} 1",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in\n{text}");
        }
    }
}

//! The xDS server's own metrics: streams connected, responses sent and
//! NACKs received, by resource type.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use vpsie_lb_envoy::ResourceType;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TypeLabels {
    r#type: &'static str,
}

/// Metrics of the xDS server.
#[derive(Clone, Debug, Default)]
pub struct XdsMetrics {
    streams: Gauge,
    responses: Family<TypeLabels, Counter>,
    nacks: Family<TypeLabels, Counter>,
}

impl XdsMetrics {
    /// Registers the xDS server's metrics.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register(
            "xds_streams",
            "Envoy streams connected to the xDS server",
            m.streams.clone(),
        );
        registry.register(
            "xds_responses",
            "Responses sent to Envoy, by resource type",
            m.responses.clone(),
        );
        registry.register(
            "xds_nacks",
            "Responses Envoy refused (NACKed), by resource type",
            m.nacks.clone(),
        );
        m
    }

    /// A stream connected (+1) or ended (-1).
    pub fn stream(&self, delta: i64) {
        self.streams.inc_by(delta);
    }

    /// One response of `kind` sent.
    pub fn responded(&self, kind: ResourceType) {
        self.responses
            .get_or_create(&TypeLabels {
                r#type: kind.plural(),
            })
            .inc();
    }

    /// One response of `kind` refused.
    pub fn nacked(&self, kind: ResourceType) {
        self.nacks
            .get_or_create(&TypeLabels {
                r#type: kind.plural(),
            })
            .inc();
    }
}

//! `vpsie_lb_ha_state{instance, state}`: 1 for the state keepalived last
//! reported for each instance, 0 for the others; `unknown` until it has.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::{State, records};
use crate::config::Ha;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Labels {
    instance: String,
    state: &'static str,
}

/// The HA gauges, refreshed from the records whenever they are read.
#[derive(Clone)]
pub struct HaMetrics {
    ha: Ha,
    state: Family<Labels, Gauge>,
}

impl HaMetrics {
    /// Registers the family for the instances of `ha`.
    pub fn register(registry: &mut Registry, ha: &Ha) -> Self {
        let state = Family::<Labels, Gauge>::default();
        registry.register(
            "ha_state",
            "VRRP state of each keepalived instance on this node, as `ha notify` recorded it (1 = current)",
            state.clone(),
        );
        let m = Self {
            ha: ha.clone(),
            state,
        };
        m.refresh();
        m
    }

    /// The `ha` section the gauges describe.
    pub fn ha(&self) -> &Ha {
        &self.ha
    }

    /// Reads the records again: keepalived reports at any moment, not on
    /// the agent's passes.
    pub fn refresh(&self) {
        for (instance, record) in records(&self.ha) {
            let current = record.map(|r| r.state);
            let names = State::ALL.iter().map(|s| (Some(*s), s.as_str()));
            for (state, name) in names.chain([(None, "unknown")]) {
                self.state
                    .get_or_create(&Labels {
                        instance: instance.name.clone(),
                        state: name,
                    })
                    .set(i64::from(state == current));
            }
        }
    }
}

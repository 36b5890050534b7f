//! `vpsie_lb_certificate_expiry_days{lb, name}`: days until each ACME
//! certificate expires (negative once it has), and
//! `vpsie_lb_acme_orders_total{lb, result}`: orders that issued or failed.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::store::Stored;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Cert {
    lb: String,
    /// The certificate's first name.
    name: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Order {
    lb: String,
    result: &'static str,
}

/// The ACME metrics.
#[derive(Clone)]
pub struct AcmeMetrics {
    expiry: Family<Cert, Gauge<f64, AtomicU64>>,
    orders: Family<Order, Counter>,
}

impl AcmeMetrics {
    /// Registers both families.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            expiry: Family::default(),
            orders: Family::default(),
        };
        registry.register(
            "certificate_expiry_days",
            "Days until the ACME certificate of a load balancer expires (negative once expired)",
            m.expiry.clone(),
        );
        registry.register(
            "acme_orders",
            "ACME certificate orders by load balancer and result (issued or failed)",
            m.orders.clone(),
        );
        m
    }

    /// Counts one order's `result`.
    pub fn order(&self, lb: &str, result: &'static str) {
        self.orders
            .get_or_create(&Order {
                lb: lb.to_owned(),
                result,
            })
            .inc();
    }

    /// Sets the days left of each wanted certificate that was issued, at `now`.
    pub fn expiry(
        &self,
        wanted: &BTreeMap<String, vpsie_lb_model::Acme>,
        stored: &BTreeMap<String, Stored>,
        now: i64,
    ) {
        for lb in wanted.keys() {
            if let Some(c) = stored.get(lb) {
                self.expiry
                    .get_or_create(&label(lb, c))
                    .set((c.not_after - now) as f64 / 86_400.0);
            }
        }
    }

    /// Drops the gauges of certificates no longer wanted (or reissued
    /// under another first name).
    pub fn keep_only(
        &self,
        wanted: &BTreeMap<String, vpsie_lb_model::Acme>,
        stored: &BTreeMap<String, Stored>,
    ) {
        for (lb, c) in stored {
            if !wanted.contains_key(lb) {
                self.expiry.remove(&label(lb, c));
            }
        }
    }
}

fn label(lb: &str, c: &Stored) -> Cert {
    Cert {
        lb: lb.to_owned(),
        name: c.domains.first().cloned().unwrap_or_default(),
    }
}

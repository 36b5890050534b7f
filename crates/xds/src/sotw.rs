//! State-of-the-world xDS (`GRPC`), for a bootstrap that asks for it: every
//! response carries the whole state of its type (for endpoints and secrets,
//! of the names Envoy asked for), so a resource left out is a resource
//! removed. Envoy rebuilds only the resources whose content changed.
//!
//! A version Envoy refused cannot simply be left out here (that would
//! remove the resource), so it is not re-sent only as long as nothing else
//! of its type changes; the delivery's rollback takes it out of the
//! snapshot at once, so in practice it is never sent twice.

use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use vpsie_lb_envoy::ResourceType;

use crate::hub::{Sent, Snapshot, StreamView};
use crate::metrics::XdsMetrics;
use crate::protocol::{Protocol, due, next_nonce, record_answer, served_type};

/// The state-of-the-world variant.
pub struct Sotw;

impl Protocol for Sotw {
    const NAME: &'static str = "sotw";
    type Request = DiscoveryRequest;
    type Response = DiscoveryResponse;

    fn on_request(
        view: &mut StreamView,
        request: DiscoveryRequest,
        metrics: &XdsMetrics,
    ) -> Option<ResourceType> {
        let kind = served_type(&request.type_url)?;
        // Each request names the whole subscription: what it no longer
        // names is unsubscribed.
        let now = view.subscribed.get(&kind).cloned().unwrap_or_default();
        let add: Vec<String> = request
            .resource_names
            .iter()
            .filter(|n| !now.contains(*n))
            .cloned()
            .collect();
        let drop: Vec<String> = now
            .iter()
            .filter(|n| !request.resource_names.contains(n))
            .cloned()
            .collect();
        view.subscribe(kind, &add, &drop);
        let error = request.error_detail.map(|s| s.message);
        record_answer(view, kind, &request.response_nonce, error, metrics);
        Some(kind)
    }

    fn respond(
        view: &mut StreamView,
        snapshot: &Snapshot,
        kind: ResourceType,
        nonces: &mut u64,
    ) -> Option<(ResourceType, DiscoveryResponse)> {
        let pending = due(view, snapshot, kind)?;
        // The whole state of the type: everything wanted, changed or not.
        let mut sent = Sent {
            upserts: Default::default(),
            ..pending
        };
        let mut resources = Vec::new();
        for ((k, name), r) in snapshot.resources.range((kind, String::new())..) {
            if *k != kind {
                break;
            }
            if view.wants(kind, name) {
                sent.upserts.insert((kind, name.clone()), r.version.clone());
                resources.push(r.any.clone());
            }
        }
        let nonce = next_nonce(nonces);
        let response = DiscoveryResponse {
            version_info: snapshot.generation.to_string(),
            type_url: kind.type_url().into(),
            nonce: nonce.clone(),
            resources,
            ..Default::default()
        };
        view.record_sent(nonce, sent);
        Some((kind, response))
    }
}

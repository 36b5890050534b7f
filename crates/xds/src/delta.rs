//! Delta xDS (`DELTA_GRPC`, what our bootstrap asks for): Envoy subscribes
//! by name, says on reconnect which versions it holds, and is sent only
//! what changed, with removals by name.

use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, Resource,
};
use vpsie_lb_envoy::ResourceType;

use crate::hub::{Snapshot, StreamView};
use crate::metrics::XdsMetrics;
use crate::protocol::{Protocol, due, next_nonce, record_answer, served_type};

/// The delta variant.
pub struct Delta;

impl Protocol for Delta {
    const NAME: &'static str = "delta";
    type Request = DeltaDiscoveryRequest;
    type Response = DeltaDiscoveryResponse;

    fn on_request(
        view: &mut StreamView,
        request: DeltaDiscoveryRequest,
        metrics: &XdsMetrics,
    ) -> Option<ResourceType> {
        let kind = served_type(&request.type_url)?;
        for (name, version) in request.initial_resource_versions {
            // Envoy kept these from an earlier stream: same name and version
            // means the same content, so they are not sent again.
            let key = (kind, name);
            view.known.insert(key.clone(), version.clone());
            view.acked.insert(key, version);
        }
        view.subscribe(
            kind,
            &request.resource_names_subscribe,
            &request.resource_names_unsubscribe,
        );
        let error = request.error_detail.map(|s| s.message);
        record_answer(view, kind, &request.response_nonce, error, metrics);
        Some(kind)
    }

    fn respond(
        view: &mut StreamView,
        snapshot: &Snapshot,
        kind: ResourceType,
        nonces: &mut u64,
    ) -> Option<(ResourceType, DeltaDiscoveryResponse)> {
        let pending = due(view, snapshot, kind)?;
        let nonce = next_nonce(nonces);
        let response = DeltaDiscoveryResponse {
            system_version_info: snapshot.generation.to_string(),
            type_url: kind.type_url().into(),
            nonce: nonce.clone(),
            resources: pending
                .upserts
                .iter()
                .filter_map(|(key, version)| {
                    let r = snapshot.resources.get(key)?;
                    Some(Resource {
                        name: key.1.clone(),
                        version: version.clone(),
                        resource: Some(r.any.clone()),
                        ..Default::default()
                    })
                })
                .collect(),
            removed_resources: pending.removed.iter().map(|(_, n)| n.clone()).collect(),
            ..Default::default()
        };
        view.record_sent(nonce, pending);
        Some((kind, response))
    }
}

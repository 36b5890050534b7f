//! What the two variants of the protocol have in common: the trait the
//! server drives them through, and the steps both take (which type Envoy
//! means, whether a response is due, nonces, recording an answer). Apart
//! from the server so that the variants need not import it, nor it them
//! beyond their names.

use vpsie_lb_envoy::ResourceType;

use crate::hub::{Sent, Snapshot, StreamView};
use crate::metrics::XdsMetrics;

/// What differs between the two variants of the protocol.
pub trait Protocol {
    /// Its name in logs: `delta` or `sotw`.
    const NAME: &'static str;
    /// What Envoy sends.
    type Request: Send + 'static;
    /// What we answer.
    type Response: Send + 'static;

    /// Records what `request` says in `view` (subscriptions, what Envoy
    /// holds, its answer to a response); returns the type to answer.
    fn on_request(
        view: &mut StreamView,
        request: Self::Request,
        metrics: &XdsMetrics,
    ) -> Option<ResourceType>;

    /// The response that brings `view` to `snapshot` for `kind`, if one
    /// is due, recorded in `view` as sent under a nonce from `nonces`.
    fn respond(
        view: &mut StreamView,
        snapshot: &Snapshot,
        kind: ResourceType,
        nonces: &mut u64,
    ) -> Option<(ResourceType, Self::Response)>;
}

/// The resource type Envoy means by `type_url`, if we serve it; a type we
/// do not serve (Envoy may ask for route or runtime discovery) is logged
/// and left unanswered.
pub fn served_type(type_url: &str) -> Option<ResourceType> {
    let kind = ResourceType::from_type_url(type_url);
    if kind.is_none() {
        tracing::debug!(phase = "xds", type_url = %type_url, "a type we do not serve");
    }
    kind
}

/// What `view` lacks of `snapshot` for `kind` (with `generation` set), if
/// a response is due: Envoy asked for the type, and something changed or
/// the type was never answered (a first request is always answered, even
/// with nothing, or Envoy waits out its initial fetch timeout).
pub fn due(view: &mut StreamView, snapshot: &Snapshot, kind: ResourceType) -> Option<Sent> {
    if !view.subscribed.contains_key(&kind) {
        return None;
    }
    let pending = view.pending(kind, &snapshot.resources);
    let first = view.answered.insert(kind);
    if pending.upserts.is_empty() && pending.removed.is_empty() && !first {
        return None;
    }
    Some(Sent {
        generation: snapshot.generation,
        ..pending
    })
}

/// The next nonce of a stream.
pub fn next_nonce(nonces: &mut u64) -> String {
    *nonces += 1;
    nonces.to_string()
}

/// Records Envoy's answer to `nonce` (a NACK when `error` is set), counted
/// and logged; shared by both variants.
pub fn record_answer(
    view: &mut StreamView,
    kind: ResourceType,
    nonce: &str,
    error: Option<String>,
    metrics: &XdsMetrics,
) {
    if nonce.is_empty() {
        return;
    }
    let error = error.map(|m| m.trim().to_owned());
    if let Some(message) = &error {
        metrics.nacked(kind);
        tracing::warn!(phase = "xds", type_url = %kind.type_url(), nonce = %nonce, error = %message, "envoy refused a push");
    }
    view.record_answer(nonce, error);
}

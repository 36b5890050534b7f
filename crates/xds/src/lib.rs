//! The agent's aggregated discovery service: what Envoy's xDS streams are
//! served and what Envoy answered ([`hub`]), the gRPC server on a Unix
//! socket ([`server`]) with its two protocol variants ([`delta`],
//! [`sotw`], behind [`protocol`]), and their metrics. Deciding what to
//! publish and waiting for Envoy's answers is the agent's xDS delivery.

pub mod delta;
pub mod hub;
pub mod metrics;
pub mod protocol;
pub mod server;
pub mod sotw;

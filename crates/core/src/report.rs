//! What the pass tells the outside: events per load balancer, errors,
//! status and backend health. The trait is here so that every capability
//! (the pass, ACME, HA) reports through it without depending on the agent;
//! the log and API reporters live in the agent.

use serde_json::Value;

/// The kinds of event sent to the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// A new config was confirmed by Envoy.
    ConfigApplied,
    /// Our validation (or Envoy's validate mode) refused the config.
    ConfigRejected,
    /// Envoy refused the config and the previous one serves again.
    ConfigRolledBack,
    /// The API could not be reached (once per outage).
    ApiUnreachable,
    /// The API answers again.
    ApiRecovered,
    /// A backend's deregistration delay ended: it is removed, and what
    /// was still open on it closed.
    BackendDrained,
    /// An ACME certificate was issued or renewed, and is stored.
    CertificateIssued,
    /// An ACME order failed; the next attempt waits (see the message).
    CertificateFailed,
    /// keepalived put this node's VRRP instance in another state (master,
    /// backup, fault, stop): reported for every load balancer served.
    HaStateChanged,
}

impl EventKind {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::ConfigApplied => "config_applied",
            EventKind::ConfigRejected => "config_rejected",
            EventKind::ConfigRolledBack => "config_rolled_back",
            EventKind::ApiUnreachable => "api_unreachable",
            EventKind::ApiRecovered => "api_recovered",
            EventKind::BackendDrained => "backend_drained",
            EventKind::CertificateIssued => "certificate_issued",
            EventKind::CertificateFailed => "certificate_failed",
            EventKind::HaStateChanged => "ha_state_changed",
        }
    }
}

/// Where events and errors go.
pub trait Reporter {
    /// An event about load balancer `lb_id`.
    fn event(&mut self, lb_id: &str, kind: EventKind, message: &str, metadata: Value);
    /// An error, logged once here where it is handled.
    fn error(&mut self, phase: &str, message: &str);
    /// Something worth a log line.
    fn note(&mut self, message: &str);
    /// The state of load balancer `lb_id` after a pass: `active`, `degraded`
    /// or `error`. Reporters pass on changes only.
    fn status(&mut self, lb_id: &str, status: &str, version: &str, message: &str);
    /// A backend's health as Envoy sees it. Reporters pass on changes only
    /// (and the first value after start).
    fn health(&mut self, lb_id: &str, backend_id: &str, healthy: bool);
    /// Called once at the end of every pass: a chance to retry what failed.
    fn flush(&mut self) {}
}

/// Tells no one: for a caller that reports the outcome itself.
pub struct Silent;

impl Reporter for Silent {
    fn event(&mut self, _lb_id: &str, _kind: EventKind, _message: &str, _metadata: Value) {}

    fn error(&mut self, _phase: &str, _message: &str) {}

    fn note(&mut self, _message: &str) {}

    fn status(&mut self, _lb_id: &str, _status: &str, _version: &str, _message: &str) {}

    fn health(&mut self, _lb_id: &str, _backend_id: &str, _healthy: bool) {}
}

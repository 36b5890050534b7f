//! Reporting what the agent does: events per load balancer, and errors.
//! Logs always; the VPSie API reporter also sends events upstream.

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
}

/// Logs everything through `tracing`.
#[derive(Debug, Default)]
pub struct LogReporter;

impl Reporter for LogReporter {
    fn event(&mut self, lb_id: &str, kind: EventKind, message: &str, _metadata: Value) {
        match kind {
            EventKind::ConfigApplied | EventKind::ApiRecovered => {
                tracing::info!(lb_id, event = kind.as_str(), "{message}")
            }
            _ => tracing::warn!(lb_id, event = kind.as_str(), "{message}"),
        }
    }
    fn error(&mut self, phase: &str, message: &str) {
        tracing::error!(phase, error = message, "{phase} failed");
    }
    fn note(&mut self, message: &str) {
        tracing::info!("{message}");
    }
}

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
    /// The state of load balancer `lb_id` after a pass: `active`, `degraded`
    /// or `error`. Reporters pass on changes only.
    fn status(&mut self, lb_id: &str, status: &str, version: &str, message: &str);
    /// A backend's health as Envoy sees it. Reporters pass on changes only
    /// (and the first value after start).
    fn health(&mut self, lb_id: &str, backend_id: &str, healthy: bool);
    /// Called once at the end of every pass: a chance to retry what failed.
    fn flush(&mut self) {}
}

/// Logs everything through `tracing`.
#[derive(Debug, Default)]
pub struct LogReporter {
    last: Changes,
}

/// What was last reported, so only changes are passed on.
#[derive(Debug, Default)]
struct Changes {
    status: std::collections::HashMap<String, (String, String, String)>,
    health: std::collections::HashMap<(String, String), bool>,
}

impl Changes {
    fn status_changed(&self, lb: &str, value: &(String, String, String)) -> bool {
        self.status.get(lb) != Some(value)
    }
    fn health_changed(&self, lb: &str, backend: &str, healthy: bool) -> bool {
        self.health.get(&(lb.to_owned(), backend.to_owned())) != Some(&healthy)
    }
}

impl Reporter for LogReporter {
    fn status(&mut self, lb_id: &str, status: &str, version: &str, message: &str) {
        let value = (status.to_owned(), version.to_owned(), message.to_owned());
        if self.last.status_changed(lb_id, &value) {
            tracing::info!(lb_id, status, version, "{message}");
            self.last.status.insert(lb_id.to_owned(), value);
        }
    }
    fn health(&mut self, lb_id: &str, backend_id: &str, healthy: bool) {
        if self.last.health_changed(lb_id, backend_id, healthy) {
            tracing::info!(lb_id, backend_id, healthy, "backend health");
            self.last
                .health
                .insert((lb_id.to_owned(), backend_id.to_owned()), healthy);
        }
    }
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

/// Most events kept while the API is unreachable; older ones are dropped.
const MAX_PENDING_EVENTS: usize = 1000;

/// Sends events, status and health to the VPSie API, and logs them too.
/// What cannot be sent is kept (events up to a bound) and retried at the
/// end of the next pass; the controller's schedule is the retry schedule.
pub struct ApiReporter {
    client: crate::api::ApiClient,
    log: LogReporter,
    pending: std::collections::VecDeque<(String, Value)>,
    dropped: u64,
    sent: Changes,
    wanted_status: std::collections::HashMap<String, (String, String, String)>,
    wanted_health: std::collections::HashMap<(String, String), bool>,
}

impl ApiReporter {
    /// A reporter sending through `client`.
    pub fn new(client: crate::api::ApiClient) -> Self {
        Self {
            client,
            log: LogReporter::default(),
            pending: Default::default(),
            dropped: 0,
            sent: Changes::default(),
            wanted_status: Default::default(),
            wanted_health: Default::default(),
        }
    }
}

impl Reporter for ApiReporter {
    fn event(&mut self, lb_id: &str, kind: EventKind, message: &str, metadata: Value) {
        self.log.event(lb_id, kind, message, metadata.clone());
        if self.pending.len() >= MAX_PENDING_EVENTS {
            self.pending.pop_front();
            self.dropped += 1;
        }
        let event = serde_json::json!({
            "type": kind.as_str(),
            "message": message,
            "metadata": metadata,
            "timestamp": rfc3339_now(),
        });
        self.pending.push_back((lb_id.to_owned(), event));
    }
    fn error(&mut self, phase: &str, message: &str) {
        self.log.error(phase, message);
    }
    fn note(&mut self, message: &str) {
        self.log.note(message);
    }
    fn status(&mut self, lb_id: &str, status: &str, version: &str, message: &str) {
        self.log.status(lb_id, status, version, message);
        self.wanted_status.insert(
            lb_id.to_owned(),
            (status.to_owned(), version.to_owned(), message.to_owned()),
        );
    }
    fn health(&mut self, lb_id: &str, backend_id: &str, healthy: bool) {
        self.log.health(lb_id, backend_id, healthy);
        self.wanted_health
            .insert((lb_id.to_owned(), backend_id.to_owned()), healthy);
    }
    fn flush(&mut self) {
        if self.dropped > 0 {
            tracing::warn!(
                dropped = self.dropped,
                "events dropped while the api was unreachable"
            );
            self.dropped = 0;
        }
        while let Some((lb, event)) = self.pending.front() {
            match self.client.post_event(lb, event) {
                Ok(()) => {
                    self.pending.pop_front();
                }
                Err(e) => {
                    tracing::debug!(error = %e, "event not sent; will retry");
                    break;
                }
            }
        }
        for (lb, value) in &self.wanted_status {
            if !self.sent.status_changed(lb, value) {
                continue;
            }
            let body = serde_json::json!({"status": value.0, "config_version": value.1, "message": value.2});
            if self.client.put_status(lb, &body).is_ok() {
                self.sent.status.insert(lb.clone(), value.clone());
            }
        }
        for ((lb, backend), healthy) in &self.wanted_health {
            if !self.sent.health_changed(lb, backend, *healthy) {
                continue;
            }
            if self.client.put_health(lb, backend, *healthy).is_ok() {
                self.sent
                    .health
                    .insert((lb.clone(), backend.clone()), *healthy);
            }
        }
    }
}

/// Now as RFC 3339 UTC with second precision, e.g. `2026-11-26T15:04:05Z`.
pub fn rfc3339_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

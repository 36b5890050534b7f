//! Reporting what the agent does: events per load balancer, and errors.
//! Logs always; the VPSie API reporter also sends events upstream.

use serde_json::Value;

pub use vpsie_lb_core::report::{EventKind, Reporter};

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

impl LogReporter {
    /// Logs the status if it changed; says whether it did.
    fn log_status(&mut self, lb_id: &str, status: &str, version: &str, message: &str) -> bool {
        let value = (status.to_owned(), version.to_owned(), message.to_owned());
        if self.last.status.get(lb_id) == Some(&value) {
            return false;
        }
        tracing::info!(lb_id, status, version, "{message}");
        self.last.status.insert(lb_id.to_owned(), value);
        true
    }

    /// Logs the backend's health if it changed; says whether it did.
    fn log_health(&mut self, lb_id: &str, backend_id: &str, healthy: bool) -> bool {
        let key = (lb_id.to_owned(), backend_id.to_owned());
        if self.last.health.get(&key) == Some(&healthy) {
            return false;
        }
        tracing::info!(lb_id, backend_id, healthy, "backend health");
        self.last.health.insert(key, healthy);
        true
    }
}

impl Reporter for LogReporter {
    fn status(&mut self, lb_id: &str, status: &str, version: &str, message: &str) {
        self.log_status(lb_id, status, version, message);
    }
    fn health(&mut self, lb_id: &str, backend_id: &str, healthy: bool) {
        self.log_health(lb_id, backend_id, healthy);
    }
    fn event(&mut self, lb_id: &str, kind: EventKind, message: &str, _metadata: Value) {
        match kind {
            EventKind::ConfigApplied | EventKind::ApiRecovered | EventKind::BackendDrained => {
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
/// How long the sender waits before trying again after a failed round.
const RETRY_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// Status of one load balancer: (status, version, message).
type StatusValue = (String, String, String);

/// What one pass has to send: new events and changed status and health.
#[derive(Debug, Default)]
struct Batch {
    events: Vec<(String, Value)>,
    status: std::collections::HashMap<String, StatusValue>,
    health: std::collections::HashMap<(String, String), bool>,
}

impl Batch {
    fn is_empty(&self) -> bool {
        self.events.is_empty() && self.status.is_empty() && self.health.is_empty()
    }
}

/// Sends events, status and health to the VPSie API, and logs them too.
///
/// Sending happens on a thread of its own: with the API's report endpoints
/// blackholed, every request waits out its timeout, and a pass that sent
/// inline took minutes, applied nothing meanwhile and did not honour
/// SIGTERM. The pass only hands over what changed.
pub struct ApiReporter {
    log: LogReporter,
    batch: Batch,
    to_sender: std::sync::mpsc::Sender<Batch>,
}

impl ApiReporter {
    /// A reporter sending through `client` on its own thread.
    pub fn new(client: crate::api::ApiClient) -> Self {
        let (to_sender, from_reporter) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("reporter".into())
            .spawn(move || Outbox::default().run(&client, &from_reporter))
            .expect("spawn the reporter thread");
        Self {
            log: LogReporter::default(),
            batch: Batch::default(),
            to_sender,
        }
    }
}

impl Reporter for ApiReporter {
    fn event(&mut self, lb_id: &str, kind: EventKind, message: &str, metadata: Value) {
        self.log.event(lb_id, kind, message, metadata.clone());
        let event = serde_json::json!({
            "type": kind.as_str(),
            "message": message,
            "metadata": metadata,
            "timestamp": rfc3339_now(),
        });
        self.batch.events.push((lb_id.to_owned(), event));
    }
    fn error(&mut self, phase: &str, message: &str) {
        self.log.error(phase, message);
    }
    fn note(&mut self, message: &str) {
        self.log.note(message);
    }
    // What changed is logged and forwarded; the log reporter tells which.
    fn status(&mut self, lb_id: &str, status: &str, version: &str, message: &str) {
        if self.log.log_status(lb_id, status, version, message) {
            let value = (status.to_owned(), version.to_owned(), message.to_owned());
            self.batch.status.insert(lb_id.to_owned(), value);
        }
    }
    fn health(&mut self, lb_id: &str, backend_id: &str, healthy: bool) {
        if self.log.log_health(lb_id, backend_id, healthy) {
            let key = (lb_id.to_owned(), backend_id.to_owned());
            self.batch.health.insert(key, healthy);
        }
    }
    fn flush(&mut self) {
        if !self.batch.is_empty() {
            // Never blocks; a sender that died has logged why.
            let _ = self.to_sender.send(std::mem::take(&mut self.batch));
        }
    }
}

/// What the sender still has to deliver. Newer status and health replace
/// older values of the same key; events are kept in order, up to a bound.
#[derive(Default)]
struct Outbox {
    events: std::collections::VecDeque<(String, Value)>,
    status: std::collections::BTreeMap<String, StatusValue>,
    health: std::collections::BTreeMap<(String, String), bool>,
    dropped: u64,
}

/// How sending one report went.
enum SendOutcome {
    Sent,
    /// The API refused this one for good (a 4xx other than 401, 403, 429):
    /// sending it again cannot help, and it must not block what follows.
    Refused(crate::api::ApiError),
    /// The API is away or unhappy: stop this round, try again later.
    Stop(crate::api::ApiError),
}

fn classify(result: Result<(), crate::api::ApiError>) -> SendOutcome {
    use crate::api::ApiError;
    match result {
        Ok(()) => SendOutcome::Sent,
        // A rejected key is not the batch's fault: keep it until the key
        // works again.
        Err(e @ ApiError::Unauthorized { .. }) => SendOutcome::Stop(e),
        // Otherwise the API's one table: a refused batch is dropped,
        // anything else is kept for the next try.
        Err(e) if e.class() == vpsie_lb_core::class::Class::Refused => SendOutcome::Refused(e),
        Err(e) => SendOutcome::Stop(e),
    }
}

impl Outbox {
    /// Delivers until the reporter goes away: after every batch, and every
    /// [`RETRY_EVERY`] while something is left.
    fn run(mut self, client: &crate::api::ApiClient, batches: &std::sync::mpsc::Receiver<Batch>) {
        use std::sync::mpsc::RecvTimeoutError;
        loop {
            let next = if self.is_empty() {
                batches.recv().map_err(|_| RecvTimeoutError::Disconnected)
            } else {
                batches.recv_timeout(RETRY_EVERY)
            };
            match next {
                Ok(batch) => self.merge(batch),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
            while let Ok(batch) = batches.try_recv() {
                self.merge(batch);
            }
            self.deliver(client);
        }
    }

    fn is_empty(&self) -> bool {
        self.events.is_empty() && self.status.is_empty() && self.health.is_empty()
    }

    fn merge(&mut self, batch: Batch) {
        for e in batch.events {
            if self.events.len() >= MAX_PENDING_EVENTS {
                self.events.pop_front();
                self.dropped += 1;
            }
            self.events.push_back(e);
        }
        self.status.extend(batch.status);
        self.health.extend(batch.health);
    }

    /// One round: events in order, then status, then health; it stops at
    /// the first failure that a later try may fix.
    fn deliver(&mut self, client: &crate::api::ApiClient) {
        if self.dropped > 0 {
            tracing::warn!(
                dropped = self.dropped,
                "events dropped while the api was unreachable"
            );
            self.dropped = 0;
        }
        while let Some((lb, event)) = self.events.front() {
            match classify(client.post_event(lb, event)) {
                SendOutcome::Sent => {}
                SendOutcome::Refused(e) => {
                    tracing::warn!(error = %e, "the api refused an event; dropped");
                }
                SendOutcome::Stop(e) => return stop(&e),
            }
            self.events.pop_front();
        }
        while let Some((lb, value)) = self.status.first_key_value() {
            let body = serde_json::json!({"status": value.0, "config_version": value.1, "message": value.2});
            if let SendOutcome::Stop(e) = classify(client.put_status(lb, &body)) {
                return stop(&e);
            }
            self.status.pop_first();
        }
        while let Some(((lb, backend), healthy)) = self.health.first_key_value() {
            if let SendOutcome::Stop(e) = classify(client.put_health(lb, backend, *healthy)) {
                return stop(&e);
            }
            self.health.pop_first();
        }
    }
}

fn stop(e: &crate::api::ApiError) {
    tracing::debug!(error = %e, "report not sent; will retry");
}

pub use vpsie_lb_core::time::rfc3339;
pub use vpsie_lb_host::clock::rfc3339_now;

#[cfg(test)]
mod tests {
    use super::*;
    use vpsie_lb_testkit::http;

    fn sim() -> (u16, crate::api::ApiClient) {
        let sim = vpsie_api_sim::Sim::new("k", None);
        let port = sim.spawn(0).expect("emulator").port();
        let client = crate::api::ApiClient::new(&format!("http://127.0.0.1:{port}/v1"), "k".into());
        (port, client)
    }

    fn fault(port: u16, f: Value) {
        let r = http::send(port, "PUT", "/_sim/faults", &f.to_string()).expect("fault");
        assert!(r.status < 300, "{}", r.body);
    }

    fn outbox(events: usize, statuses: usize) -> Outbox {
        let mut o = Outbox::default();
        let mut b = Batch::default();
        for i in 0..events {
            b.events.push(("lb".into(), serde_json::json!({"n": i})));
        }
        for i in 0..statuses {
            b.status
                .insert(format!("lb{i}"), ("active".into(), "v".into(), "m".into()));
            b.health.insert((format!("lb{i}"), "b".into()), true);
        }
        o.merge(b);
        o
    }

    #[test]
    fn regression_a_refused_event_blocked_every_later_one() {
        let (port, client) = sim();
        fault(
            port,
            serde_json::json!({"endpoint": "post_event", "kind": "error_4xx", "count": 1}),
        );
        let mut o = outbox(2, 0);
        o.deliver(&client);
        assert!(
            o.events.is_empty(),
            "the refused event is dropped, the next one sent"
        );
        let report = http::get(port, "/_sim/reports/lb").expect("report").body;
        let events: Value = serde_json::from_str(&report).expect("json");
        assert_eq!(events["events"], serde_json::json!([{"n": 1}]));
    }

    #[test]
    fn regression_reporting_waited_out_every_timeout_when_the_api_was_away() {
        let (port, client) = sim();
        fault(port, serde_json::json!({"endpoint": "*", "kind": "reset"}));
        let mut o = outbox(3, 2);
        o.deliver(&client);
        assert_eq!((o.events.len(), o.status.len(), o.health.len()), (3, 2, 2));
        let counts: Value =
            serde_json::from_str(&http::get(port, "/_sim/requests").expect("counts").body)
                .expect("json");
        assert_eq!(counts["post_event"], 1, "one try per round: {counts}");
        assert!(counts.get("put_status").is_none_or(|n| *n == 0), "{counts}");
    }

    #[test]
    fn newer_status_replaces_older_and_events_are_bounded() {
        let mut o = outbox(MAX_PENDING_EVENTS + 5, 1);
        assert_eq!(o.events.len(), MAX_PENDING_EVENTS);
        assert_eq!(o.dropped, 5);
        let mut b = Batch::default();
        b.status
            .insert("lb0".into(), ("error".into(), "v2".into(), "m".into()));
        o.merge(b);
        assert_eq!(o.status["lb0"].0, "error");
    }
}

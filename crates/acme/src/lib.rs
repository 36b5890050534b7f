//! Certificates the agent obtains and renews over ACME (`tls_config.acme`).
//!
//! The reconciler says on each pass which load balancers want one
//! ([`Acme::want`]) and renders with those already issued
//! ([`Acme::issued`]). A thread of its own orders what is missing or due,
//! one at a time, answering HTTP-01 challenges from [`responder`] (Envoy's
//! redirect listeners send `/.well-known/acme-challenge/` there), stores
//! the result ([`store`]) and asks for a pass. Envoy reads the files through
//! SDS and reloads them on the rename, so a renewal changes no listener.

pub mod config;
pub mod http;
mod metrics;
pub mod order;
pub mod responder;
pub mod schedule;
pub mod store;
mod worker;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use vpsie_lb_model::acme::Issued;

use schedule::{Attempts, Need};
use store::{Store, Stored};
use vpsie_lb_core::report::{EventKind, Reporter};
use vpsie_lb_core::status::CertificateStatus;
use vpsie_lb_host::trigger::Trigger;
use worker::{Orders, Worker};

pub use metrics::AcmeMetrics;

/// HTTP-01 answers being served, by (load balancer, token).
pub type Tokens = Arc<Mutex<HashMap<(String, String), responder::Challenge>>>;

/// Orders in flight at once, each on a thread of its own: one slow or
/// silent directory delays only its own orders.
const MAX_CONCURRENT_ORDERS: usize = 4;

/// The longest the thread sleeps when nothing is due: it looks again.
const IDLE_WAKE: Duration = Duration::from_secs(3600);

/// Whether this node may order now: in an HA pair, only the node holding
/// the address receives the challenges.
pub type MayOrder = Box<dyn Fn() -> bool + Send>;

/// How often a node that may not order looks again (an HA backup that
/// takes over orders within this).
const STANDBY_RECHECK: Duration = Duration::from_secs(2);

/// What the agent's config says about ACME.
pub struct Settings {
    /// Where the store lives (`state_dir`).
    pub state_dir: PathBuf,
    /// Where the responder listens; Envoy's `vpsie_lb_acme` cluster.
    pub responder_socket: PathBuf,
    /// A PEM CA to trust for the directory instead of the system's roots.
    pub directory_ca_file: Option<PathBuf>,
    /// In an HA pair: whether this node holds the address now.
    pub may_order: Option<MayOrder>,
    /// The contact of the operator's accounts (`acme.account_email`).
    pub account_email: Option<String>,
    /// How long one order may take, the account stage included.
    pub order_timeout: Duration,
}

/// An event for the reporter, queued until the next pass.
struct Event {
    lb: String,
    kind: EventKind,
    message: String,
    metadata: serde_json::Value,
}

#[derive(Default)]
struct State {
    wanted: BTreeMap<String, vpsie_lb_model::Acme>,
    /// What the store holds, read once per load balancer and kept current.
    stored: BTreeMap<String, Stored>,
    /// Load balancers whose store was read (found or not).
    read: std::collections::BTreeSet<String>,
    attempts: BTreeMap<String, Attempts>,
    /// The orders in flight.
    ordering: std::collections::BTreeSet<String>,
    /// When each load balancer last started an order: its turn.
    started: BTreeMap<String, i64>,
    /// When each load balancer's orders that reached the CA ended (the
    /// last hour's), whatever names they were for: its budget.
    placed: BTreeMap<String, Vec<i64>>,
    /// Whether orders wait because this HA node does not hold the address.
    standby: bool,
    events: Vec<Event>,
    stopping: bool,
}

struct Shared {
    state: Mutex<State>,
    changed: Condvar,
    store: Store,
    metrics: AcmeMetrics,
}

/// The handle the reconciler, the endpoints and `run` share.
#[derive(Clone)]
pub struct Acme {
    shared: Arc<Shared>,
}

/// Now, Unix seconds.
fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

impl Acme {
    /// Starts the ordering thread (the responder comes with the first
    /// order); `sync` asks for a pass when a certificate came (or an order
    /// failed, to report it).
    pub fn start(settings: Settings, metrics: AcmeMetrics, sync: Trigger) -> std::io::Result<Acme> {
        let tokens = Tokens::default();
        let acme = Acme {
            shared: Arc::new(Shared {
                state: Mutex::new(State::default()),
                changed: Condvar::new(),
                store: Store::new(&settings.state_dir),
                metrics,
            }),
        };
        let worker = Worker {
            acme: acme.clone(),
            responder: Some(settings.responder_socket),
            may_order: settings.may_order,
            orders: Arc::new(Orders {
                tokens,
                ca_file: settings.directory_ca_file,
                contact: settings.account_email,
                timeout: settings.order_timeout,
                accounts: Mutex::default(),
                sync,
            }),
        };
        std::thread::Builder::new()
            .name("acme".into())
            .spawn(move || worker.run())?;
        Ok(acme)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.shared
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The certificates the config Envoy serves wants, by load balancer
    /// (what is ordered follows it); reads the store of those seen for the
    /// first time.
    pub fn want(&self, wanted: BTreeMap<String, vpsie_lb_model::Acme>) {
        let mut s = self.lock();
        if s.wanted == wanted {
            return;
        }
        for lb in wanted.keys() {
            self.load_stored(&mut s, lb);
        }
        // A load balancer whose names or directory changed starts afresh:
        // the failures (and the hour's wait) were for another order. The
        // same names in another order, or another `email`, are the same
        // order: they must not reset the wait.
        let before = std::mem::take(&mut s.wanted);
        s.attempts.retain(|lb, _| {
            wanted
                .get(lb)
                .zip(before.get(lb))
                .is_some_and(|(w, b)| schedule::same_order(w, b))
        });
        s.wanted = wanted;
        self.shared.metrics.keep_only(&s.wanted, &s.stored);
        self.shared.changed.notify_all();
    }

    /// Reads `lb`'s store the first time it is asked about, so a restart
    /// serves what was issued before without ordering again.
    fn load_stored(&self, s: &mut State, lb: &str) {
        if !s.read.insert(lb.to_owned()) {
            return;
        }
        match self.shared.store.load(lb) {
            Ok(Some(stored)) => {
                s.stored.insert(lb.to_owned(), stored);
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(phase = "acme", lb_id = %lb, error = %e, "the stored certificate is unusable; ordering a new one")
            }
        }
    }

    /// Where the issued certificate of each of `lbs` is, for a render.
    /// Changes nothing that is ordered: a render may be a trial that Envoy
    /// refuses, and only what Envoy serves says what to order ([`Acme::want`]).
    pub fn issued_for<'a>(
        &self,
        lbs: impl IntoIterator<Item = &'a String>,
    ) -> BTreeMap<String, Issued> {
        let mut s = self.lock();
        let mut out = BTreeMap::new();
        for lb in lbs {
            self.load_stored(&mut s, lb);
            if let Some(c) = s.stored.get(lb) {
                out.insert(lb.clone(), c.paths.clone());
            }
        }
        out
    }

    /// Hands the events queued since the last pass to `reporter`.
    pub fn report(&self, reporter: &mut dyn Reporter) {
        let events = std::mem::take(&mut self.lock().events);
        for e in events {
            reporter.event(&e.lb, e.kind, &e.message, e.metadata);
        }
    }

    /// Each wanted certificate's state, for `/status`.
    pub fn status(&self) -> Vec<CertificateStatus> {
        let s = self.lock();
        let now = now();
        s.wanted
            .iter()
            .map(|(lb, acme)| {
                let stored = s.stored.get(lb);
                let attempts = s.attempts.get(lb);
                let due = matches!(schedule::need(acme, stored, now), Need::Order(_));
                let state = if s.ordering.contains(lb) {
                    "ordering"
                } else if due && s.standby {
                    "standby"
                } else if stored.is_none() {
                    "waiting"
                } else if due {
                    "renewing"
                } else {
                    "valid"
                };
                CertificateStatus {
                    load_balancer: lb.clone(),
                    domains: acme.domains.clone(),
                    state: state.into(),
                    not_after: stored.map(|c| vpsie_lb_core::time::rfc3339(c.not_after)),
                    renew_at: stored.map(|c| {
                        vpsie_lb_core::time::rfc3339(vpsie_lb_model::acme::renew_at(
                            c.not_before,
                            c.not_after,
                        ))
                    }),
                    failures: attempts.map_or(0, |a| a.failures),
                    last_error: attempts.and_then(|a| a.last_error.clone()),
                    next_attempt: attempts
                        .filter(|a| !a.may_try(now))
                        .map(|a| vpsie_lb_core::time::rfc3339(a.not_before)),
                }
            })
            .collect()
    }

    /// Sets the days-to-expiry gauges to now (read at each scrape).
    pub fn refresh_metrics(&self) {
        let s = self.lock();
        self.shared.metrics.expiry(&s.wanted, &s.stored, now());
    }

    /// Stops the ordering thread after the order in flight, if any.
    pub fn stop(&self) {
        self.lock().stopping = true;
        self.shared.changed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use worker::pick;

    fn acme(domains: &[&str]) -> vpsie_lb_model::Acme {
        vpsie_lb_model::Acme::new(
            domains.iter().map(|d| (*d).to_owned()).collect(),
            None,
            "https://127.0.0.1:1/dir".into(),
        )
    }

    #[test]
    fn changed_names_forget_the_failures_of_the_old_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let inbox = vpsie_lb_host::trigger::Inbox::new();
        let mut registry = prometheus_client::registry::Registry::default();
        let handle = Acme::start(
            Settings {
                state_dir: dir.path().to_owned(),
                responder_socket: dir.path().join("acme.sock"),
                directory_ca_file: None,
                // A standby node: the thread never orders in this test.
                may_order: Some(Box::new(|| false)),
                account_email: None,
                order_timeout: Duration::from_secs(180),
            },
            AcmeMetrics::register(&mut registry),
            inbox.trigger(),
        )
        .expect("start");
        let one = |a| BTreeMap::from([("shop".to_owned(), a)]);
        handle.want(one(acme(&["a.example.com"])));
        let failed = Attempts {
            failures: 1,
            not_before: i64::MAX,
            last_error: Some("challenge failed".into()),
        };
        handle.lock().attempts.insert("shop".into(), failed.clone());
        // Another load balancer comes: shop's wait stands.
        let mut two = one(acme(&["a.example.com"]));
        two.insert("other".into(), acme(&["b.example.com"]));
        handle.want(two);
        assert_eq!(handle.lock().attempts.get("shop"), Some(&failed));
        // The thread finds it may not order (it does so on its own time).
        vpsie_lb_testkit::poll_until("standby", Duration::from_secs(10), || {
            match handle.status()[1].state.as_str() {
                "standby" => Ok(()),
                other => Err(other.to_owned()),
            }
        });
        // Its names change: the next order need not wait for the old one's hour.
        handle.want(one(acme(&["a.example.com", "www.example.com"])));
        assert_eq!(handle.lock().attempts.get("shop"), None);
        assert!(
            !dir.path().join("acme.sock").exists(),
            "a standby node bound the responder"
        );
        handle.stop();
    }

    #[test]
    fn regression_an_order_started_before_envoy_served_its_challenge_listener() {
        // Only `want` (called when Envoy confirmed a config, from the
        // reconciler's `settle`) makes an order due; a render does not.
        let mut s = State::default();
        assert!(
            pick(&s, 0).is_err(),
            "ordered before its listener was served"
        );
        s.wanted.insert("shop".into(), acme(&["a.vpsie-lab.net"]));
        assert_eq!(pick(&s, 0).map(|j| j.0), Ok("shop".to_owned()));
        s.ordering.insert("shop".into());
        assert!(pick(&s, 0).is_err(), "a second order for one load balancer");
    }

    #[test]
    fn regression_one_load_balancer_could_take_every_turn_to_order() {
        let mut s = State::default();
        for lb in ["a", "b"] {
            s.wanted
                .insert(lb.into(), acme(&[&format!("{lb}.vpsie-lab.net")]));
        }
        // "a" comes first by name, but "b" has not had a turn yet.
        s.started.insert("a".into(), 100);
        assert_eq!(pick(&s, 200).map(|j| j.0), Ok("b".to_owned()));
        s.started.insert("b".into(), 150);
        assert_eq!(pick(&s, 200).map(|j| j.0), Ok("a".to_owned()));
        // Past its hourly budget, whatever its names, "a" waits.
        s.placed
            .insert("a".into(), vec![100; schedule::ORDERS_PER_WINDOW]);
        assert_eq!(pick(&s, 200).map(|j| j.0), Ok("b".to_owned()));
    }
}

//! Whole passes, in-process, against a fake [`Delivery`]: what a pass does
//! with Envoy's verdicts and with failures that are not Envoy's, without an
//! Envoy. The live tests prove the same against the real one.

use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Value, json};
use vpsie_lb_model::Config;

use crate::apply::{ApplyError, Outcome};
use crate::delivery::{ChangeKind, Delivery, Diff};
use crate::envoy_admin::HostHealth;
use crate::pass::{PassResult, ReconcileError};
use crate::preflight::PreflightError;
use crate::reconcile::{Observe, Reconciler, Settings};
use crate::report::{EventKind, Reporter};
use crate::source::{Fetched, Source};

/// An Envoy that serves what it was last handed, with scripted verdicts.
#[derive(Default)]
pub(crate) struct FakeEnvoy {
    /// (id, port) of each load balancer Envoy serves.
    pub(crate) serving: Vec<(String, u16)>,
    /// What the next applies answer; `Applied` when empty.
    outcomes: VecDeque<Result<Outcome, ApplyError>>,
    /// What the next check answers; `Ok` when empty.
    verdicts: RefCell<VecDeque<PreflightError>>,
    /// Ports Envoy refuses whenever it is handed them: at the check, or
    /// (when `refuse_at_apply`) at the apply.
    refuse_ports: Vec<u16>,
    refuse_at_apply: bool,
    /// Added to every port when rendering: the agent's own settings, which
    /// change the render without any document changing.
    shift: u16,
    pub(crate) applies: usize,
    /// How many candidates were rendered.
    pub(crate) prepares: std::cell::Cell<usize>,
}

impl Delivery for FakeEnvoy {
    type Candidate = Vec<(String, u16)>;

    fn prepare(&self, config: &Config) -> Result<Self::Candidate, String> {
        self.prepares.set(self.prepares.get() + 1);
        Ok(config
            .load_balancers
            .iter()
            .map(|lb| (lb.id.clone(), lb.port + self.shift))
            .collect())
    }

    fn diff(&mut self, next: &Self::Candidate) -> Result<Diff, ReconcileError> {
        Ok(Diff {
            kind: if *next == self.serving {
                ChangeKind::None
            } else {
                ChangeKind::Other
            },
            envoy_serves_nothing: self.serving.is_empty(),
        })
    }

    fn check(&self, _: &Self::Candidate, changed: &Config) -> Result<(), PreflightError> {
        let bad = |port| !self.refuse_at_apply && self.refuse_ports.contains(&port);
        if let Some(lb) = changed.load_balancers.iter().find(|lb| bad(lb.port)) {
            return Err(PreflightError::Rejected(format!("{} cannot load", lb.id)));
        }
        self.verdicts.borrow_mut().pop_front().map_or(Ok(()), Err)
    }

    fn apply(&mut self, next: &Self::Candidate) -> Result<Outcome, ApplyError> {
        self.applies += 1;
        let bad = |port| self.refuse_at_apply && self.refuse_ports.contains(port);
        if let Some((id, _)) = next.iter().find(|(_, port)| bad(port)) {
            let reason = format!("{id} cannot bind");
            let what = "listeners".into();
            return Ok(Outcome::RolledBack(ApplyError::Rejected { what, reason }));
        }
        let outcome = self.outcomes.pop_front().unwrap_or(Ok(Outcome::Applied));
        if matches!(outcome, Ok(Outcome::Applied)) {
            self.serving = next.clone();
        }
        outcome
    }

    fn take_verify_time(&self) -> Duration {
        Duration::ZERO
    }

    fn record(&self, c: &Self::Candidate) -> Result<Vec<(PathBuf, String)>, String> {
        Ok(vec![(PathBuf::from("fake.txt"), format!("{c:?}"))])
    }

    fn listener_names(&self, c: &Self::Candidate) -> Vec<String> {
        c.iter().map(|(id, _)| format!("lb_{id}")).collect()
    }

    fn host_health(&self) -> Option<Vec<HostHealth>> {
        Some(vec![])
    }
}

/// A source that returns the documents it holds.
pub(crate) struct Docs(pub(crate) Vec<Value>);

impl Source for Docs {
    fn fetch(&mut self) -> Fetched {
        let mut out = Fetched::default();
        for d in &self.0 {
            let id = d["id"].as_str().unwrap_or_default().to_owned();
            out.items.insert(id, Ok(d.clone()));
        }
        out
    }
}

/// Keeps the kinds of events reported, and each with its load balancer
/// and message.
#[derive(Default)]
pub(crate) struct Events(Vec<EventKind>, Vec<(String, EventKind, String)>);

impl Events {
    /// The events of load balancer `id`, as (kind, message).
    pub(crate) fn of(&self, id: &str) -> Vec<(EventKind, &str)> {
        let own = self.1.iter().filter(|(lb, _, _)| lb == id);
        own.map(|(_, k, m)| (*k, m.as_str())).collect()
    }
}

impl Reporter for Events {
    fn event(&mut self, id: &str, kind: EventKind, message: &str, _: Value) {
        self.0.push(kind);
        self.1.push((id.to_owned(), kind, message.to_owned()));
    }
    fn error(&mut self, _: &str, _: &str) {}
    fn note(&mut self, _: &str) {}
    fn status(&mut self, _: &str, _: &str, _: &str, _: &str) {}
    fn health(&mut self, _: &str, _: &str, _: bool) {}
}

pub(crate) fn lb(port: u16) -> Value {
    named("web", port)
}

/// Load balancer `id` on `port`.
pub(crate) fn named(id: &str, port: u16) -> Value {
    json!({"id": id, "name": id, "protocol": "http", "port": port,
           "algorithm": "round_robin", "backends": [{"id": "a", "address": "10.0.0.1", "port": 80}]})
}

/// A reconciler over `envoy` with its state in `dir`.
fn reconciler(dir: &std::path::Path, envoy: FakeEnvoy) -> Reconciler<FakeEnvoy> {
    reconciler_with_status(dir, envoy, Default::default())
}

/// [`reconciler`] publishing its `/status` snapshot to `status`.
fn reconciler_with_status(
    dir: &std::path::Path,
    envoy: FakeEnvoy,
    status: std::sync::Arc<std::sync::Mutex<crate::status::AgentStatus>>,
) -> Reconciler<FakeEnvoy> {
    let mut registry = prometheus_client::registry::Registry::default();
    Reconciler::new(
        Settings {
            state_dir: dir.to_path_buf(),
            validate: Default::default(),
            waf_policies: None,
            envoy: crate::drain::EnvoyProcess {
                bootstrap: dir.join("bootstrap.yaml"),
                admin_socket: None,
            },
        },
        envoy,
        Observe {
            metrics: crate::reconcile::ReconcileMetrics::register(&mut registry),
            status,
        },
    )
}

fn refused() -> ApplyError {
    ApplyError::Rejected {
        what: "listeners".into(),
        reason: "port taken".into(),
    }
}

#[test]
fn a_valid_document_is_applied_confirmed_and_saved() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut r = reconciler(dir.path(), FakeEnvoy::default());
    let mut events = Events::default();
    let (result, error) = r.pass(&mut Docs(vec![lb(80)]), &mut events);
    assert_eq!((result, error.is_none()), (PassResult::Applied, true));
    assert_eq!(events.0, [EventKind::ConfigApplied]);
    let saved = crate::state::load(dir.path())
        .expect("state")
        .expect("saved");
    assert_eq!(saved["web"], lb(80));
    // The same document again: nothing handed over.
    let (result, _) = r.pass(&mut Docs(vec![lb(80)]), &mut events);
    assert_eq!(result, PassResult::Unchanged);
    assert_eq!(r.delivery().applies, 1);
}

#[test]
fn envoys_refusal_parks_the_candidate_until_the_document_changes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let envoy = FakeEnvoy {
        outcomes: [Ok(Outcome::RolledBack(refused()))].into(),
        ..Default::default()
    };
    let mut r = reconciler(dir.path(), envoy);
    let mut events = Events::default();
    let (result, error) = r.pass(&mut Docs(vec![lb(80)]), &mut events);
    assert_eq!((result, error.is_none()), (PassResult::RolledBack, true));
    assert_eq!(events.0, [EventKind::ConfigRolledBack]);
    let (result, _) = r.pass(&mut Docs(vec![lb(80)]), &mut events);
    assert_eq!(
        result,
        PassResult::Unchanged,
        "parked: nothing to hand over"
    );
    assert_eq!(
        r.delivery().applies,
        1,
        "a refused candidate is not handed over again"
    );
    let (result, _) = r.pass(&mut Docs(vec![lb(81)]), &mut events);
    assert_eq!(result, PassResult::Applied);
    assert_eq!(r.delivery().applies, 2);
}

#[test]
fn a_failure_that_is_not_envoys_verdict_is_retried_not_parked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let timeout = ApplyError::Timeout {
        what: "lds".into(),
        version: "v".into(),
        timeout: Duration::from_secs(10),
    };
    let envoy = FakeEnvoy {
        outcomes: [Ok(Outcome::Interrupted(timeout))].into(),
        ..Default::default()
    };
    let mut r = reconciler(dir.path(), envoy);
    let mut events = Events::default();
    let (result, error) = r.pass(&mut Docs(vec![lb(80)]), &mut events);
    assert_eq!(result, PassResult::Error);
    assert!(
        matches!(&error, Some(ReconcileError::Apply(e)) if e.is_retryable()),
        "{error:?}"
    );
    assert!(
        events.0.is_empty(),
        "no config_rolled_back for a timeout: {:?}",
        events.0
    );
    let (result, _) = r.pass(&mut Docs(vec![lb(80)]), &mut events);
    assert_eq!(result, PassResult::Applied);
    assert_eq!(r.delivery().applies, 2);
}

#[test]
fn a_preflight_refusal_is_reported_and_parked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let envoy = FakeEnvoy {
        verdicts: RefCell::new([PreflightError::Rejected("bad cipher".into())].into()),
        ..Default::default()
    };
    let mut r = reconciler(dir.path(), envoy);
    let mut events = Events::default();
    let (result, _) = r.pass(&mut Docs(vec![lb(80)]), &mut events);
    assert_eq!(result, PassResult::Rejected);
    assert_eq!(events.0, [EventKind::ConfigRejected]);
    let (result, _) = r.pass(&mut Docs(vec![lb(80)]), &mut events);
    assert_eq!(result, PassResult::Unchanged, "parked: not checked again");
    assert_eq!(r.delivery().applies, 0);
}

#[test]
fn a_lost_state_never_applies_an_incomplete_candidate_over_a_serving_envoy() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Envoy serves two load balancers the agent has no state for.
    let envoy = FakeEnvoy {
        serving: vec![("api".into(), 81), ("web".into(), 80)],
        ..Default::default()
    };
    let mut r = reconciler(dir.path(), envoy);
    let mut events = Events::default();
    // One of them is invalid now: applying the rest would drop it.
    let mut bad = lb(81);
    bad["id"] = json!("api");
    bad["backends"][0]["port"] = json!(0);
    let (result, error) = r.pass(&mut Docs(vec![lb(80), bad]), &mut events);
    assert_eq!(result, PassResult::Error);
    assert!(
        matches!(error, Some(ReconcileError::StateUnknown)),
        "{error:?}"
    );
    assert_eq!(r.delivery().applies, 0);
    // Complete and valid (and what Envoy already serves): the state is
    // known, and saved, from then on.
    let mut api = lb(81);
    api["id"] = json!("api");
    let (result, _) = r.pass(&mut Docs(vec![lb(80), api]), &mut events);
    assert_eq!(result, PassResult::Unchanged);
    let saved = crate::state::load(dir.path())
        .expect("state")
        .expect("saved");
    assert_eq!(saved.len(), 2);
}

#[test]
fn regression_a_refusal_after_a_lost_state_emptied_envoy() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Envoy serves two load balancers the agent has no state for, and
    // refuses port 666 when it is handed it.
    let envoy = FakeEnvoy {
        serving: vec![("api".into(), 81), ("web".into(), 80)],
        ..refusing(true)
    };
    let mut r = reconciler(dir.path(), envoy);
    let mut events = Events::default();
    let mut api = lb(81);
    api["id"] = json!("api");
    let mut web = lb(666);
    web["id"] = json!("web");
    let (result, _) = r.pass(&mut Docs(vec![web, api]), &mut events);
    assert_eq!(result, PassResult::RolledBack);
    // One refused apply, no search on top of nothing: Envoy keeps both.
    assert_eq!(r.delivery().applies, 1);
    assert_eq!(
        r.delivery().serving,
        [("api".to_owned(), 81), ("web".to_owned(), 80)]
    );
}

#[test]
fn last_known_good_keeps_what_the_delivery_records_beside_the_documents() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut r = reconciler(dir.path(), FakeEnvoy::default());
    r.pass(&mut Docs(vec![lb(80)]), &mut Events::default());
    let rec = std::fs::read_to_string(dir.path().join("last-known-good/fake.txt")).expect("record");
    assert!(rec.contains("\"web\""), "{rec}");
    let docs: BTreeMap<String, Value> =
        crate::state::load(dir.path()).expect("load").expect("some");
    assert_eq!(docs.len(), 1);
}

/// Ports 666 and 667 are ones Envoy refuses; `at_apply` says where.
fn refusing(at_apply: bool) -> FakeEnvoy {
    FakeEnvoy {
        refuse_ports: vec![666, 667],
        refuse_at_apply: at_apply,
        ..Default::default()
    }
}

/// The `/status` state of each load balancer, as (id, status).
fn states(
    status: &std::sync::Mutex<crate::status::AgentStatus>,
) -> Vec<(String, String, Option<String>)> {
    let s = status.lock().expect("status");
    s.load_balancers
        .iter()
        .map(|(id, lb)| (id.clone(), lb.status.clone(), lb.last_error.clone()))
        .collect()
}

/// One refused load balancer among several changes, refused at `at_apply`
/// (else at the pre-flight): the others are served in the same pass, only
/// the culprit is parked and told, and later changes are not held back.
fn one_refused_load_balancer_froze_everyones_changes(at_apply: bool) {
    let dir = tempfile::tempdir().expect("tempdir");
    let status = std::sync::Arc::new(std::sync::Mutex::new(Default::default()));
    let mut r = reconciler_with_status(dir.path(), refusing(at_apply), status.clone());
    let mut events = Events::default();
    let (result, _) = r.pass(&mut Docs(vec![named("api", 81), lb(80)]), &mut events);
    assert_eq!(result, PassResult::Applied);

    // Three changes at once, one of them (the new "bad") refused by Envoy.
    let mut events = Events::default();
    let docs = vec![named("api", 82), named("bad", 666), lb(83)];
    let (result, error) = r.pass(&mut Docs(docs), &mut events);
    assert!(error.is_none(), "{error:?}");
    assert_eq!(result, PassResult::Applied, "the good changes are served");
    for id in ["api", "web"] {
        assert_eq!(events.of(id).len(), 1, "{id}: {:?}", events.of(id));
        assert_eq!(events.of(id)[0].0, EventKind::ConfigApplied);
    }
    let bad = events.of("bad");
    assert_eq!(bad.len(), 1, "{bad:?}");
    let want = if at_apply {
        EventKind::ConfigRolledBack
    } else {
        EventKind::ConfigRejected
    };
    assert_eq!(bad[0].0, want);
    assert!(bad[0].1.contains("bad cannot"), "{}", bad[0].1);
    let served: Vec<(String, u16)> = vec![("api".into(), 82), ("web".into(), 83)];
    assert_eq!(r.delivery().serving, served);
    let s = states(&status);
    assert_eq!(s[0], ("api".into(), "active".into(), None));
    assert_eq!((s[1].0.as_str(), s[1].1.as_str()), ("bad", "error"));
    assert!(s[1].2.as_deref().is_some_and(|e| e.contains("bad cannot")));
    assert_eq!(s[2], ("web".into(), "active".into(), None));

    // The culprit stays; a later change of another is one apply, not a search.
    let applies = r.delivery().applies;
    let mut events = Events::default();
    let docs = vec![named("api", 84), named("bad", 666), lb(83)];
    r.pass(&mut Docs(docs), &mut events);
    assert_eq!(r.delivery().applies, applies + 1);
    assert_eq!(events.of("api")[0].0, EventKind::ConfigApplied);
    assert!(events.of("bad").is_empty(), "told once: {:?}", events.0);

    // The culprit's document changes: it is tried again, and served.
    let mut events = Events::default();
    let docs = vec![named("api", 84), named("bad", 668), lb(83)];
    let (result, _) = r.pass(&mut Docs(docs), &mut events);
    assert_eq!(result, PassResult::Applied);
    assert_eq!(events.of("bad")[0].0, EventKind::ConfigApplied);
    assert!(states(&status).iter().all(|(_, s, _)| s == "active"));
}

#[test]
fn regression_one_refused_load_balancer_froze_everyones_changes_at_the_preflight() {
    one_refused_load_balancer_froze_everyones_changes(false);
}

#[test]
fn regression_one_refused_load_balancer_froze_everyones_changes_at_the_apply() {
    one_refused_load_balancer_froze_everyones_changes(true);
}

#[test]
fn two_culprits_among_many_changes_are_both_parked_and_the_rest_served() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut r = reconciler(dir.path(), refusing(true));
    let mut docs: Vec<Value> = (0..8).map(|i| named(&format!("lb{i}"), 90 + i)).collect();
    docs[2] = named("lb2", 666);
    docs[6] = named("lb6", 667);
    let mut events = Events::default();
    let (result, error) = r.pass(&mut Docs(docs), &mut events);
    assert!(error.is_none(), "{error:?}");
    assert_eq!(result, PassResult::Applied);
    for id in ["lb2", "lb6"] {
        let kinds: Vec<EventKind> = events.of(id).iter().map(|(k, _)| *k).collect();
        assert_eq!(kinds, [EventKind::ConfigRolledBack], "{id}");
    }
    let served: Vec<&str> = r
        .delivery()
        .serving
        .iter()
        .map(|(id, _)| id.as_str())
        .collect();
    assert_eq!(served, ["lb0", "lb1", "lb3", "lb4", "lb5", "lb7"]);
    // A bisection, not one apply per load balancer: the whole, then at
    // most two trials per level for each culprit.
    assert!(
        r.delivery().applies <= 1 + 2 * 2 * 3,
        "{}",
        r.delivery().applies
    );
}

#[test]
fn a_change_whose_parts_conflict_alone_is_tried_together() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut r = reconciler(dir.path(), refusing(true));
    let docs = vec![named("a", 80), named("b", 81)];
    r.pass(&mut Docs(docs), &mut Events::default());
    // a and b swap ports (neither is valid alone on top of the other's
    // old version) while c is refused by Envoy.
    let mut events = Events::default();
    let docs = vec![named("a", 81), named("b", 80), named("c", 666)];
    let (result, error) = r.pass(&mut Docs(docs), &mut events);
    assert!(error.is_none(), "{error:?}");
    assert_eq!(result, PassResult::Applied);
    let served: Vec<(String, u16)> = vec![("a".into(), 81), ("b".into(), 80)];
    assert_eq!(r.delivery().serving, served);
    assert_eq!(events.of("c")[0].0, EventKind::ConfigRolledBack);
}

#[test]
fn two_swaps_and_a_culprit_end_with_the_swaps_served_and_the_culprit_parked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut r = reconciler(dir.path(), refusing(true));
    let docs = vec![
        named("a", 80),
        named("b", 81),
        named("c", 82),
        named("d", 83),
    ];
    r.pass(&mut Docs(docs), &mut Events::default());
    let mut events = Events::default();
    let docs = vec![
        named("a", 81),
        named("b", 80),
        named("c", 83),
        named("d", 82),
        named("e", 666),
    ];
    let (_, error) = r.pass(&mut Docs(docs.clone()), &mut events);
    assert!(error.is_none(), "{error:?}");
    assert_eq!(events.of("e")[0].0, EventKind::ConfigRolledBack);
    // Whatever the search reached this pass, the next one serves the rest.
    r.pass(&mut Docs(docs), &mut Events::default());
    let served: Vec<(String, u16)> = ["a", "b", "c", "d"]
        .iter()
        .zip([81, 80, 83, 82])
        .map(|(id, p)| ((*id).to_owned(), p))
        .collect();
    assert_eq!(r.delivery().serving, served);
}

#[test]
fn regression_a_refusal_of_the_agents_own_settings_was_blamed_on_the_next_change() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut r = reconciler(dir.path(), refusing(true));
    let docs = |a: u16| vec![named("a", a), named("z", 90)];
    r.pass(&mut Docs(docs(80)), &mut Events::default());
    // The agent's settings now render z onto a port Envoy refuses (as a
    // newly issued certificate, or a setting, can): no document changed.
    r.delivery_mut().shift = 1000;
    r.delivery_mut().refuse_ports = vec![1090];
    let mut events = Events::default();
    r.pass(&mut Docs(docs(80)), &mut events);
    assert!(events.1.is_empty(), "nobody's document: {:?}", events.1);
    // a changes next: its change is refused with the rest, but a is not
    // blamed, parked or told anything of z's.
    let mut events = Events::default();
    let (result, _) = r.pass(&mut Docs(docs(81)), &mut events);
    assert_eq!(result, PassResult::RolledBack);
    assert!(events.of("a").is_empty(), "{:?}", events.1);
    assert!(!r.is_parked("a"));
}

#[test]
fn regression_a_deleted_load_balancer_kept_its_error_in_the_status() {
    let dir = tempfile::tempdir().expect("tempdir");
    let status = std::sync::Arc::new(std::sync::Mutex::new(Default::default()));
    let mut r = reconciler_with_status(dir.path(), FakeEnvoy::default(), status.clone());
    let mut bad = named("gone", 81);
    bad["backends"][0]["port"] = json!(0);
    r.pass(&mut Docs(vec![lb(80), bad]), &mut Events::default());
    assert_eq!(states(&status)[0].1, "error", "{:?}", states(&status));
    r.pass(&mut Docs(vec![lb(80)]), &mut Events::default());
    let ids: Vec<String> = states(&status).into_iter().map(|(id, _, _)| id).collect();
    assert_eq!(ids, ["web"]);
}

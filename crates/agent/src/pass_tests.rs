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
struct FakeEnvoy {
    /// (id, port) of each load balancer Envoy serves.
    serving: Vec<(String, u16)>,
    /// What the next applies answer; `Applied` when empty.
    outcomes: VecDeque<Result<Outcome, ApplyError>>,
    /// What the next check answers; `Ok` when empty.
    verdicts: RefCell<VecDeque<PreflightError>>,
    applies: usize,
}

impl Delivery for FakeEnvoy {
    type Candidate = Vec<(String, u16)>;

    fn prepare(&self, config: &Config) -> Result<Self::Candidate, String> {
        Ok(config
            .load_balancers
            .iter()
            .map(|lb| (lb.id.clone(), lb.port))
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

    fn check(&self, _: &Self::Candidate, _: &Config) -> Result<(), PreflightError> {
        self.verdicts.borrow_mut().pop_front().map_or(Ok(()), Err)
    }

    fn apply(&mut self, next: &Self::Candidate) -> Result<Outcome, ApplyError> {
        self.applies += 1;
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
struct Docs(Vec<Value>);

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

/// Keeps the kinds of events reported.
#[derive(Default)]
struct Events(Vec<EventKind>);

impl Reporter for Events {
    fn event(&mut self, _: &str, kind: EventKind, _: &str, _: Value) {
        self.0.push(kind);
    }
    fn error(&mut self, _: &str, _: &str) {}
    fn note(&mut self, _: &str) {}
    fn status(&mut self, _: &str, _: &str, _: &str, _: &str) {}
    fn health(&mut self, _: &str, _: &str, _: bool) {}
}

fn lb(port: u16) -> Value {
    json!({"id": "web", "name": "web", "protocol": "http", "port": port,
           "algorithm": "round_robin", "backends": [{"id": "a", "address": "10.0.0.1", "port": 80}]})
}

/// A reconciler over `envoy` with its state in `dir`.
fn reconciler(dir: &std::path::Path, envoy: FakeEnvoy) -> Reconciler<FakeEnvoy> {
    let mut registry = prometheus_client::registry::Registry::default();
    Reconciler::new(
        Settings {
            state_dir: dir.to_path_buf(),
            validate: Default::default(),
            waf_policies: None,
        },
        envoy,
        Observe {
            metrics: crate::reconcile::ReconcileMetrics::register(&mut registry),
            status: Default::default(),
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
    assert_eq!(result, PassResult::RolledBack);
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
    assert_eq!(result, PassResult::RolledBack, "parked: not checked again");
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

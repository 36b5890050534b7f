//! Whole passes whose own IO fails, each port through its in-memory fake:
//! the state store, the connection closer and the WAF sink, and a source
//! whose API refuses a request; keepalived's records, read each pass; and
//! the render cache, which names the served documents instead of copying them. Each failure must end the pass with the
//! right error class, and so the right wait.

use serde_json::{Value, json};

use crate::controller::{Wait, wait_for};
use crate::pass::{PassResult, ReconcileError};
use crate::pass_tests::{Docs, Events, FakeEnvoy, lb};
use crate::reconcile::{Observe, Ports, Reconciler, Settings, fake};
use crate::report::EventKind;
use crate::source::{Fetched, Source};

/// A reconciler over a fake Envoy doing its IO through `ports`.
fn reconciler(ports: Ports) -> Reconciler<FakeEnvoy> {
    reconciler_with_status(ports, Default::default())
}

/// [`reconciler`] publishing its `/status` snapshot to `status`.
fn reconciler_with_status(
    ports: Ports,
    status: std::sync::Arc<std::sync::Mutex<crate::status::AgentStatus>>,
) -> Reconciler<FakeEnvoy> {
    let mut registry = prometheus_client::registry::Registry::default();
    let nowhere = std::path::PathBuf::from("/nonexistent/vpsie-lb");
    let settings = Settings {
        state_dir: nowhere.clone(),
        validate: Default::default(),
        waf_policies: None,
        envoy: crate::drain::EnvoyProcess {
            bootstrap: nowhere.join("bootstrap.yaml"),
            admin_socket: None,
        },
    };
    let observe = Observe {
        metrics: crate::reconcile::ReconcileMetrics::register(&mut registry),
        status,
    };
    Reconciler::with_ports(settings, FakeEnvoy::default(), observe, ports)
}

/// Load balancer `web` with backends at 10.0.0.1 and, when `both`,
/// 10.0.0.2, each keeping its connections 5 s after it is removed.
fn draining_web(both: bool) -> Value {
    let backend =
        |id: &str, last: u8| json!({"id": id, "address": format!("10.0.0.{last}"), "port": 80});
    let mut backends = vec![backend("a", 1)];
    if both {
        backends.push(backend("b", 2));
    }
    json!({"id": "web", "name": "web", "protocol": "http", "port": 80,
           "algorithm": "round_robin", "deregistration_delay": 5, "backends": backends})
}

#[test]
fn a_state_store_that_fails_leaves_envoy_serving_and_retries_soon() {
    let store = fake::Memory::default();
    store.0.lock().expect("store").failing = Some("no space left on device".into());
    let mut r = reconciler(Ports {
        store: Box::new(store.clone()),
        ..fake::ports()
    });
    let mut events = Events::default();
    let (result, error) = r.pass(&mut Docs(vec![lb(80)]), &mut events);
    assert_eq!(result, PassResult::Applied, "envoy confirmed the change");
    assert!(
        matches!(&error, Some(ReconcileError::SaveState(m)) if m.starts_with("last-known-good:") && m.contains("no space left")),
        "{error:?}"
    );
    assert_eq!(wait_for(error.as_ref()), Wait::Backoff);
    assert_eq!(r.delivery().serving, [("web".to_owned(), 80)]);
    assert!(store.0.lock().expect("store").docs.is_none());
    // The disk recovers: the next pass saves what Envoy serves, and is clean.
    store.0.lock().expect("store").failing = None;
    let (result, error) = r.pass(&mut Docs(vec![lb(80)]), &mut events);
    assert_eq!((result, error.is_none()), (PassResult::Unchanged, true));
    let held = store.0.lock().expect("store");
    assert_eq!(held.docs.as_ref().map(|d| d["web"].clone()), Some(lb(80)));
}

#[test]
fn a_drains_record_that_cannot_be_saved_retries_soon() {
    let store = fake::Memory::default();
    store.0.lock().expect("store").failing_drains = Some("read-only file system".into());
    let mut r = reconciler(Ports {
        store: Box::new(store.clone()),
        ..fake::ports()
    });
    let mut events = Events::default();
    let (result, error) = r.pass(&mut Docs(vec![draining_web(true)]), &mut events);
    assert_eq!(result, PassResult::Applied);
    assert!(
        matches!(&error, Some(ReconcileError::SaveState(m)) if m.starts_with("drains:")),
        "{error:?}"
    );
    assert_eq!(wait_for(error.as_ref()), Wait::Backoff);
    assert!(
        store.0.lock().expect("store").docs.is_some(),
        "last-known-good was saved"
    );
}

#[test]
fn a_closer_that_fails_is_reported_on_the_drain_and_not_retried() {
    let clock = fake::Manual::default();
    let closer = fake::Closer {
        failing: Some("ss: operation not permitted".into()),
        ..Default::default()
    };
    let mut r = reconciler(Ports {
        closer: Box::new(closer.clone()),
        clock: Box::new(clock.clone()),
        ..fake::ports()
    });
    let mut events = Events::default();
    for both in [true, false] {
        let (_, error) = r.pass(&mut Docs(vec![draining_web(both)]), &mut events);
        assert!(error.is_none(), "{error:?}");
    }
    assert!(
        closer.asked.lock().expect("asked").is_empty(),
        "still draining"
    );
    clock.advance(6_000);
    let (result, error) = r.pass(&mut Docs(vec![draining_web(false)]), &mut events);
    assert_ne!(result, PassResult::Error);
    assert_eq!(wait_for(error.as_ref()), Wait::Poll, "{error:?}");
    let asked = closer.asked.lock().expect("asked").clone();
    assert_eq!(asked, [("10.0.0.2".parse().expect("ip"), 80)]);
    let drained: Vec<&str> = events
        .of("web")
        .into_iter()
        .filter(|(k, _)| *k == EventKind::BackendDrained)
        .map(|(_, m)| m)
        .collect();
    assert_eq!(drained.len(), 1, "{drained:?}");
    assert!(
        drained[0].contains("operation not permitted"),
        "{drained:?}"
    );
}

#[test]
fn a_waf_sink_that_fails_hands_envoy_nothing_and_retries_soon() {
    let waf = fake::Waf {
        failing: Some("/etc/envoy/waf.json: read-only file system".into()),
        ..Default::default()
    };
    let mut r = reconciler(Ports {
        waf: Some(Box::new(waf.clone())),
        ..fake::ports()
    });
    let (result, error) = r.pass(&mut Docs(vec![lb(80)]), &mut Events::default());
    assert_eq!(result, PassResult::Error);
    assert!(
        matches!(&error, Some(ReconcileError::WafPolicies(m)) if m.contains("read-only")),
        "{error:?}"
    );
    assert_eq!(wait_for(error.as_ref()), Wait::Backoff);
    assert_eq!(r.delivery().applies, 0, "envoy was handed a change");
}

/// A source whose API answers `status` for each load balancer named.
struct Answers(Vec<(&'static str, u16)>);

impl Source for Answers {
    fn fetch(&mut self) -> Fetched {
        let mut out = Fetched::default();
        let mut answered = false;
        for (id, status) in &self.0 {
            let e = crate::api::ApiError::Status {
                what: format!("GET /loadbalancers/{id}"),
                status: *status,
                body: "bad request".into(),
                retry_after: None,
            };
            let e = crate::source::classify(e, &mut out, &mut answered);
            out.items.insert((*id).into(), Err(e));
        }
        out
    }
}

#[test]
fn regression_a_400_on_fetch_was_retried_after_a_backoff() {
    let mut r = reconciler(fake::ports());
    let mut events = Events::default();
    r.pass(&mut Docs(vec![lb(80)]), &mut events);
    let (_, error) = r.pass(&mut Answers(vec![("web", 400)]), &mut events);
    assert!(
        matches!(error, Some(ReconcileError::Fetch { .. })),
        "{error:?}"
    );
    assert_eq!(wait_for(error.as_ref()), Wait::Poll);
    assert_eq!(
        r.delivery().serving,
        [("web".to_owned(), 80)],
        "last good serves on"
    );
    // A 400 for one load balancer does not hold back the retry of another
    // whose fetch failed in a way a retry can fix.
    let (_, error) = r.pass(&mut Answers(vec![("web", 400), ("api", 503)]), &mut events);
    assert_eq!(wait_for(error.as_ref()), Wait::Backoff, "{error:?}");
}

#[test]
fn each_vrrp_state_change_is_reported_once_per_load_balancer() {
    let vrrp = fake::Vrrp::default();
    let set = |state: &str| {
        *vrrp.0.lock().expect("vrrp") = vec![("vpsie_lb_1".into(), state.into())];
    };
    set("backup");
    let mut r = reconciler(fake::ports()).with_ha_records(Some(Box::new(vrrp.clone())));
    let mut events = Events::default();
    let changes = |events: &Events| {
        let of = events.of("web");
        of.into_iter()
            .filter(|(k, _)| *k == EventKind::HaStateChanged)
            .map(|(_, m)| m.to_owned())
            .collect::<Vec<_>>()
    };
    r.pass(&mut Docs(vec![lb(80)]), &mut events);
    assert!(
        changes(&events).is_empty(),
        "the first look is the baseline"
    );
    set("master");
    r.pass(&mut Docs(vec![lb(80)]), &mut events);
    r.pass(&mut Docs(vec![lb(80)]), &mut events);
    let said = changes(&events);
    assert_eq!(said.len(), 1, "{said:?}");
    assert!(said[0].contains("backup -> master"), "{said:?}");
}

#[test]
fn a_render_of_what_is_served_is_reused_without_a_copy_of_the_documents() {
    let mut r = reconciler(fake::ports());
    let mut events = Events::default();
    let (result, _) = r.pass(&mut Docs(vec![lb(80)]), &mut events);
    assert_eq!(result, PassResult::Applied);
    assert_eq!(r.render_keeps_a_copy(), Some(false));
    // Served now: the render is named by the served generation, and the
    // same documents again are not rendered again.
    for _ in 0..3 {
        let (result, _) = r.pass(&mut Docs(vec![lb(80)]), &mut events);
        assert_eq!(result, PassResult::Unchanged);
    }
    assert_eq!(r.delivery().prepares.get(), 1);
    // Other documents are rendered, and so are the first ones again.
    r.pass(&mut Docs(vec![lb(81)]), &mut events);
    r.pass(&mut Docs(vec![lb(80)]), &mut events);
    assert_eq!(r.delivery().prepares.get(), 3);
    assert_eq!(r.delivery().serving, [("web".to_owned(), 80)]);
}

#[test]
fn the_status_names_the_newest_fetched_version_without_keeping_served_copies() {
    let status = std::sync::Arc::new(std::sync::Mutex::new(Default::default()));
    let mut r = reconciler_with_status(fake::ports(), status.clone());
    let mut events = Events::default();
    let versions = || {
        let s: crate::status::AgentStatus = status.lock().expect("status").clone();
        let lb = s.load_balancers.get("web").expect("web").clone();
        (lb.status, lb.desired_version, lb.applied_version)
    };
    let v = |doc: &Value| crate::status::version_of(doc);
    let mut bad = lb(81);
    bad["backends"][0]["port"] = json!(0);
    for (doc, status, desired, applied) in [
        (lb(80), "active", v(&lb(80)), v(&lb(80))),
        (lb(81), "active", v(&lb(81)), v(&lb(81))),
        (bad.clone(), "degraded", v(&bad), v(&lb(81))),
        (lb(81), "active", v(&lb(81)), v(&lb(81))),
    ] {
        r.pass(&mut Docs(vec![doc.clone()]), &mut events);
        assert_eq!(versions(), (status.to_owned(), desired, applied), "{doc}");
        let copies = usize::from(status != "active");
        assert_eq!(r.fetched_copies(), copies, "{doc}");
    }
}

//! [`XdsDelivery`] against a [`Hub`] answered by a scripted Envoy: the
//! paths of a change that live tests reach only by luck.

use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

use serde_json::{Value, json};
use vpsie_lb_envoy::Target as Translation;
use vpsie_lb_model::{ValidateOptions, validate};

use super::*;
use crate::xds::hub::Sent;
use ResourceType::{Cluster, Endpoints, Listener, Route};

/// What the scripted Envoy answers to one response.
enum Reply {
    Ack,
    Nack(&'static str),
    /// No answer, and the response is not taken: a hung Envoy.
    Silent,
}

/// Decides the reply to each response, by type and content.
type Script = Box<dyn FnMut(ResourceType, &Sent) -> Reply + Send>;

/// An Envoy on one stream of `hub`, answering as its script says until
/// dropped. Like a real one, it asks for endpoints only once it has their
/// cluster, and for a route only once it has the listener that names it
/// (an http load balancer's resources all share the name `lb_<id>`), in
/// the same round as the listener: the listener warms until its route comes.
struct ScriptedEnvoy {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Vec<(ResourceType, Sent)>>>,
}

impl ScriptedEnvoy {
    fn connect(hub: &Arc<Hub>, mut script: Script) -> Self {
        let (hub, stop) = (hub.clone(), Arc::new(AtomicBool::new(false)));
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            let id = hub.connect();
            let mut taken = Vec::new();
            let mut nonce = 0u64;
            while !stopped.load(Ordering::Relaxed) {
                hub.with_stream(id, |view, snap| {
                    let Some(snap) = snap else { return };
                    for kind in [Cluster, Endpoints, Listener, Route] {
                        subscribe_like_envoy(view);
                        let sent = Sent {
                            generation: snap.generation,
                            ..view.pending(kind, &snap.resources)
                        };
                        if sent.upserts.is_empty() && sent.removed.is_empty() {
                            continue;
                        }
                        let error = match script(kind, &sent) {
                            Reply::Silent => continue,
                            Reply::Ack => None,
                            Reply::Nack(why) => Some(why.to_owned()),
                        };
                        nonce += 1;
                        view.record_sent(nonce.to_string(), sent.clone());
                        if error.is_none() {
                            taken.push((kind, sent));
                        }
                        view.record_answer(&nonce.to_string(), error);
                    }
                });
                std::thread::sleep(Duration::from_millis(1));
            }
            hub.disconnect(id);
            taken
        });
        Self {
            stop,
            thread: Some(thread),
        }
    }

    /// Every response the Envoy took, in order, after hanging up.
    fn hang_up(mut self) -> Vec<(ResourceType, Sent)> {
        self.stop.store(true, Ordering::Relaxed);
        let thread = self.thread.take().expect("running");
        thread.join().expect("scripted envoy")
    }
}

impl Drop for ScriptedEnvoy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Wildcard listeners and clusters; endpoints and routes by name, once
/// what names them arrived.
fn subscribe_like_envoy(view: &mut hub::StreamView) {
    view.subscribe(Cluster, &[], &[]);
    view.subscribe(Listener, &[], &[]);
    for (parent, child) in [(Cluster, Endpoints), (Listener, Route)] {
        let names: Vec<String> = view
            .known
            .keys()
            .filter(|(k, _)| *k == parent)
            .map(|(_, n)| n.clone())
            .collect();
        view.subscribe(child, &names, &[]);
    }
}

/// Acknowledges everything.
fn ack_all() -> Script {
    Box::new(|_, _| Reply::Ack)
}

/// Refuses any response carrying `name` of type `kind`.
fn refuse(kind: ResourceType, name: &'static str) -> Script {
    Box::new(move |k, sent| {
        if k == kind && sent.upserts.contains_key(&(kind, name.to_owned())) {
            Reply::Nack("port already in use")
        } else {
            Reply::Ack
        }
    })
}

/// An http load balancer `id` on `port`.
fn http(id: &str, port: u16) -> Value {
    json!({"id": id, "name": id, "protocol": "http", "port": port, "algorithm": "round_robin",
           "backends": [{"id": "a", "address": "10.0.0.1", "port": 80}]})
}

/// A delivery over a fresh hub, waiting `timeout` per step.
fn delivery(timeout: Duration) -> XdsDelivery {
    let admin = EnvoyAdmin::new("127.0.0.1:9".parse().expect("address")).expect("admin");
    let translate = TranslateOptions::new(Translation::Ads);
    XdsDelivery::new(
        Arc::new(Hub::default()),
        translate,
        admin,
        PathBuf::new(),
        timeout,
    )
    .expect("delivery")
}

/// The candidate for `docs`.
fn candidate(delivery: &XdsDelivery, docs: &[Value]) -> Resources {
    let config = validate(&Value::Array(docs.to_vec()), &ValidateOptions::default())
        .expect("valid")
        .config;
    delivery.prepare(&config).expect("prepare")
}

/// What the hub serves, as names and versions.
fn served(delivery: &XdsDelivery) -> Option<Resources> {
    delivery.hub().snapshot().map(|s| Resources(s.resources))
}

/// Where the first response carrying `key` as an upsert (or, with
/// `removed`, a removal) sits in `taken`.
fn position(taken: &[(ResourceType, Sent)], key: (ResourceType, &str), removed: bool) -> usize {
    let key = (key.0, key.1.to_owned());
    taken
        .iter()
        .position(|(_, s)| {
            if removed {
                s.removed.contains(&key)
            } else {
                s.upserts.contains_key(&key)
            }
        })
        .unwrap_or_else(|| panic!("{key:?} never taken (removed: {removed})"))
}

const PATIENT: Duration = Duration::from_secs(30);

#[test]
fn regression_an_http_load_balancer_added_to_a_running_agent_never_got_its_listener() {
    let mut xds = delivery(PATIENT);
    let envoy = ScriptedEnvoy::connect(xds.hub(), ack_all());
    let one = candidate(&xds, &[http("a", 8080)]);
    assert!(matches!(xds.apply(&one), Ok(Outcome::Applied)));
    let two = candidate(&xds, &[http("a", 8080), http("b", 8081)]);
    let outcome = xds.apply(&two);
    assert!(matches!(outcome, Ok(Outcome::Applied)), "{outcome:?}");
    assert!(served(&xds) == Some(two));
    let taken = envoy.hang_up();
    let listener = position(&taken, (Listener, "lb_b"), false);
    assert!(position(&taken, (Cluster, "lb_b"), false) < listener);
    assert!(position(&taken, (Endpoints, "lb_b"), false) < listener);
    assert!(listener < position(&taken, (Route, "lb_b"), false));
}

#[test]
fn a_nack_in_the_middle_of_a_change_rolls_back_to_the_old_set() {
    let mut xds = delivery(PATIENT);
    let envoy = ScriptedEnvoy::connect(xds.hub(), refuse(Listener, "lb_b"));
    let one = candidate(&xds, &[http("a", 8080)]);
    assert!(matches!(xds.apply(&one), Ok(Outcome::Applied)));
    let two = candidate(&xds, &[http("a", 8080), http("b", 8081)]);
    match xds.apply(&two) {
        Ok(Outcome::RolledBack(ApplyError::Rejected { what, reason })) => {
            assert!(what.contains("lb_b"), "{what}");
            assert_eq!(reason, "port already in use");
        }
        other => panic!("not rolled back: {other:?}"),
    }
    assert!(served(&xds) == Some(one));
    let taken = envoy.hang_up();
    // The cluster made for the refused listener was taken, then undone.
    let made = position(&taken, (Cluster, "lb_b"), false);
    assert!(made < position(&taken, (Cluster, "lb_b"), true));
}

/// A change of which `refuse` makes Envoy refuse the listener of a new
/// load balancer and then answer its undo as `then`: the result of the apply.
fn undo_answered(then: Reply) -> Result<Outcome, ApplyError> {
    let mut xds = delivery(PATIENT);
    let mut refused = false;
    let script: Script = Box::new(move |kind, sent| {
        if refused {
            // Everything after the refusal is the undo.
            return match &then {
                Reply::Ack => Reply::Ack,
                Reply::Nack(why) => Reply::Nack(why),
                Reply::Silent => Reply::Silent,
            };
        }
        if kind == Listener && sent.upserts.contains_key(&(Listener, "lb_b".to_owned())) {
            refused = true;
            return Reply::Nack("port already in use");
        }
        Reply::Ack
    });
    let _envoy = ScriptedEnvoy::connect(xds.hub(), script);
    let one = candidate(&xds, &[http("a", 8080)]);
    assert!(matches!(xds.apply(&one), Ok(Outcome::Applied)));
    // Only the undo waits out a short timeout.
    xds.timeout = Duration::from_millis(300);
    let two = candidate(&xds, &[http("a", 8080), http("b", 8081)]);
    let outcome = xds.apply(&two);
    // Streams still converge to what was served before.
    assert!(served(&xds) == Some(one));
    outcome
}

#[test]
fn an_undo_step_envoy_never_confirms_is_an_error_not_a_rollback() {
    match undo_answered(Reply::Silent) {
        Err(e @ ApplyError::Undo { .. }) => {
            let text = e.to_string();
            assert!(text.contains("the undo of"), "{text}");
            assert!(text.contains("port already in use"), "{text}");
            assert!(e.is_retryable(), "{text}");
        }
        other => panic!("an unconfirmed undo was reported as {other:?}"),
    }
}

#[test]
fn an_undo_step_envoy_refuses_is_retried_not_parked() {
    match undo_answered(Reply::Nack("cluster in use")) {
        Err(e @ ApplyError::Undo { .. }) => {
            assert!(e.to_string().contains("cluster in use"), "{e}");
            assert!(e.is_retryable(), "{e}");
        }
        other => panic!("a refused undo was reported as {other:?}"),
    }
}

#[test]
fn a_refused_first_publish_is_retracted() {
    let mut xds = delivery(PATIENT);
    let _envoy = ScriptedEnvoy::connect(xds.hub(), refuse(Cluster, "lb_a"));
    let one = candidate(&xds, &[http("a", 8080)]);
    match xds.apply(&one) {
        Ok(Outcome::RolledBack(ApplyError::Rejected { what, .. })) => {
            assert_eq!(what, "the first config");
        }
        other => panic!("not refused: {other:?}"),
    }
    assert!(served(&xds).is_none(), "a refused set is still served");
}

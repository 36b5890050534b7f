//! The hub's per-stream bookkeeping and its waits, without a stream.

use super::*;
use envoy_types::pb::google::protobuf::Any;
use vpsie_lb_envoy::Resource;

fn set(items: &[(ResourceType, &str, &str)]) -> ResourceSet {
    items
        .iter()
        .map(|(k, n, v)| {
            (
                (*k, (*n).to_owned()),
                Arc::new(Resource {
                    any: Any::default(),
                    version: (*v).to_owned(),
                }),
            )
        })
        .collect()
}

fn key(k: ResourceType, n: &str) -> Key {
    (k, n.to_owned())
}

use ResourceType::{Cluster, Endpoints, Route, Secret};

#[test]
fn a_stream_gets_what_it_wants_and_lacks_and_loses_what_is_gone() {
    let mut view = StreamView::default();
    view.subscribe(Cluster, &[], &[]);
    view.subscribe(Endpoints, &["lb_a".into()], &[]);
    view.known.insert(key(Cluster, "lb_a"), "1".into());
    view.known.insert(key(Cluster, "lb_old"), "1".into());
    let snap = set(&[
        (Cluster, "lb_a", "1"),
        (Cluster, "lb_b", "2"),
        (Endpoints, "lb_a", "3"),
        (Endpoints, "lb_b", "4"),
    ]);
    let clusters = view.pending(Cluster, &snap);
    assert_eq!(
        clusters.upserts,
        BTreeMap::from([(key(Cluster, "lb_b"), "2".into())])
    );
    assert_eq!(clusters.removed, vec![key(Cluster, "lb_old")]);
    let endpoints = view.pending(Endpoints, &snap);
    assert_eq!(
        endpoints.upserts.keys().collect::<Vec<_>>(),
        [&key(Endpoints, "lb_a")],
        "only what envoy subscribed to"
    );
}

#[test]
fn a_refused_version_is_never_sent_again_but_the_previous_one_is() {
    let mut view = StreamView::default();
    view.subscribe(Cluster, &[], &[]);
    let bad = set(&[(Cluster, "lb_a", "bad")]);
    let sent = view.pending(Cluster, &bad);
    view.record_sent(
        "n1".into(),
        Sent {
            generation: 2,
            ..sent
        },
    );
    view.record_answer("n1", Some("port in use".into()));
    assert_eq!(
        view.nack,
        Some(Nack {
            generation: 2,
            message: "port in use".into(),
            keys: [key(Cluster, "lb_a")].into(),
        })
    );
    assert!(view.pending(Cluster, &bad).upserts.is_empty());
    let good = set(&[(Cluster, "lb_a", "good")]);
    assert_eq!(view.pending(Cluster, &good).upserts.len(), 1);
}

#[test]
fn an_ack_confirms_and_an_unknown_nonce_is_ignored() {
    let mut view = StreamView::default();
    view.subscribe(Cluster, &[], &[]);
    let snap = set(&[(Cluster, "lb_a", "1")]);
    view.record_sent("n1".into(), view.pending(Cluster, &snap));
    view.record_answer("other", None);
    assert!(!view.confirmed(&key(Cluster, "lb_a"), Some(&"1".into())));
    view.record_answer("n1", None);
    assert!(view.confirmed(&key(Cluster, "lb_a"), Some(&"1".into())));
    assert!(view.confirmed(&key(Cluster, "lb_b"), None));
}

#[test]
fn a_secret_nothing_uses_yet_needs_no_confirmation() {
    let view = StreamView::default();
    assert!(view.confirmed(&key(Secret, "lb_a_cert"), Some(&"1".into())));
    assert!(!view.confirmed(&key(Cluster, "lb_a"), Some(&"1".into())));
}

#[test]
fn regression_a_listener_added_after_the_first_push_waited_for_a_route_envoy_had_not_asked_for() {
    // Routes come a step before their listener; Envoy asks for a route
    // only once a listener names it, so the step waited for an answer
    // that could not come and the new listener never followed.
    let mut view = StreamView::default();
    assert!(view.confirmed(&key(Route, "lb_new"), Some(&"1".into())));
    view.subscribe(Route, &["lb_new".into()], &[]);
    assert!(!view.confirmed(&key(Route, "lb_new"), Some(&"1".into())));
}

#[test]
fn a_wait_ends_on_the_ack_on_a_refusal_or_on_time() {
    let hub = Arc::new(Hub::default());
    let want = vec![(key(Cluster, "lb_a"), Some("1".to_owned()))];
    assert_eq!(
        hub.wait(1, &want, Duration::ZERO),
        Err(WaitError::Timeout { connected: false })
    );
    let id = hub.connect();
    let generation = hub.publish(Arc::new(set(&[(Cluster, "lb_a", "1")])));
    let answer = {
        let hub = hub.clone();
        std::thread::spawn(move || {
            hub.with_stream(id, |view, snap| {
                view.subscribe(Cluster, &[], &[]);
                let snap = snap.expect("published");
                let sent = view.pending(Cluster, &snap.resources);
                view.record_sent("n1".into(), sent);
                view.record_answer("n1", None);
            });
        })
    };
    assert_eq!(hub.wait(generation, &want, Duration::from_secs(30)), Ok(()));
    answer.join().expect("thread");
    hub.with_stream(id, |view, _| {
        view.record_sent(
            "n2".into(),
            Sent {
                generation: generation + 1,
                upserts: [(key(Cluster, "lb_a"), "2".to_owned())].into(),
                ..Sent::default()
            },
        );
        view.record_answer("n2", Some("no".into()));
    });
    let want2 = vec![(key(Cluster, "lb_a"), Some("2".to_owned()))];
    assert_eq!(
        hub.wait(generation + 1, &want2, Duration::from_secs(30)),
        Err(WaitError::Refused("no".into()))
    );
    // A NACK of what a wait does not wait for is not its refusal.
    let other = vec![(key(Cluster, "lb_b"), None)];
    assert_eq!(
        hub.wait(generation + 1, &other, Duration::from_secs(30)),
        Ok(())
    );
}

#[test]
fn regression_a_version_refused_before_was_waited_for_until_the_timeout() {
    let hub = Hub::default();
    let id = hub.connect();
    let bad = Arc::new(set(&[(Cluster, "lb_a", "bad")]));
    let generation = hub.publish(bad.clone());
    hub.with_stream(id, |view, _| {
        view.subscribe(Cluster, &[], &[]);
        let sent = view.pending(Cluster, &bad);
        view.record_sent("n1".into(), Sent { generation, ..sent });
        view.record_answer("n1", Some("cannot bind".into()));
    });
    // The same version in a later publish is not sent again, and waiting
    // for it ends at once as a refusal.
    let generation = hub.publish(bad.clone());
    let waited = hub.wait(generation, &confirm_all(&bad), Duration::from_secs(3600));
    assert_eq!(
        waited,
        Err(WaitError::Refused("refused before: cannot bind".into()))
    );
    // A change of other resources forgives nothing of it...
    hub.forgive(&[key(Cluster, "lb_b")].into());
    let pending = hub.with_stream(id, |view, _| view.pending(Cluster, &bad));
    assert_eq!(pending.map(|p| p.upserts.len()), Some(0));
    // ...and is not refused by its NACK.
    let other = Arc::new(set(&[(Cluster, "lb_a", "bad"), (Cluster, "lb_b", "1")]));
    let generation = hub.publish(other.clone());
    let b = [(key(Cluster, "lb_b"), Some("1".to_owned()))];
    let waited = hub.wait(generation, &b, Duration::from_millis(50));
    assert!(
        matches!(waited, Err(WaitError::Timeout { .. })),
        "{waited:?}"
    );
    // A change of it forgives it: it is sent again, to be judged again.
    hub.forgive(&[key(Cluster, "lb_a")].into());
    let pending = hub.with_stream(id, |view, _| view.pending(Cluster, &bad));
    assert_eq!(pending.map(|p| p.upserts.len()), Some(1));
}

//! The one change planner: from the resources Envoy has to the ones it
//! should have, the make-before-break steps, how they are grouped into
//! what is published at once, and what kind of change it is. The xDS
//! delivery publishes its phases, and the pre-flight and the `plan`
//! command read its kind, so the rules are written once.

use vpsie_lb_envoy::{ResourceSet, ResourceType, Step, make_before_break};

/// What Envoy does for a change, from the least disruptive to the most.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// Nothing changes.
    None,
    /// Only endpoints change: no drain, connections stay.
    EndpointsOnly,
    /// Certificates or keys change: no drain; new handshakes use them.
    SecretsOnly,
    /// Routes change (a canary weight, a new route): no drain, connections stay.
    RoutesOnly,
    /// A listener is added (HTTP/3's, a redirect port) and none changes:
    /// no drain, connections stay.
    ListenerAdded,
    /// A cluster is added, rebuilt or removed: upstream connections
    /// re-open, no listener drains.
    ClusterRebuilt,
    /// A listener changes or goes: its open client connections drain.
    ListenerDrains,
}

/// A planned change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The steps, make before break ([`make_before_break`]).
    pub steps: Vec<Step>,
    /// The most disruptive thing the steps do.
    pub kind: Kind,
}

impl Change {
    /// The steps grouped into what is published at once ([`phases`]).
    pub fn phases(&self) -> Vec<Vec<Step>> {
        phases(self.steps.clone())
    }
}

/// Plans the change from `old` to `new`.
pub fn plan(old: &ResourceSet, new: &ResourceSet) -> Change {
    let steps = make_before_break(old, new);
    let kind = steps
        .iter()
        .map(|s| step_kind(old, s))
        .max()
        .unwrap_or(Kind::None);
    Change { steps, kind }
}

/// What one step does to Envoy.
fn step_kind(old: &ResourceSet, step: &Step) -> Kind {
    match step.kind {
        ResourceType::Endpoints => Kind::EndpointsOnly,
        ResourceType::Secret => Kind::SecretsOnly,
        ResourceType::Route => Kind::RoutesOnly,
        ResourceType::Cluster => Kind::ClusterRebuilt,
        ResourceType::Listener => {
            let changed = step
                .upsert
                .iter()
                .any(|n| old.contains_key(&(ResourceType::Listener, n.clone())));
            if changed || !step.remove.is_empty() {
                Kind::ListenerDrains
            } else {
                Kind::ListenerAdded
            }
        }
    }
}

/// The steps of a change grouped into what is published at once: the
/// additions of secrets, clusters and endpoints together (a changed cluster
/// warms until its endpoints come, and Envoy may hold the cluster's ACK
/// until then, so they cannot wait for each other), then each later step
/// alone. Route configurations and listeners come only after what they
/// use is confirmed, and removals only after nothing uses what they remove.
pub fn phases(steps: Vec<Step>) -> Vec<Vec<Step>> {
    let mut out: Vec<Vec<Step>> = Vec::new();
    let mut making = true;
    for step in steps {
        // A route names clusters: sent with them, it could reach Envoy
        // before the cluster it names is warm, and answer 503 meanwhile.
        let dependency = step.remove.is_empty()
            && matches!(
                step.kind,
                ResourceType::Secret | ResourceType::Cluster | ResourceType::Endpoints
            );
        match out.last_mut() {
            Some(last) if making && dependency => last.push(step),
            _ => {
                making = dependency;
                out.push(vec![step]);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use envoy_types::pb::google::protobuf::Any;
    use vpsie_lb_envoy::Resource;

    use super::*;
    use ResourceType::*;

    fn step(kind: ResourceType, upsert: &[&str], remove: &[&str]) -> Step {
        let own = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect();
        Step {
            kind,
            upsert: own(upsert),
            remove: own(remove),
        }
    }

    /// A set of (type, name, version).
    fn set(items: &[(ResourceType, &str, &str)]) -> ResourceSet {
        items
            .iter()
            .map(|(k, n, v)| {
                let r = Resource {
                    any: Any::default(),
                    version: (*v).to_owned(),
                };
                ((*k, (*n).to_owned()), Arc::new(r))
            })
            .collect()
    }

    #[test]
    fn regression_a_route_was_published_with_the_new_cluster_it_names() {
        let steps = vec![
            step(Cluster, &["new"], &[]),
            step(Endpoints, &["new"], &[]),
            step(Route, &["r"], &[]),
            step(Listener, &["l"], &[]),
        ];
        let got: Vec<Vec<ResourceType>> = phases(steps)
            .iter()
            .map(|p| p.iter().map(|s| s.kind).collect())
            .collect();
        assert_eq!(got, [vec![Cluster, Endpoints], vec![Route], vec![Listener]]);
    }

    #[test]
    fn dependencies_go_together_and_listeners_and_removals_alone() {
        let steps = vec![
            step(Secret, &["s"], &[]),
            step(Cluster, &["c"], &[]),
            step(Endpoints, &["c"], &[]),
            step(Listener, &["l"], &["old"]),
            step(Cluster, &[], &["old"]),
            step(Endpoints, &[], &["old"]),
        ];
        let kinds: Vec<Vec<ResourceType>> = phases(steps)
            .iter()
            .map(|p| p.iter().map(|s| s.kind).collect())
            .collect();
        assert_eq!(
            kinds,
            [
                vec![Secret, Cluster, Endpoints],
                vec![Listener],
                vec![Cluster],
                vec![Endpoints]
            ]
        );
        assert!(phases(vec![]).is_empty());
    }

    /// One case: the change from `old` to `new` is of `kind`.
    fn check(old: &[(ResourceType, &str, &str)], new: &[(ResourceType, &str, &str)], kind: Kind) {
        assert_eq!(plan(&set(old), &set(new)).kind, kind, "{old:?} -> {new:?}");
    }

    const WEB: &[(ResourceType, &str, &str)] = &[
        (Cluster, "lb_web", "c1"),
        (Endpoints, "lb_web", "e1"),
        (Route, "lb_web", "r1"),
        (Listener, "lb_web", "l1"),
    ];

    #[test]
    fn the_kind_is_the_most_disruptive_step() {
        let with = |changes: &[(ResourceType, &'static str, &'static str)]| {
            let mut out: Vec<_> = WEB
                .iter()
                .filter(|(k, n, _)| !changes.iter().any(|(ck, cn, _)| ck == k && cn == n))
                .copied()
                .collect();
            out.extend(changes.iter().filter(|(_, _, v)| !v.is_empty()));
            out
        };
        check(WEB, WEB, Kind::None);
        check(
            WEB,
            &with(&[(Endpoints, "lb_web", "e2")]),
            Kind::EndpointsOnly,
        );
        check(
            WEB,
            &with(&[(Secret, "lb_web_cert", "s1")]),
            Kind::SecretsOnly,
        );
        check(WEB, &with(&[(Route, "lb_web", "r2")]), Kind::RoutesOnly);
        let quic = [(Listener, "lb_web~quic", "q1")];
        check(WEB, &with(&quic), Kind::ListenerAdded);
        let pool = [(Cluster, "lb_web~next", "c1"), (Route, "lb_web", "r2")];
        check(WEB, &with(&pool), Kind::ClusterRebuilt);
        check(
            WEB,
            &with(&[(Listener, "lb_web", "l2")]),
            Kind::ListenerDrains,
        );
        check(
            WEB,
            &with(&[(Listener, "lb_web", "")]),
            Kind::ListenerDrains,
        );
        check(&[], WEB, Kind::ClusterRebuilt);
    }
}

//! Envoy resources as an xDS server hands them over: keyed by type and
//! name, each with a version that is the hash of its canonical JSON, and
//! the make-before-break order of a change between two sets. Pure.

use std::collections::BTreeMap;
use std::sync::Arc;

use envoy_types::pb::google::protobuf::Any;

use crate::render::{RenderError, content_hash, to_json};
use crate::{EnvoyResources, pb};

/// The resource types we serve, in the order a change hands them over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ResourceType {
    /// Certificates and client CAs (SDS).
    Secret,
    /// Clusters (CDS).
    Cluster,
    /// Endpoints of EDS clusters.
    Endpoints,
    /// Route configurations (RDS).
    Route,
    /// Listeners (LDS).
    Listener,
}

impl ResourceType {
    /// Every type, in the order a stream is served them.
    pub const ALL: [ResourceType; 5] = [
        ResourceType::Secret,
        ResourceType::Cluster,
        ResourceType::Endpoints,
        ResourceType::Route,
        ResourceType::Listener,
    ];

    /// The type Envoy means by `url`, if it is one we serve.
    pub fn from_type_url(url: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.type_url() == url)
    }

    /// The type URL Envoy subscribes with.
    pub fn type_url(self) -> &'static str {
        match self {
            ResourceType::Secret => {
                "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
            }
            ResourceType::Cluster => "type.googleapis.com/envoy.config.cluster.v3.Cluster",
            ResourceType::Endpoints => {
                "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
            }
            ResourceType::Route => "type.googleapis.com/envoy.config.route.v3.RouteConfiguration",
            ResourceType::Listener => "type.googleapis.com/envoy.config.listener.v3.Listener",
        }
    }
}

/// One resource, packed as Envoy receives it.
#[derive(Debug, Clone, PartialEq)]
pub struct Resource {
    /// The resource in an `Any`.
    pub any: Any,
    /// First 16 hex digits of the SHA-256 of its canonical JSON: equal
    /// resources always have equal versions, whatever order maps encode in.
    pub version: String,
}

/// Every resource of a config, by type and name. Shared, so the copies a
/// server keeps (a per-load-balancer cache, the snapshot it serves, the
/// steps of a change) cost a pointer each, not the resource.
pub type ResourceSet = BTreeMap<(ResourceType, String), Arc<Resource>>;

/// `msg` packed, with its content version (`salt` mixed in when given).
fn pack<M: prost::Message + prost::Name>(
    msg: &M,
    salt: Option<&str>,
) -> Result<Arc<Resource>, RenderError> {
    let any = pb::any(msg);
    let mut version = content_hash(to_json(&any)?.to_string().as_bytes());
    if let Some(salt) = salt {
        version = content_hash(format!("{version}{salt}").as_bytes());
    }
    Ok(Arc::new(Resource { any, version }))
}

fn insert<M: prost::Message + prost::Name>(
    set: &mut ResourceSet,
    kind: ResourceType,
    name: &str,
    msg: &M,
) -> Result<(), RenderError> {
    set.insert((kind, name.to_owned()), pack(msg, None)?);
    Ok(())
}

/// The resources of `r`, each with its content version.
pub fn resource_set(r: &EnvoyResources) -> Result<ResourceSet, RenderError> {
    let mut set = ResourceSet::new();
    for s in &r.secrets {
        insert(&mut set, ResourceType::Secret, &s.name, s)?;
    }
    for c in &r.clusters {
        insert(&mut set, ResourceType::Cluster, &c.name, c)?;
    }
    for e in &r.endpoints {
        // A changed cluster is a new cluster to Envoy, warming until its
        // endpoints arrive; over delta xDS they arrive only if their version
        // changed. So the endpoints' version carries their cluster's.
        let cluster = set
            .get(&(ResourceType::Cluster, e.cluster_name.clone()))
            .map(|c| c.version.clone());
        let packed = pack(e, cluster.as_deref())?;
        set.insert((ResourceType::Endpoints, e.cluster_name.clone()), packed);
    }
    for rc in &r.routes {
        insert(&mut set, ResourceType::Route, &rc.name, rc)?;
    }
    for l in &r.listeners {
        insert(&mut set, ResourceType::Listener, &l.name, l)?;
    }
    Ok(set)
}

impl ResourceType {
    /// A plural noun for files and messages: `listeners`, `clusters`, …
    pub fn plural(self) -> &'static str {
        match self {
            ResourceType::Secret => "secrets",
            ResourceType::Cluster => "clusters",
            ResourceType::Endpoints => "endpoints",
            ResourceType::Route => "routes",
            ResourceType::Listener => "listeners",
        }
    }
}

/// What an xDS server would serve for `set`, for people to read: one YAML
/// document per type (`<plural>.yaml`), each a list of name, version and
/// resource. Types with no resource are left out.
pub fn render_resource_set(set: &ResourceSet) -> Result<Vec<(String, String)>, RenderError> {
    let mut by_type: BTreeMap<ResourceType, Vec<serde_json::Value>> = BTreeMap::new();
    for ((kind, name), r) in set {
        by_type.entry(*kind).or_default().push(serde_json::json!({
            "name": name,
            "version": r.version,
            "resource": to_json(&r.any)?,
        }));
    }
    by_type
        .into_iter()
        .map(|(kind, items)| {
            let yaml = serde_norway::to_string(&items).map_err(|e| RenderError::Convert {
                message: kind.plural().into(),
                reason: e.to_string(),
            })?;
            Ok((format!("{}.yaml", kind.plural()), yaml))
        })
        .collect()
}

/// One step of a change: resources of one type to add or update, and
/// names of that type to remove.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// The type.
    pub kind: ResourceType,
    /// Names added or changed, in name order.
    pub upsert: Vec<String>,
    /// Names removed, in name order.
    pub remove: Vec<String>,
}

/// The steps from `old` to `new`, make before break: secrets, clusters and
/// endpoints that are new or changed come first (old clusters stay, so no
/// listener ever points at a missing one), then listeners are added,
/// changed and removed, and only then are clusters, endpoints and secrets
/// that nothing uses any more removed. Empty steps are left out; no change
/// gives no step.
pub fn make_before_break(old: &ResourceSet, new: &ResourceSet) -> Vec<Step> {
    let names = |set: &ResourceSet, kind: ResourceType, pick: &dyn Fn(&str) -> bool| {
        set.keys()
            .filter(|(k, n)| *k == kind && pick(n))
            .map(|(_, n)| n.clone())
            .collect::<Vec<_>>()
    };
    let changed = |kind| {
        names(new, kind, &|n: &str| {
            old.get(&(kind, n.to_owned())).map(|r| &r.version)
                != new.get(&(kind, n.to_owned())).map(|r| &r.version)
        })
    };
    let gone = |kind| {
        names(old, kind, &|n: &str| {
            !new.contains_key(&(kind, n.to_owned()))
        })
    };
    let step = |kind, upsert: Vec<String>, remove: Vec<String>| Step {
        kind,
        upsert,
        remove,
    };
    use ResourceType::{Cluster, Endpoints, Listener, Route, Secret};
    [
        step(Secret, changed(Secret), vec![]),
        step(Cluster, changed(Cluster), vec![]),
        step(Endpoints, changed(Endpoints), vec![]),
        step(Route, changed(Route), vec![]),
        step(Listener, changed(Listener), gone(Listener)),
        step(Route, vec![], gone(Route)),
        step(Cluster, vec![], gone(Cluster)),
        step(Endpoints, vec![], gone(Endpoints)),
        step(Secret, vec![], gone(Secret)),
    ]
    .into_iter()
    .filter(|s| !s.upsert.is_empty() || !s.remove.is_empty())
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{FilesLayout, Target, TranslateOptions, translate};
    use serde_json::json;
    use vpsie_lb_model::{ValidateOptions, validate};

    /// The resources of load balancers given as (id, port, backend weights).
    fn set(lbs: &[(&str, u16, &[u32])]) -> ResourceSet {
        set_with("round_robin", lbs)
    }

    /// [`set`] with another algorithm.
    fn set_with(algorithm: &str, lbs: &[(&str, u16, &[u32])]) -> ResourceSet {
        let docs: Vec<serde_json::Value> = lbs
            .iter()
            .map(|(id, port, weights)| {
                json!({"id": id, "name": id, "protocol": "http", "port": port, "algorithm": algorithm,
                       "backends": weights.iter().enumerate().map(|(i, w)| json!({
                           "id": format!("b{i}"), "address": format!("10.0.0.{}", i + 1), "port": 80, "weight": w
                       })).collect::<Vec<_>>()})
            })
            .collect();
        let config = validate(&json!(docs), &ValidateOptions::default())
            .expect("valid")
            .config;
        let opts = TranslateOptions::new(Target::Files(FilesLayout::new("/x")));
        resource_set(&translate(&config, &opts)).expect("resources")
    }

    fn steps(
        old: &ResourceSet,
        new: &ResourceSet,
    ) -> Vec<(ResourceType, Vec<String>, Vec<String>)> {
        make_before_break(old, new)
            .into_iter()
            .map(|s| (s.kind, s.upsert, s.remove))
            .collect()
    }

    fn names(n: &[&str]) -> Vec<String> {
        n.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn versions_are_content_hashes_and_stable() {
        let (a, b) = (set(&[("web", 80, &[1])]), set(&[("web", 80, &[1])]));
        // Protobuf bytes may differ (map fields encode in random order);
        // the versions, hashed over canonical JSON, never do.
        let versions = |s: &ResourceSet| {
            s.iter()
                .map(|(k, r)| (k.clone(), r.version.clone()))
                .collect::<Vec<_>>()
        };
        assert_eq!(versions(&a), versions(&b));
        let c = set(&[("web", 80, &[2])]);
        let key = (ResourceType::Endpoints, "lb_web".to_owned());
        assert_ne!(a[&key].version, c[&key].version);
        let key = (ResourceType::Cluster, "lb_web".to_owned());
        assert_eq!(
            a[&key].version, c[&key].version,
            "a weight is an endpoint matter"
        );
        assert_eq!(a[&key].any.type_url, ResourceType::Cluster.type_url());
    }

    #[test]
    fn regression_a_changed_cluster_warmed_forever_waiting_for_its_endpoints() {
        // Over delta xDS, Envoy rebuilds a changed cluster and waits for its
        // endpoints, which it is sent only when their version changes.
        let a = set(&[("web", 80, &[1])]);
        let b = set_with("random", &[("web", 80, &[1])]);
        let key = |kind| (kind, "lb_web".to_owned());
        assert_ne!(
            a[&key(ResourceType::Cluster)].version,
            b[&key(ResourceType::Cluster)].version
        );
        assert_ne!(
            a[&key(ResourceType::Endpoints)].version,
            b[&key(ResourceType::Endpoints)].version,
            "same endpoints, new cluster: the endpoints must be sent again"
        );
    }

    #[test]
    fn a_new_load_balancer_brings_its_cluster_endpoints_and_routes_before_its_listener() {
        use ResourceType::*;
        let web = names(&["lb_web"]);
        assert_eq!(
            steps(&ResourceSet::new(), &set(&[("web", 80, &[1])])),
            [
                (Cluster, web.clone(), vec![]),
                (Endpoints, web.clone(), vec![]),
                (Route, web.clone(), vec![]),
                (Listener, web, vec![]),
            ]
        );
    }

    #[test]
    fn a_weight_change_touches_endpoints_only_and_no_change_nothing() {
        let old = set(&[("web", 80, &[1, 1])]);
        assert_eq!(
            steps(&old, &set(&[("web", 80, &[1, 3])])),
            [(ResourceType::Endpoints, names(&["lb_web"]), vec![])]
        );
        assert!(steps(&old, &old).is_empty());
    }

    #[test]
    fn removal_drops_the_listener_before_its_routes_cluster_and_endpoints() {
        use ResourceType::*;
        let old = set(&[("api", 81, &[1]), ("web", 80, &[1])]);
        let api = names(&["lb_api"]);
        assert_eq!(
            steps(&old, &set(&[("web", 80, &[1])])),
            [
                (Listener, vec![], api.clone()),
                (Route, vec![], api.clone()),
                (Cluster, vec![], api.clone()),
                (Endpoints, vec![], api),
            ]
        );
    }
}

//! The dynamic files of the files delivery, rendered per load balancer so
//! a caller can keep the parts of unchanged load balancers and render only
//! what changed: at 100 load balancers of 50 routes, rendering every route
//! configuration again took two seconds per change.

use std::path::PathBuf;

use crate::render::{RenderError, RenderedFile, discovery_file, file_from_json, to_json};
use crate::{EnvoyResources, FilesLayout, pb};

/// One load balancer's share of the dynamic files: its listeners and
/// clusters, rendered, for the shared LDS and CDS files; and its own files
/// (secrets, endpoints, route configurations).
#[derive(Debug, Clone, PartialEq)]
pub struct FileParts {
    listeners: Vec<(String, serde_json::Value)>,
    clusters: Vec<(String, serde_json::Value)>,
    files: Vec<RenderedFile>,
}

/// The parts of `resources` (one load balancer's, or a whole config's).
pub fn render_parts(
    resources: &EnvoyResources,
    layout: &FilesLayout,
) -> Result<FileParts, RenderError> {
    let mut files = Vec::new();
    for s in &resources.secrets {
        files.push(discovery_file(
            layout.sds_file(&s.name),
            std::slice::from_ref(s),
        )?);
    }
    for e in &resources.endpoints {
        let path = layout.eds_file(&e.cluster_name);
        files.push(discovery_file(path, std::slice::from_ref(e))?);
    }
    for r in &resources.routes {
        files.push(discovery_file(
            layout.rds_file(&r.name),
            std::slice::from_ref(r),
        )?);
    }
    let named = |name: &str, json: Result<serde_json::Value, RenderError>| {
        json.map(|j| (name.to_owned(), j))
    };
    Ok(FileParts {
        listeners: resources
            .listeners
            .iter()
            .map(|l| named(&l.name, to_json(&pb::any(l))))
            .collect::<Result<_, _>>()?,
        clusters: resources
            .clusters
            .iter()
            .map(|c| named(&c.name, to_json(&pb::any(c))))
            .collect::<Result<_, _>>()?,
        files,
    })
}

/// Every dynamic file of `parts` together, in the order they must reach
/// Envoy: secrets and endpoints, clusters, route configurations, listeners.
/// Within a kind, files and resources are in name order, so the result
/// does not depend on how the parts were split.
pub fn assemble_files<'a>(
    parts: impl IntoIterator<Item = &'a FileParts>,
    layout: &FilesLayout,
) -> Vec<RenderedFile> {
    let (mut listeners, mut clusters, mut own) = (Vec::new(), Vec::new(), Vec::new());
    for p in parts {
        listeners.extend(p.listeners.iter().cloned());
        clusters.extend(p.clusters.iter().cloned());
        own.extend(p.files.iter().cloned());
    }
    let rank = |f: &RenderedFile| -> (u8, PathBuf) {
        let kind = if f.path.starts_with(layout.sds_root()) {
            0
        } else if f.path.starts_with(layout.eds_root()) {
            1
        } else {
            2
        };
        (kind, f.path.clone())
    };
    own.sort_by_cached_key(rank);
    let routes_at = own.partition_point(|f| rank(f).0 < 2);
    let routes = own.split_off(routes_at);
    let list = |mut items: Vec<(String, serde_json::Value)>| {
        items.sort_by(|a, b| a.0.cmp(&b.0));
        items.into_iter().map(|(_, v)| v).collect::<Vec<_>>()
    };
    use envoy_types::pb::envoy::config::{cluster::v3::Cluster, listener::v3::Listener};
    use prost::Name;
    own.push(file_from_json(
        layout.cds_file(),
        &Cluster::type_url(),
        list(clusters),
    ));
    own.extend(routes);
    own.push(file_from_json(
        layout.lds_file(),
        &Listener::type_url(),
        list(listeners),
    ));
    own
}

/// Every dynamic file of `resources`, in the order they must reach Envoy.
pub fn render_files(
    resources: &EnvoyResources,
    layout: &FilesLayout,
) -> Result<Vec<RenderedFile>, RenderError> {
    Ok(assemble_files([&render_parts(resources, layout)?], layout))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Target, TranslateOptions, translate, translate_lb};
    use vpsie_lb_model::{ValidateOptions, validate};

    #[test]
    fn parts_per_load_balancer_assemble_to_the_files_of_the_whole() {
        let doc = serde_json::json!([
            {"id": "b", "protocol": "http", "port": 81,
             "backends": [{"id": "x", "address": "10.0.0.2", "port": 80}],
             "pools": [{"id": "p", "backends": [{"id": "y", "address": "10.0.0.3", "port": 80}]}],
             "routes": [{"id": "r", "path_prefix": "/p/", "forward": [{"pool": "p"}]}]},
            {"id": "a", "protocol": "tcp", "port": 80,
             "backends": [{"id": "z", "address": "10.0.0.1", "port": 80}]},
        ]);
        let config = validate(&doc, &ValidateOptions::default())
            .expect("valid")
            .config;
        let layout = FilesLayout::new("/x");
        let opts = TranslateOptions::new(Target::Files(layout.clone()));
        let whole = render_files(&translate(&config, &opts), &layout).expect("whole");
        let parts: Vec<FileParts> = config
            .load_balancers
            .iter()
            .rev()
            .map(|lb| render_parts(&translate_lb(lb, &opts), &layout).expect("part"))
            .collect();
        assert_eq!(assemble_files(&parts, &layout), whole);
    }
}

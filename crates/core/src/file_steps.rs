//! Plans how to move Envoy from the files it has to the files it should
//! have, in an order that never leaves a listener pointing at a missing
//! cluster. Pure: file sets in, steps out.
//!
//! Order: changed secrets and endpoints first; then clusters as the union of
//! old and new (so every route and listener, old or new, finds its
//! cluster); then route configurations; then listeners; then clusters
//! without the ones no longer used; then removal of stale endpoint, secret
//! and route directories. A step is present only when it
//! changes something, so an unchanged config does no IO at all.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use vpsie_lb_envoy::{FileKind, FilesLayout, RenderedFile, file_from_json};

/// Dynamic files by path.
pub type FileSet = BTreeMap<PathBuf, RenderedFile>;

/// Builds a set from rendered files.
pub fn file_set(files: Vec<RenderedFile>) -> FileSet {
    files.into_iter().map(|f| (f.path.clone(), f)).collect()
}

/// The steps of one change.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// New or changed SDS and EDS files.
    pub dependencies: Vec<RenderedFile>,
    /// Old clusters plus new ones, before any route may use a new one.
    pub clusters_before: Option<RenderedFile>,
    /// New or changed route configurations: after the clusters they name,
    /// before the listeners that read them.
    pub routes: Vec<RenderedFile>,
    /// The new listeners.
    pub listeners: Option<RenderedFile>,
    /// Exactly the new clusters, once no listener uses the old ones.
    pub clusters_after: Option<RenderedFile>,
    /// EDS, SDS and RDS directories that nothing refers to any more.
    pub prune: Vec<PathBuf>,
}

impl Plan {
    /// Whether the plan changes nothing.
    pub fn is_empty(&self) -> bool {
        *self == Plan::default()
    }

    /// Whether the plan writes endpoint files and nothing else. Judged by
    /// comparing with a plan of only its dependencies, so a step added to
    /// `Plan` later counts as "something else" without being listed here
    /// (route configurations once slipped through such a list).
    pub fn is_endpoints_only(&self, layout: &FilesLayout) -> bool {
        let only_dependencies = Plan {
            dependencies: self.dependencies.clone(),
            ..Plan::default()
        };
        *self == only_dependencies
            && self
                .dependencies
                .iter()
                .all(|f| matches!(layout.kind_of(&f.path), Some(FileKind::Endpoints(_))))
    }
}

/// Something in a file set is not what `render_files` makes.
#[derive(Debug, thiserror::Error)]
#[error("plan: {0}")]
pub struct PlanError(String);

/// Plans the move from `current` (what Envoy has) to `next`.
pub fn plan(layout: &FilesLayout, current: &FileSet, next: &FileSet) -> Result<Plan, PlanError> {
    let changed = |f: &RenderedFile| {
        current
            .get(&f.path)
            .is_none_or(|c| c.contents != f.contents)
    };
    let mut p = Plan::default();
    let lds = layout.lds_file();
    let cds = layout.cds_file();

    for f in next.values() {
        if f.path == lds || f.path == cds || !changed(f) {
            continue;
        }
        match layout.kind_of(&f.path) {
            Some(FileKind::Routes(_)) => p.routes.push(f.clone()),
            _ => p.dependencies.push(f.clone()),
        }
    }
    if let Some(f) = next.get(&lds).filter(|f| changed(f)) {
        p.listeners = Some(f.clone());
    }
    if let Some(new) = next.get(&cds).filter(|f| changed(f)) {
        let union = match current.get(&cds) {
            Some(old) => union_of(&cds, old, new)?,
            None => new.clone(),
        };
        let adds_or_changes = current
            .get(&cds)
            .is_none_or(|old| old.contents != union.contents);
        if adds_or_changes {
            p.clusters_before = Some(union.clone());
        }
        if union.contents != new.contents {
            p.clusters_after = Some(new.clone());
        }
    }
    for dir in resource_dirs(layout, current) {
        if !next.keys().any(|k| k.starts_with(&dir)) {
            p.prune.push(dir);
        }
    }
    Ok(p)
}

/// The EDS and SDS directories the files of `set` live in.
fn resource_dirs(layout: &FilesLayout, set: &FileSet) -> Vec<PathBuf> {
    set.keys()
        .filter(|p| layout.kind_of(p).is_some_and(|k| k.is_per_resource()))
        .filter_map(|p| p.parent().map(Path::to_path_buf))
        .collect()
}

/// Clusters of `old` and `new` together; `new` wins where both name one.
fn union_of(
    path: &Path,
    old: &RenderedFile,
    new: &RenderedFile,
) -> Result<RenderedFile, PlanError> {
    let parse = |f: &RenderedFile| -> Result<(String, Vec<serde_json::Value>), PlanError> {
        let v: serde_json::Value = serde_json::from_str(&f.contents)
            .map_err(|e| PlanError(format!("{}: {e}", f.path.display())))?;
        let type_url = v["type_url"].as_str().unwrap_or_default().to_owned();
        let resources = v["resources"].as_array().cloned().unwrap_or_default();
        Ok((type_url, resources))
    };
    let (type_url, old_resources) = parse(old)?;
    let (_, new_resources) = parse(new)?;
    let mut by_name: BTreeMap<String, serde_json::Value> = BTreeMap::new();
    for r in old_resources.into_iter().chain(new_resources) {
        let name = r["name"]
            .as_str()
            .ok_or_else(|| PlanError(format!("{}: a resource has no name", path.display())))?
            .to_owned();
        by_name.insert(name, r);
    }
    Ok(file_from_json(
        path.to_path_buf(),
        &type_url,
        by_name.into_values().collect(),
    ))
}

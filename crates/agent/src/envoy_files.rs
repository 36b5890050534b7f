//! The files Envoy watches, read back from disk ([`read_file_set`]). The
//! pure steps from the files Envoy has to the files it should have are the
//! core's ([`vpsie_lb_core::file_steps`], re-exported here).

use std::path::PathBuf;

use vpsie_lb_envoy::{FilesLayout, RenderedFile};

pub use vpsie_lb_core::file_steps::{FileSet, Plan, PlanError, file_set, plan};

// What the plan tests, written when this module held the planner, use.
#[cfg(test)]
use vpsie_lb_envoy::file_from_json;

/// The `version_info` of a file we rendered. Our files are canonical JSON
/// with sorted keys, so it is the last key: finding it there saves parsing
/// every file on every pass (13 MB at 1,000 load balancers). Anything else
/// (a file edited by hand) is parsed.
fn version_of(contents: &str) -> String {
    const KEY: &str = "\"version_info\"";
    let last = contents.rfind(KEY).and_then(|i| {
        let rest = contents[i + KEY.len()..]
            .trim_start()
            .strip_prefix(':')?
            .trim_start()
            .strip_prefix('"')?;
        let (v, after) = rest.split_once('"')?;
        (!v.contains('\\') && after.trim() == "}").then(|| v.to_owned())
    });
    last.unwrap_or_else(|| {
        serde_json::from_str::<serde_json::Value>(contents)
            .ok()
            .and_then(|v| v["version_info"].as_str().map(str::to_owned))
            .unwrap_or_default()
    })
}

/// Where a per-resource file of a given name lives (`FilesLayout::eds_file`, …).
type FileOf = fn(&FilesLayout, &str) -> PathBuf;

/// Reads the dynamic files currently under `layout` (what Envoy was given last).
pub fn read_file_set(layout: &FilesLayout) -> std::io::Result<FileSet> {
    let mut files = vec![layout.lds_file(), layout.cds_file()];
    // One watched directory per endpoint set, secret and route
    // configuration, named after it.
    let per_resource: [(PathBuf, FileOf); 3] = [
        (layout.eds_root(), FilesLayout::eds_file),
        (layout.sds_root(), FilesLayout::sds_file),
        (layout.rds_root(), FilesLayout::rds_file),
    ];
    for (root, file) in per_resource {
        let Ok(entries) = std::fs::read_dir(root) else {
            continue;
        };
        for e in entries {
            let name = e?.file_name().to_string_lossy().into_owned();
            files.push(file(layout, &name));
        }
    }
    let mut set = FileSet::new();
    for path in files {
        let contents = match std::fs::read_to_string(&path) {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        let version = version_of(&contents);
        set.insert(
            path.clone(),
            RenderedFile {
                path,
                contents,
                version,
            },
        );
    }
    Ok(set)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regression_route_files_were_not_read_back_so_every_apply_rewrote_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let layout = FilesLayout::new(dir.path());
        let rds = file_from_json(
            layout.rds_file("lb_a"),
            "type.googleapis.com/envoy.config.route.v3.RouteConfiguration",
            vec![serde_json::json!({"name": "lb_a"})],
        );
        std::fs::create_dir_all(layout.rds_dir("lb_a")).expect("mkdir");
        std::fs::write(&rds.path, &rds.contents).expect("write");
        let current = read_file_set(&layout).expect("read");
        assert_eq!(current.get(&rds.path), Some(&rds));
        let next = file_set(vec![rds]);
        assert!(plan(&layout, &current, &next).expect("plan").is_empty());
        // And a route configuration nothing renders any more is pruned.
        let gone = plan(&layout, &current, &FileSet::new()).expect("plan");
        assert_eq!(gone.prune, [layout.rds_dir("lb_a")]);
    }

    #[test]
    fn version_of_reads_the_last_key_and_falls_back_to_parsing() {
        assert_eq!(
            version_of(r#"{"resources":[],"version_info":"abc123"}"#),
            "abc123"
        );
        assert_eq!(
            version_of("{\n  \"resources\": [],\n  \"version_info\": \"v1\"\n}\n"),
            "v1"
        );
        // Not last (edited by hand): parsed.
        assert_eq!(version_of(r#"{"version_info":"v2","resources":[]}"#), "v2");
        assert_eq!(
            version_of(r#"{"resources":[{"version_info":"inner"}],"x":1}"#),
            ""
        );
        assert_eq!(version_of("not json"), "");
    }
    use serde_json::json;

    fn layout() -> FilesLayout {
        FilesLayout::new("/x")
    }

    fn cds(names: &[(&str, u32)]) -> RenderedFile {
        let resources = names
            .iter()
            .map(|(n, t)| json!({"@type": "type.googleapis.com/envoy.config.cluster.v3.Cluster", "name": n, "connect_timeout": format!("{t}s")}))
            .collect();
        file_from_json(
            layout().cds_file(),
            "type.googleapis.com/envoy.config.cluster.v3.Cluster",
            resources,
        )
    }

    fn lds(names: &[&str]) -> RenderedFile {
        let resources = names.iter().map(|n| json!({"name": n})).collect();
        file_from_json(
            layout().lds_file(),
            "type.googleapis.com/envoy.config.listener.v3.Listener",
            resources,
        )
    }

    fn eds(cluster: &str, weight: u32) -> RenderedFile {
        file_from_json(
            layout().eds_file(cluster),
            "eds",
            vec![json!({"name": cluster, "w": weight})],
        )
    }

    fn names(f: &Option<RenderedFile>) -> Vec<String> {
        let Some(f) = f else { return vec![] };
        let v: serde_json::Value = serde_json::from_str(&f.contents).expect("json");
        v["resources"]
            .as_array()
            .expect("resources")
            .iter()
            .map(|r| r["name"].as_str().expect("name").to_owned())
            .collect()
    }

    fn check(current: Vec<RenderedFile>, next: Vec<RenderedFile>) -> Plan {
        plan(&layout(), &file_set(current), &file_set(next)).expect("plan")
    }

    #[test]
    fn unchanged_config_plans_nothing() {
        let files = vec![cds(&[("a", 1)]), lds(&["a"]), eds("a", 1)];
        assert!(check(files.clone(), files).is_empty());
    }

    #[test]
    fn adding_a_load_balancer_adds_its_cluster_before_its_listener() {
        let p = check(
            vec![cds(&[("a", 1)]), lds(&["a"])],
            vec![cds(&[("a", 1), ("b", 1)]), lds(&["a", "b"]), eds("b", 1)],
        );
        assert_eq!(p.dependencies.len(), 1);
        assert_eq!(names(&p.clusters_before), vec!["a", "b"]);
        assert_eq!(names(&p.listeners), vec!["a", "b"]);
        assert_eq!(p.clusters_after, None, "nothing to remove afterwards");
    }

    #[test]
    fn removing_a_load_balancer_drops_its_cluster_after_its_listener() {
        let p = check(
            vec![
                cds(&[("a", 1), ("b", 1)]),
                lds(&["a", "b"]),
                eds("a", 1),
                eds("b", 1),
            ],
            vec![cds(&[("a", 1)]), lds(&["a"]), eds("a", 1)],
        );
        assert_eq!(
            p.clusters_before, None,
            "the union is what Envoy already has"
        );
        assert_eq!(names(&p.listeners), vec!["a"]);
        assert_eq!(names(&p.clusters_after), vec!["a"]);
        assert_eq!(p.prune, vec![layout().eds_dir("b")]);
    }

    #[test]
    fn replacing_a_load_balancer_keeps_the_old_cluster_until_listeners_move() {
        let p = check(
            vec![cds(&[("a", 1)]), lds(&["a"])],
            vec![cds(&[("b", 1)]), lds(&["b"])],
        );
        assert_eq!(names(&p.clusters_before), vec!["a", "b"]);
        assert_eq!(names(&p.clusters_after), vec!["b"]);
    }

    #[test]
    fn a_backend_change_touches_only_endpoints() {
        let p = check(
            vec![cds(&[("a", 1)]), lds(&["a"]), eds("a", 1)],
            vec![cds(&[("a", 1)]), lds(&["a"]), eds("a", 2)],
        );
        assert_eq!(p.dependencies, vec![eds("a", 2)]);
        assert_eq!(
            (p.clusters_before, p.listeners, p.clusters_after),
            (None, None, None)
        );
    }

    #[test]
    fn a_changed_cluster_is_written_once_before_listeners() {
        let p = check(
            vec![cds(&[("a", 1)]), lds(&["a"])],
            vec![cds(&[("a", 2)]), lds(&["a"])],
        );
        assert_eq!(p.clusters_before, Some(cds(&[("a", 2)])));
        assert_eq!(p.clusters_after, None);
        assert_eq!(p.listeners, None);
    }
}

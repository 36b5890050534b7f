//! No module circles in any crate of the workspace: among a crate's
//! top-level modules (a path `crate::x` makes an edge to `x`, and so does
//! each first name of a group `crate::{x, y}`), and among the files of one
//! directory (`super::y` to a sibling `y`). A circle means neither side can
//! move to a crate of its own, and it is how a feature ends up reaching
//! into every other; nine were found and broken, and this keeps new ones
//! out.
//!
//! Read from the sources as text: `use` and path expressions outside
//! comments and outside a file's trailing `#[cfg(test)] mod tests`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use vpsie_lb_testkit::sources::{product_code, product_sources};

/// The identifiers that follow `prefix` (`crate::`, `super::`) in `code`,
/// including each first name of a group such as `crate::{a::B, c}`.
fn after(code: &str, prefix: &str) -> BTreeSet<String> {
    let ident = |s: &str| -> String {
        s.trim_start()
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect()
    };
    code.match_indices(prefix)
        .filter(|(at, _)| {
            // Not the tail of a longer path such as `vpsie_lb_crate::`.
            !code[..*at]
                .chars()
                .next_back()
                .is_some_and(|c| c.is_alphanumeric() || c == '_')
        })
        .flat_map(|(at, _)| {
            let rest = &code[at + prefix.len()..];
            match rest.strip_prefix('{') {
                Some(group) => top_level_items(group).into_iter().map(&ident).collect(),
                None => vec![ident(rest)],
            }
        })
        .filter(|s: &String| !s.is_empty())
        .collect()
}

/// The comma-separated items of a `{...}` group whose `{` was just read,
/// without looking inside nested groups.
fn top_level_items(group: &str) -> Vec<&str> {
    let (mut depth, mut start, mut items) = (0usize, 0usize, Vec::new());
    for (i, c) in group.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => {
                items.push(&group[start..i]);
                break;
            }
            '}' => depth -= 1,
            ',' if depth == 0 => {
                items.push(&group[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    items
}

type Graph = BTreeMap<String, BTreeSet<String>>;

/// A circle in `graph`, if there is one, as the nodes along it.
fn circle(graph: &Graph) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &Graph,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|n| n == node) {
            let mut c = path[at..].to_vec();
            c.push(node.to_owned());
            return Some(c);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_owned());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(c) = visit(next, graph, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(node.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|n| visit(n, graph, &mut Vec::new(), &mut done))
}

/// The top-level graph and, per directory, the graph of its sibling files.
fn graphs(src: &Path) -> (Graph, BTreeMap<PathBuf, Graph>) {
    let files = product_sources(src);
    let top_of = |p: &Path| -> String {
        let rel = p.strip_prefix(src).expect("under src");
        let first = rel.components().next().expect("a component");
        first
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_owned()
    };
    let tops: BTreeSet<String> = files.iter().map(|p| top_of(p)).collect();
    let (mut top, mut siblings) = (Graph::new(), BTreeMap::<PathBuf, Graph>::new());
    for file in &files {
        let code = product_code(file);
        let me = top_of(file);
        let deps: BTreeSet<String> = after(&code, "crate::")
            .into_iter()
            .filter(|d| tops.contains(d) && *d != me)
            .collect();
        top.entry(me).or_default().extend(deps);
        let dir = file.parent().expect("a directory").to_owned();
        let stem = file
            .file_stem()
            .expect("a name")
            .to_string_lossy()
            .into_owned();
        if dir == src || stem == "mod" {
            continue;
        }
        let sibling = |name: &String| dir.join(format!("{name}.rs")).exists();
        let deps: BTreeSet<String> = after(&code, "super::")
            .into_iter()
            .filter(|d| sibling(d) && *d != stem)
            .collect();
        siblings
            .entry(dir)
            .or_default()
            .entry(stem)
            .or_default()
            .extend(deps);
    }
    (top, siblings)
}

#[test]
fn the_agent_has_no_module_circles() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let (top, siblings) = graphs(&src);
    assert!(top.len() > 20, "read the modules: {:?}", top.keys());
    assert!(
        top["run"].contains("controller") && top["xds"].contains("envoy_admin"),
        "edges are seen: {:?}",
        top["run"]
    );
    assert_eq!(circle(&top), None, "a circle among the agent's modules");
    for (dir, graph) in &siblings {
        assert_eq!(
            circle(graph),
            None,
            "a circle among {}'s files",
            dir.display()
        );
    }
}

#[test]
fn no_crate_in_the_workspace_has_module_circles() {
    let crates = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let (mut seen, mut circles) = (0, Vec::new());
    for entry in std::fs::read_dir(&crates).expect("read crates") {
        let src = entry.expect("entry").path().join("src");
        if !src.is_dir() {
            continue;
        }
        seen += 1;
        let (top, siblings) = graphs(&src);
        let graphs = std::iter::once((&src, &top)).chain(&siblings);
        for (dir, graph) in graphs {
            if let Some(c) = circle(graph) {
                circles.push(format!("{}: {}", dir.display(), c.join(" -> ")));
            }
        }
    }
    assert!(seen >= 8, "read every crate: {seen}");
    assert!(
        circles.is_empty(),
        "module circles:\n{}",
        circles.join("\n")
    );
}

#[test]
fn a_circle_is_found() {
    let graph: Graph = [("a", "b"), ("b", "c"), ("c", "a"), ("d", "a")]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), BTreeSet::from([v.to_owned()])))
        .collect();
    assert_eq!(
        circle(&graph),
        Some(vec!["a".into(), "b".into(), "c".into(), "a".into()])
    );
    let code = "use crate::x::Y; vpsie_lb_crate::z;\nsuper::q";
    assert_eq!(after(code, "crate::"), BTreeSet::from(["x".to_owned()]));
    let group = "use crate::{a::{B, C}, d,\n e::F};";
    let names: Vec<String> = after(group, "crate::").into_iter().collect();
    assert_eq!(names, ["a", "d", "e"]);
}

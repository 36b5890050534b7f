//! The pure crates (model, envoy, core) stay pure: their manifests list
//! nothing that does IO, and their product sources name no file system,
//! process, socket, thread, environment or clock. ARCHITECTURE.md's first
//! invariant rests on this test.

use std::path::{Path, PathBuf};

/// The crates that must never do IO.
const PURE: &[&str] = &["model", "envoy", "core"];

/// Every dependency a pure crate may have: data formats, hashing, errors,
/// and each other.
const ALLOWED: &[&str] = &[
    "vpsie-lb-model",
    "vpsie-lb-envoy",
    "envoy-types",
    "prost",
    "prost-reflect",
    "serde",
    "serde_json",
    "serde_norway",
    "regex-syntax",
    "sha2",
    "thiserror",
];

/// What product code of a pure crate must not name.
const FORBIDDEN: &[&str] = &[
    "std::fs",
    "std::env",
    "std::process",
    "std::net::Tcp",
    "std::net::Udp",
    "std::thread",
    "SystemTime::now",
    "Instant::now",
    "std::io::stdin",
];

fn crates_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The names under `[dependencies]` of a manifest.
fn dependencies(manifest: &str) -> Vec<String> {
    manifest
        .lines()
        .skip_while(|l| l.trim() != "[dependencies]")
        .skip(1)
        .take_while(|l| !l.trim_start().starts_with('['))
        .filter_map(|l| l.split(['.', '=']).next())
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty() && !name.starts_with('#'))
        .collect()
}

/// Every `.rs` file under `dir`, except tests.
fn sources(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("entry").path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if path.is_dir() {
            out.extend(sources(&path));
        } else if name.ends_with(".rs") && !name.ends_with("tests.rs") {
            out.push(path);
        }
    }
    out
}

#[test]
fn the_pure_crates_depend_on_nothing_that_does_io() {
    for krate in PURE {
        let path = crates_dir().join(krate).join("Cargo.toml");
        let manifest = std::fs::read_to_string(&path).expect("manifest");
        let deps = dependencies(&manifest);
        assert!(!deps.is_empty(), "{krate}: no dependencies read");
        for dep in deps {
            assert!(
                ALLOWED.contains(&dep.as_str()),
                "{krate} depends on {dep}, which is not known to be pure"
            );
        }
    }
}

#[test]
fn the_pure_crates_name_no_io_in_their_product_code() {
    for krate in PURE {
        let files = sources(&crates_dir().join(krate).join("src"));
        assert!(files.len() > 3, "{krate}: sources not found");
        for file in files {
            let text = std::fs::read_to_string(&file).expect("read");
            // Unit tests at the end of a file may use temp files.
            let product = text.split("#[cfg(test)]").next().unwrap_or_default();
            for word in FORBIDDEN {
                assert!(!product.contains(word), "{} names {word}", file.display());
            }
        }
    }
}

#[test]
fn a_forbidden_dependency_is_seen() {
    let manifest = "[package]\nname = \"x\"\n[dependencies]\nserde_json.workspace = true\ntokio = \"1\"\n# why\n[dev-dependencies]\ntempfile = \"3\"\n";
    assert_eq!(dependencies(manifest), ["serde_json", "tokio"]);
}

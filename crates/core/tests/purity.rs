//! The pure crates (model, envoy, core) stay pure: their manifests list
//! nothing that does IO, and their product sources name no file system,
//! process, socket, thread, environment or clock. ARCHITECTURE.md's first
//! invariant rests on this test.

use std::path::{Path, PathBuf};

use vpsie_lb_testkit::sources::{product_code, product_sources};

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

/// The std modules product code of a pure crate must not name.
const FORBIDDEN_STD: &[&str] = &["fs", "env", "process", "thread", "os"];

/// Other names it must not use: clocks, sockets (addresses are data) and
/// the standard streams.
const FORBIDDEN: &[&str] = &[
    "Instant",
    "SystemTime",
    "TcpStream",
    "TcpListener",
    "UdpSocket",
    "UnixStream",
    "UnixListener",
    "to_socket_addrs",
    "stdin()",
    "stdout()",
    "println!",
];

fn crates_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The names in every table of a manifest that the built crate links:
/// `[dependencies]`, `[dependencies.<name>]` and the target-specific
/// `[target.<cfg>.dependencies]`, not dev- or build-dependencies.
fn dependencies(manifest: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut linked = false;
    for line in manifest.lines().map(str::trim) {
        if let Some(header) = line.strip_prefix('[') {
            let header = header.trim_end_matches(']');
            let last = header.rsplit('.').next().unwrap_or("");
            if let Some(name) = header.strip_prefix("dependencies.") {
                out.push(name.to_owned());
                linked = false;
            } else {
                linked = header == "dependencies" || last == "dependencies";
            }
            continue;
        }
        if !linked || line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(name) = line.split(['.', '=']).next() {
            out.push(name.trim().to_owned());
        }
    }
    out
}

/// Whether `code` names `module` of std, alone or in a `use std::{…}` group.
fn names_std(code: &str, module: &str) -> bool {
    if code.contains(&format!("std::{module}")) {
        return true;
    }
    code.match_indices("std::{").any(|(at, _)| {
        let group = &code[at + 6..];
        let group = &group[..group.find('}').unwrap_or(group.len())];
        group
            .split(',')
            .any(|item| item.trim().split("::").next() == Some(module))
    })
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
        let files = product_sources(&crates_dir().join(krate).join("src"));
        assert!(files.len() > 3, "{krate}: sources not found");
        for file in files {
            let code = product_code(&file);
            for module in FORBIDDEN_STD {
                assert!(
                    !names_std(&code, module),
                    "{} names std::{module}",
                    file.display()
                );
            }
            for word in FORBIDDEN {
                assert!(!code.contains(word), "{} names {word}", file.display());
            }
        }
    }
}

#[test]
fn a_forbidden_dependency_or_name_is_seen() {
    let manifest = "[package]\nname = \"x\"\n[dependencies]\nserde_json.workspace = true\n\
        tokio = \"1\"\n# why\n[dependencies.ureq]\nversion = \"3\"\n\
        [target.'cfg(unix)'.dependencies]\nlibc = \"0.2\"\n[dev-dependencies]\ntempfile = \"3\"\n";
    assert_eq!(
        dependencies(manifest),
        ["serde_json", "tokio", "ureq", "libc"]
    );
    assert!(names_std("use std::{collections::BTreeMap, fs};", "fs"));
    assert!(names_std("let f = std::fs::read(p);", "fs"));
    assert!(!names_std("use std::{collections::BTreeMap, fmt};", "fs"));
}

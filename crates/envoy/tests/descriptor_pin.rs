//! The vendored descriptor set must be byte-identical to the one inside the
//! envoy-types crate we compile against; a drift would turn new fields into
//! unknown ones, which JSON rendering silently drops.

use sha2::{Digest, Sha256};

#[test]
fn vendored_descriptor_set_matches_the_resolved_envoy_types_crate() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = std::process::Command::new(cargo)
        .args(["metadata", "--format-version", "1"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run cargo metadata");
    assert!(
        out.status.success(),
        "cargo metadata: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).expect("metadata json");
    let manifest = meta["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .find(|p| p["name"] == "envoy-types")
        .and_then(|p| p["manifest_path"].as_str())
        .expect("envoy-types in the dependency graph")
        .to_owned();
    let upstream = std::path::Path::new(&manifest).with_file_name("src/generated/types.bin");
    let vendored =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("descriptor/envoy-types.bin");
    let hash = |p: &std::path::Path| {
        Sha256::digest(std::fs::read(p).unwrap_or_else(|e| panic!("read {}: {e}", p.display())))
    };
    assert_eq!(
        hash(&upstream),
        hash(&vendored),
        "descriptor drift: run scripts/update-descriptors.sh"
    );
}

//! The vendored descriptor set must be exactly what pruning the one inside
//! the envoy-types crate we compile against gives; a drift would turn new
//! fields into unknown ones, which JSON rendering silently drops.
//! `UPDATE_DESCRIPTORS=1` rewrites it (`scripts/update-descriptors.sh` does).

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
    let full =
        std::fs::read(&upstream).unwrap_or_else(|e| panic!("read {}: {e}", upstream.display()));
    let pruned = vpsie_lb_envoy::prune_descriptor_set(&full).expect("prune");
    let vendored =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("descriptor/envoy-types-pruned.bin");
    if std::env::var_os("UPDATE_DESCRIPTORS").is_some() {
        std::fs::write(&vendored, &pruned).expect("write vendored descriptor set");
    }
    let on_disk =
        std::fs::read(&vendored).unwrap_or_else(|e| panic!("read {}: {e}", vendored.display()));
    assert_eq!(
        Sha256::digest(&pruned),
        Sha256::digest(&on_disk),
        "descriptor drift: run scripts/update-descriptors.sh"
    );
}

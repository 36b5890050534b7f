//! Golden translation tests: `golden/in/<case>.{yaml,json}` becomes
//! `golden/out/<case>.<kind>.yaml` (or `<case>.error.txt` for invalid input).
//!
//! `UPDATE_GOLDEN=1 cargo test -p vpsie-lb-envoy --test golden` rewrites the
//! outputs and deletes orphans; review the diff like code.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use vpsie_lb_envoy::{
    BootstrapOptions, Delivery, TranslateOptions, WafEngine, XdsLayout, ads_bootstrap, bootstrap,
    render_files, render_resource_set, resource_set, to_yaml, translate,
};
use vpsie_lb_model::{ReservedPort, ValidateOptions, validate_str};

/// Cases also rendered as the xDS delivery serves them
/// (`<case>.ads.<kind>.yaml`): where the two deliveries differ is in
/// config sources only, so two cases show it.
const ADS_CASES: [&str; 2] = ["http-round-robin", "https-mtls-tls13"];

/// Cases also rendered with the WAF inside Envoy
/// (`<case>.in-envoy.<kind>.yaml`): the filter and the route settings.
const IN_ENVOY_CASES: [&str; 1] = ["protect"];

/// Where the in-Envoy goldens find the WAF filter module.
const GOLDEN_WAF_MODULE: &str = "/usr/lib/vpsie-lb/libvpsie_lb_waf_filter.so";

/// The xDS socket the ADS bootstrap golden points at.
const GOLDEN_XDS_SOCKET: &str = "/run/vpsie-lb/xds.sock";

/// The xDS root the goldens are rendered for.
pub const GOLDEN_ROOT: &str = "/etc/envoy/xds";

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

fn validate_options() -> ValidateOptions {
    ValidateOptions {
        strict: false,
        reserved_ports: vec![ReservedPort {
            port: 9901,
            owner: "envoy's metrics listener".into(),
        }],
        ..Default::default()
    }
}

/// Every output file of one case, by file name.
fn outputs(case: &str, text: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let validated = match validate_str(text, &validate_options()) {
        Ok(v) => v,
        Err(rej) => {
            let lines: Vec<String> = rej.errors.iter().map(ToString::to_string).collect();
            out.insert(format!("{case}.error.txt"), lines.join("\n") + "\n");
            return out;
        }
    };
    let layout = XdsLayout::new(GOLDEN_ROOT);
    let opts = TranslateOptions::new(Delivery::Files(layout.clone()));
    out.extend(files_by_kind(case, &validated.config, &opts));
    if IN_ENVOY_CASES.contains(&case) {
        let opts = TranslateOptions {
            waf_engine: WafEngine::InEnvoy(GOLDEN_WAF_MODULE.into()),
            ..opts
        };
        let engine = format!("{case}.in-envoy");
        for (name, yaml) in files_by_kind(&engine, &validated.config, &opts) {
            // What the engine changes: the filters and the route settings.
            if name.contains(".listeners.") || name.contains(".routes.") {
                out.insert(name, yaml);
            }
        }
    }
    if ADS_CASES.contains(&case) {
        let ads = translate(&validated.config, &TranslateOptions::new(Delivery::Ads));
        let set = resource_set(&ads).expect("resource set");
        for (file, yaml) in render_resource_set(&set).expect("render ads") {
            out.insert(format!("{case}.ads.{file}"), yaml);
        }
    }
    out
}

/// The files delivery's output of `config`, one YAML document per kind.
fn files_by_kind(
    case: &str,
    config: &vpsie_lb_model::Config,
    opts: &TranslateOptions,
) -> BTreeMap<String, String> {
    let Delivery::Files(layout) = &opts.delivery else {
        panic!("files delivery expected");
    };
    let resources = translate(config, opts);
    let files = render_files(&resources, layout).expect("render");
    let mut by_kind: BTreeMap<&str, String> = BTreeMap::new();
    for f in &files {
        let rel = f.path.strip_prefix(GOLDEN_ROOT).expect("under root");
        let kind = match rel.components().next().and_then(|c| c.as_os_str().to_str()) {
            Some("lds") => "listeners",
            Some("cds") => "clusters",
            Some("eds") => "endpoints",
            Some("sds") => "secrets",
            Some("rds") => "routes",
            other => panic!("unexpected file {rel:?} ({other:?})"),
        };
        let json: serde_json::Value = serde_json::from_str(&f.contents).expect("rendered json");
        let yaml = serde_norway::to_string(&json).expect("yaml");
        let doc = by_kind.entry(kind).or_default();
        if !doc.is_empty() {
            doc.push_str("---\n");
        }
        doc.push_str(&format!("# {}\n{yaml}", rel.display()));
    }
    by_kind
        .into_iter()
        .map(|(kind, doc)| (format!("{case}.{kind}.yaml"), doc))
        .collect()
}

fn cases() -> Vec<(String, PathBuf)> {
    let mut cases: Vec<(String, PathBuf)> = std::fs::read_dir(dir().join("in"))
        .expect("golden/in")
        .map(|e| e.expect("entry").path())
        .filter_map(|p| Some((p.file_stem()?.to_str()?.to_owned(), p)))
        .collect();
    cases.sort();
    cases
}

fn check_file(path: &Path, want: &str, update: bool) -> Option<String> {
    if update {
        std::fs::write(path, want).expect("write golden");
        return None;
    }
    match std::fs::read_to_string(path) {
        Ok(have) if have == want => None,
        Ok(_) => Some(format!("{} differs", path.display())),
        Err(_) => Some(format!("{} is missing", path.display())),
    }
}

#[test]
fn golden() {
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    let out_dir = dir().join("out");
    let mut expected_files = vec![
        "_bootstrap.yaml".to_owned(),
        "_bootstrap.ads.yaml".to_owned(),
    ];
    let mut failures = Vec::new();

    let layout = XdsLayout::new(GOLDEN_ROOT);
    let boot = to_yaml(&bootstrap(&layout, &BootstrapOptions::default())).expect("bootstrap yaml");
    failures.extend(check_file(&out_dir.join("_bootstrap.yaml"), &boot, update));
    let ads = ads_bootstrap(Path::new(GOLDEN_XDS_SOCKET), &BootstrapOptions::default());
    let ads = to_yaml(&ads).expect("ads bootstrap yaml");
    failures.extend(check_file(
        &out_dir.join("_bootstrap.ads.yaml"),
        &ads,
        update,
    ));

    for (case, path) in cases() {
        let text = std::fs::read_to_string(&path).expect("read case");
        let first = outputs(&case, &text);
        assert_eq!(
            first,
            outputs(&case, &text),
            "{case}: translation is not deterministic"
        );
        for (name, want) in first {
            failures.extend(check_file(&out_dir.join(&name), &want, update));
            expected_files.push(name);
        }
    }
    for entry in std::fs::read_dir(&out_dir).expect("golden/out") {
        let name = entry
            .expect("entry")
            .file_name()
            .to_string_lossy()
            .into_owned();
        if !expected_files.contains(&name) {
            if update {
                std::fs::remove_file(out_dir.join(&name)).expect("remove orphan");
            } else {
                failures.push(format!("orphan golden file {name}"));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "golden mismatch (rerun with UPDATE_GOLDEN=1 and review the diff):\n{}",
        failures.join("\n")
    );
}

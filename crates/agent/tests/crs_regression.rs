//! The OWASP Core Rule Set's own regression suite (v3.3.4, the version
//! Debian ships; vendored in `crates/testkit/crs-regression`), run byte for
//! byte against a load balancer with the WAF, and beside it against nginx
//! with ModSecurity-nginx, the reference connector, on the same library and
//! the same rule set text. Both in detection mode at paranoia level 4, so
//! every rule is live and nothing answers for the backend.
//!
//! Both of our engines run it: the `vpsie-lb-waf` service over ext_authz,
//! and the same engine inside Envoy (`vpsie-lb-waf-filter`).
//!
//! The gate: each engine's pass rate within one point of the reference's.
//! Every stage where one differs from the reference is printed and
//! written to `target/crs-regression.txt`; docs/load-balancer-format.md
//! explains them. One delivery only: the WAF's path is the same over
//! both, and the suite is 2,000-odd requests.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::waf::{Engine as WafEngine, serve_on};
use common::{Lab, Via, lb_over};
use serde_json::json;
use vpsie_lb_testkit::backend::HttpBackend;
use vpsie_lb_testkit::ftw::{self, run::Outcome, run::Target, run::read_from};
use vpsie_lb_testkit::{free_port, poll_until};
use vpsie_lb_waf::config::{Mode, Policy};
use vpsie_lb_waf::engine::{DEFAULT_CRS_DIR, DEFAULT_CRS_SETUP, Engine};

/// The policy both connectors run.
fn policy() -> Policy {
    Policy {
        mode: Mode::Detect,
        paranoia_level: 4,
        exclusions: Vec::new(),
        oversize_body: Default::default(),
    }
}

/// nginx with ModSecurity-nginx in front of `backend`, logging to `dir`.
struct Reference {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Reference {
    fn start(dir: &Path, backend: u16) -> Reference {
        let port = free_port();
        let rules = dir.join("modsecurity.conf");
        let engine = Engine::new(Path::new(DEFAULT_CRS_DIR), Path::new(DEFAULT_CRS_SETUP));
        std::fs::write(&rules, engine.rules_text(&policy())).expect("rules");
        let log = dir.join("error.log");
        let d = dir.display();
        // One worker: a request's log lines are written before the next
        // request is read, so the runner's markers split them exactly.
        let conf = format!(
            "load_module /usr/lib/nginx/modules/ngx_http_modsecurity_module.so;\n\
             user root;\nworker_processes 1;\ndaemon off;\npid {d}/nginx.pid;\n\
             error_log {log} info;\n\
             events {{ worker_connections 256; }}\n\
             http {{\n  access_log off;\n\
               client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
               fastcgi_temp_path {d}/fcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
               server {{\n    listen 127.0.0.1:{port};\n\
                 modsecurity on;\n    modsecurity_rules_file {rules};\n\
                 location / {{ proxy_pass http://127.0.0.1:{backend}; }}\n  }}\n}}\n",
            log = log.display(),
            rules = rules.display(),
        );
        let conf_path = dir.join("nginx.conf");
        std::fs::write(&conf_path, conf).expect("nginx.conf");
        let child = Command::new("nginx")
            .arg("-c")
            .arg(&conf_path)
            .arg("-p")
            .arg(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nginx");
        let r = Reference { child, port, log };
        poll_until("nginx answers", Duration::from_secs(30), || {
            vpsie_lb_testkit::http::get(port, "/")
                .map(|_| ())
                .map_err(|e| format!("{e}: {}", r.log()))
        });
        r
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Reference {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The WAF service's log as ModSecurity would print it: each matched
/// request's line with its rules as `[id "N"]`.
fn as_modsecurity(log: &str) -> String {
    let mut out = String::with_capacity(log.len());
    for line in log.lines() {
        let Ok(entry) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let request = entry["request"].as_str().unwrap_or_default();
        let rules = entry["rules"].as_str().unwrap_or_default();
        let ids: String = rules
            .trim_matches(|c| c == '[' || c == ']')
            .split(',')
            .map(str::trim)
            .filter(|r| !r.is_empty())
            .map(|r| format!(" [id \"{r}\"]"))
            .collect();
        out.push_str(&format!("{request}{ids}\n"));
    }
    out
}

/// Envoy's log as ModSecurity would print it: each line of the in-Envoy
/// filter's (`vpsie-lb-waf-filter: <what> {json}`) with its rules as
/// `[id "N"]`.
fn filter_as_modsecurity(log: &str) -> String {
    let mut out = String::with_capacity(log.len());
    for line in log.lines() {
        let Some((_, rest)) = line.split_once("vpsie-lb-waf-filter: ") else {
            continue;
        };
        let Some(entry) = rest
            .find('{')
            .and_then(|at| serde_json::from_str::<serde_json::Value>(&rest[at..]).ok())
        else {
            continue;
        };
        let request = entry["request"].as_str().unwrap_or_default();
        let ids: String = entry["rules"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(serde_json::Value::as_u64)
            .map(|r| format!(" [id \"{r}\"]"))
            .collect();
        out.push_str(&format!("{request}{ids}\n"));
    }
    out
}

/// The stages where the two differ: pass against fail, or other rules.
fn differences(ours: &[Outcome], theirs: &[Outcome]) -> Vec<String> {
    ours.iter()
        .zip(theirs)
        .filter(|(a, b)| a.passed != b.passed)
        .map(|(a, b)| {
            let only_ours: Vec<_> = a.rules.difference(&b.rules).collect();
            let only_theirs: Vec<_> = b.rules.difference(&a.rules).collect();
            format!(
                "{}: ours {} ({}; status {:?}), reference {} (status {:?}); rules only ours {only_ours:?}, only the reference's {only_theirs:?}",
                a.id,
                if a.passed { "passed" } else { "failed" },
                if a.passed { "-" } else { a.why.as_str() },
                a.status,
                if b.passed { "passed" } else { "failed" },
                b.status,
            )
        })
        .collect()
}

fn rate(outcomes: &[Outcome]) -> f64 {
    let passed = outcomes.iter().filter(|o| o.passed).count();
    100.0 * passed as f64 / outcomes.len().max(1) as f64
}

#[test]
fn the_waf_knows_the_host_envoy_gives_a_request_without_one() {
    assert_eq!(
        vpsie_lb_waf::service::HOST_ENVOY_GAVE,
        vpsie_lb_envoy::DEFAULT_HOST_FOR_HTTP_10
    );
}

#[test]
fn the_crs_regression_suite_passes_as_it_does_on_the_reference_connector() {
    let suite = vpsie_lb_testkit::workspace_root().join("crates/testkit/crs-regression/tests");
    let stages = ftw::load_dir(&suite).expect("the vendored suite");
    let backend = HttpBackend::start("app");

    let doc = |port: u16| {
        let mut doc = lb_over(
            "crs",
            "http",
            port,
            "round_robin",
            std::slice::from_ref(&backend),
        );
        doc["waf"] = json!({"mode": "detect", "paranoia_level": 4});
        doc
    };
    let serve = |engine: WafEngine| {
        let port = free_port();
        let (lab, waf) = serve_on(Lab::new(Via::Files), engine, &doc(port));
        poll_until("served through the waf", Duration::from_secs(30), || {
            let r = vpsie_lb_testkit::http::get(port, "/").map_err(|e| e.to_string())?;
            (r.status == 200).then_some(()).ok_or_else(|| waf.log())
        });
        (lab, waf, port)
    };

    let (_service_lab, service, port) = serve(WafEngine::Service);
    let service_log = service.service.as_ref().expect("the service").log_path();
    let ours = Target {
        name: "vpsie-lb",
        port,
        log_from: &|offset| read_from(&service_log, offset),
        as_modsecurity: &as_modsecurity,
    };
    let ours = ftw::run::run(&stages, &ours).expect("the suite against the load balancer");
    drop(service);

    let (in_envoy_lab, _filter, port) = serve(WafEngine::InEnvoy);
    let envoy_log = in_envoy_lab.dir.path().join("envoy.log");
    let in_envoy = Target {
        name: "vpsie-lb in envoy",
        port,
        log_from: &|offset| read_from(&envoy_log, offset),
        as_modsecurity: &filter_as_modsecurity,
    };
    let in_envoy =
        ftw::run::run(&stages, &in_envoy).expect("the suite against the in-envoy engine");

    let dir = tempfile::tempdir().expect("tempdir");
    let reference = Reference::start(dir.path(), backend.port());
    let theirs = Target {
        name: "nginx",
        port: reference.port,
        log_from: &|offset| read_from(&reference.log, offset),
        as_modsecurity: &|lines| lines.to_owned(),
    };
    let theirs = ftw::run::run(&stages, &theirs).expect("the suite against nginx");

    let theirs_rate = rate(&theirs);
    let mut report = format!(
        "CRS 3.3.4 regression suite, {} stages, detection mode, paranoia level 4\n\
         nginx + ModSecurity-nginx: {theirs_rate:.1} % passed\n",
        stages.len()
    );
    let mut failures = Vec::new();
    for (engine, outcomes) in [
        ("Envoy + vpsie-lb-waf (service)", &ours),
        ("Envoy + vpsie-lb-waf-filter (in Envoy)", &in_envoy),
    ] {
        let ours_rate = rate(outcomes);
        let diff = differences(outcomes, &theirs);
        let mut by_file = BTreeMap::<&str, usize>::new();
        for d in &diff {
            *by_file
                .entry(d.split('/').next().unwrap_or(""))
                .or_default() += 1;
        }
        report.push_str(&format!(
            "\n{engine}: {ours_rate:.1} % passed\n\
             stages where it differs from the reference: {} (by rule file: {by_file:?})\n{}\n",
            diff.len(),
            diff.join("\n")
        ));
        if ours_rate < theirs_rate - 1.0 {
            failures.push(format!(
                "{engine}: {ours_rate:.1} % against the reference's {theirs_rate:.1} %"
            ));
        }
    }
    let out = vpsie_lb_testkit::workspace_root().join("target/crs-regression.txt");
    let _ = std::fs::write(&out, &report);
    println!("{report}");
    assert!(
        failures.is_empty(),
        "more than a point below the reference: {failures:?} (see {})",
        out.display()
    );
}

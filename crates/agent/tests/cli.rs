//! The `render` and `check` command-line contract.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use common::{agent, write};
use serde_json::{Value, json};
use vpsie_lb_testkit::pki;

/// `common::lb` with its backends on 192.0.2.1 (TEST-NET-1): these
/// documents are only checked and rendered, and a loopback backend needs
/// `--allow-backend-network`.
fn lb(id: &str, protocol: &str, port: u16, algorithm: &str, bs: &[(&str, u16, u32)]) -> Value {
    let mut doc = common::lb(id, protocol, port, algorithm, bs);
    for b in doc["backends"].as_array_mut().into_iter().flatten() {
        b["address"] = json!("192.0.2.1");
    }
    doc
}

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}
fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn write_json(dir: &Path, name: &str, v: &serde_json::Value) -> String {
    write(dir, name, &v.to_string())
        .to_string_lossy()
        .into_owned()
}

fn golden_dir() -> std::path::PathBuf {
    vpsie_lb_testkit::workspace_root().join("crates/envoy/tests/golden")
}

#[test]
fn check_accepts_a_valid_document_after_asking_envoy() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = write_json(
        dir.path(),
        "ok.json",
        &lb("ok", "http", 8080, "round_robin", &[("a", 9000, 1)]),
    );
    let out = agent(&["check", "--input", &input]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    assert!(
        stdout(&out).contains("accepted by envoy"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn check_lists_every_problem_with_its_path_and_exits_2() {
    let input = golden_dir().join("in/invalid-ports.yaml");
    let want = std::fs::read_to_string(golden_dir().join("out/invalid-ports.error.txt"))
        .expect("golden errors");
    let out = agent(&["check", "--input", input.to_str().expect("path")]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert_eq!(stdout(&out), want);
}

#[test]
fn render_writes_nothing_for_an_invalid_document() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = write_json(
        dir.path(),
        "bad.json",
        &lb("bad", "http", 0, "round_robin", &[]),
    );
    let out_dir = dir.path().join("out");
    let out = agent(&[
        "render",
        "--input",
        &input,
        "--out",
        out_dir.to_str().expect("path"),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(stdout(&out), "port: must be 1..=65535 (got 0)\n");
    assert!(
        !out_dir.exists(),
        "render created output for an invalid document"
    );
}

#[test]
fn check_reports_what_only_envoy_can_see_a_key_that_does_not_match_the_certificate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert, _) = pki::write_pair(dir.path(), "one", &pki::self_signed("one.test"));
    let (_, other_key) = pki::write_pair(dir.path(), "two", &pki::self_signed("two.test"));
    let mut doc = lb("tls", "https", 8443, "round_robin", &[("a", 9000, 1)]);
    doc["tls_config"] = json!({"certificate_path": cert, "private_key_path": other_key});
    let input = write_json(dir.path(), "mismatch.json", &doc);
    // Our validation alone cannot know; Envoy can.
    let out = agent(&["check", "--no-envoy", "--input", &input]);
    assert_eq!(out.status.code(), Some(0));
    let out = agent(&["check", "--input", &input]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    let line = stdout(&out);
    assert!(
        line.starts_with("envoy: envoy rejected the configuration"),
        "{line}"
    );
    assert!(line.to_lowercase().contains("private key"), "{line}");
}

#[test]
fn unknown_keys_warn_and_strict_makes_them_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut doc = lb("u", "http", 8080, "round_robin", &[("a", 9000, 1)]);
    doc["cors_policy"] = json!(true);
    let input = write_json(dir.path(), "u.json", &doc);
    let out = agent(&["check", "--no-envoy", "--input", &input]);
    assert_eq!(out.status.code(), Some(0));
    assert!(
        stderr(&out).contains("warning: cors_policy: unknown key (ignored)"),
        "{}",
        stderr(&out)
    );
    let out = agent(&["check", "--no-envoy", "--strict", "--input", &input]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(stdout(&out), "cors_policy: unknown key (ignored)\n");
}

#[test]
fn admin_must_stay_on_loopback() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = write_json(
        dir.path(),
        "a.json",
        &lb("a", "http", 8080, "round_robin", &[]),
    );
    let out_dir = dir.path().join("out");
    let out = agent(&[
        "render",
        "--input",
        &input,
        "--out",
        out_dir.to_str().expect("path"),
        "--admin-address",
        "0.0.0.0:9901",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("loopback"), "{}", stderr(&out));
    assert!(!out_dir.exists());
}

#[test]
fn render_lays_out_files_with_modes_and_prunes_what_is_gone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out_dir = dir.path().join("out");
    let out_s = out_dir.to_str().expect("path");
    let two = json!([
        lb("one", "http", 8081, "round_robin", &[("a", 9000, 1)]),
        lb("two", "http", 8082, "round_robin", &[("a", 9001, 1)])
    ]);
    let input = write_json(dir.path(), "two.json", &two);
    assert_eq!(
        agent(&["render", "--input", &input, "--out", out_s])
            .status
            .code(),
        Some(0)
    );
    for f in [
        "bootstrap.yaml",
        "lds/lds.json",
        "cds/cds.json",
        "eds/lb_one/eds.json",
        "eds/lb_two/eds.json",
    ] {
        let meta = std::fs::metadata(out_dir.join(f)).unwrap_or_else(|e| panic!("{f}: {e}"));
        assert_eq!(meta.permissions().mode() & 0o777, 0o644, "{f}");
    }
    let bootstrap = std::fs::read_to_string(out_dir.join("bootstrap.yaml")).expect("bootstrap");
    assert!(
        bootstrap.contains(&format!(
            "path: {}/lds/lds.json",
            out_dir.canonicalize().expect("abs").display()
        )),
        "absolute paths: {bootstrap}"
    );

    let one = json!([lb("one", "http", 8081, "round_robin", &[("a", 9000, 1)])]);
    let input = write_json(dir.path(), "one.json", &one);
    let first = agent(&["render", "--input", &input, "--out", out_s]);
    assert_eq!(first.status.code(), Some(0));
    assert!(
        !out_dir.join("eds/lb_two").exists(),
        "stale endpoints left behind"
    );
    let before = std::fs::read(out_dir.join("lds/lds.json")).expect("lds");
    assert_eq!(
        agent(&["render", "--input", &input, "--out", out_s])
            .status
            .code(),
        Some(0)
    );
    assert_eq!(
        std::fs::read(out_dir.join("lds/lds.json")).expect("lds"),
        before,
        "render is deterministic"
    );
    let leftovers: Vec<_> = walk(&out_dir)
        .into_iter()
        .filter(|p| {
            Path::new(p)
                .file_name()
                .is_some_and(|n| n.to_string_lossy().ends_with(".tmp"))
        })
        .collect();
    assert!(leftovers.is_empty(), "temp files left: {leftovers:?}");
}

fn walk(dir: &Path) -> Vec<String> {
    vpsie_lb_testkit::sources::files_under(dir)
        .iter()
        .map(|p| p.display().to_string())
        .collect()
}

#[test]
fn every_subcommand_has_help() {
    for args in [
        vec!["--help"],
        vec!["render", "--help"],
        vec!["check", "--help"],
    ] {
        let out = agent(&args);
        assert_eq!(out.status.code(), Some(0), "{args:?}");
        assert!(stdout(&out).contains("Usage:"), "{args:?}");
    }
    assert!(stdout(&agent(&["render", "--help"])).contains("--listen-address"));
    assert!(stdout(&agent(&["check", "--help"])).contains("--strict"));
}

#[test]
fn malformed_inputs_never_panic() {
    let dir = tempfile::tempdir().expect("tempdir");
    let deep_json = "[".repeat(100_000);
    let deep_yaml = "- ".repeat(50_000) + "x";
    let mut bomb = String::from("a: &a [x,x,x,x,x,x,x,x,x]\n");
    for i in 1..9 {
        let prev = if i == 1 {
            "a".to_owned()
        } else {
            format!("l{}", i - 1)
        };
        bomb.push_str(&format!(
            "l{i}: &l{i} [{}]\n",
            vec![format!("*{prev}"); 9].join(",")
        ));
    }
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty", vec![]),
        ("binary", (0..=255u8).cycle().take(4096).collect()),
        ("deep.json", deep_json.into_bytes()),
        ("deep.yaml", deep_yaml.into_bytes()),
        ("bomb.yaml", bomb.into_bytes()),
        ("self-alias.yaml", b"a: &a [*a]\n".to_vec()),
        ("scalar", b"42".to_vec()),
        ("huge-number", b"{\"port\": 1e999999}".to_vec()),
        ("nul", b"{\"id\": \"a\0b\"}".to_vec()),
        ("tabs.yaml", b"id:\t[\n\t}".to_vec()),
    ];
    for (name, bytes) in cases {
        let path = dir.path().join(name);
        std::fs::write(&path, &bytes).expect("write case");
        for cmd in ["check", "render"] {
            let out_dir = dir.path().join(format!("out-{name}"));
            let mut args = vec![cmd, "--input", path.to_str().expect("path")];
            if cmd == "render" {
                args.extend(["--out", out_dir.to_str().expect("path")]);
            } else {
                args.push("--no-envoy");
            }
            let out = agent(&args);
            assert_eq!(
                out.status.code(),
                Some(2),
                "{cmd} {name}: {}{}",
                stdout(&out),
                stderr(&out)
            );
            assert!(
                !stderr(&out).contains("panicked"),
                "{cmd} {name}: {}",
                stderr(&out)
            );
            assert!(!out_dir.exists(), "{cmd} {name}: wrote output");
        }
    }
}

#[test]
fn a_private_key_readable_by_everyone_gets_a_warning() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert, key) = pki::write_pair(dir.path(), "server", &pki::self_signed("lb.test"));
    let mut doc = lb("tls", "https", 8443, "round_robin", &[("a", 9000, 1)]);
    doc["tls_config"] = json!({"certificate_path": cert, "private_key_path": key});
    let input = write_json(dir.path(), "tls.json", &doc);
    let out = agent(&["check", "--no-envoy", "--input", &input]);
    assert!(
        !stderr(&out).contains("readable by every user"),
        "0600 key warned: {}",
        stderr(&out)
    );
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let out = agent(&["check", "--no-envoy", "--input", &input]);
    assert_eq!(out.status.code(), Some(0));
    let err = stderr(&out);
    assert!(
        err.contains("warning: tls_config.private_key_path: load balancer \"tls\":"),
        "{err}"
    );
    assert!(err.contains("mode 0644); run chmod 600 on it"), "{err}");
    assert!(!err.contains("PRIVATE KEY"), "key material leaked: {err}");
}

#[test]
fn plan_shows_changes_against_what_was_applied_and_touches_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    std::fs::create_dir_all(&state).expect("mkdir");
    let applied = json!({
        "web": lb("web", "http", 8080, "round_robin", &[("a", 9000, 1), ("b", 9001, 1)]),
        "old": lb("old", "tcp", 2222, "round_robin", &[("s", 22, 1)]),
    });
    std::fs::write(state.join("desired.json"), applied.to_string()).expect("write state");
    let before = std::fs::read(state.join("desired.json")).expect("read");
    let next = json!([
        lb(
            "web",
            "http",
            8080,
            "round_robin",
            &[("a", 9000, 2), ("c", 9002, 1)]
        ),
        lb("api", "http", 8443, "least_request", &[("x", 7000, 1)]),
    ]);
    let input = write_json(dir.path(), "next.json", &next);
    let out = agent(&[
        "plan",
        "--input",
        &input,
        "--state-dir",
        state.to_str().expect("path"),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    for line in [
        "+ api (added)",
        "- old (removed): its listener closes",
        "~ web (modified)",
        "~ backend a: weight 1 -> 2",
        "+ backend c (192.0.2.1:9002)",
        "- backend b (192.0.2.1:9001)",
        "envoy: endpoints only: no drain",
        "Plan: 1 to add, 1 to change, 1 to remove; 1 listener(s) drain.",
    ] {
        assert!(text.contains(line), "missing {line:?} in:\n{text}");
    }
    assert_eq!(
        std::fs::read(state.join("desired.json")).expect("read"),
        before,
        "plan wrote to the state"
    );

    let bad = write_json(
        dir.path(),
        "bad.json",
        &lb("web", "http", 0, "round_robin", &[]),
    );
    let out = agent(&[
        "plan",
        "--input",
        &bad,
        "--state-dir",
        state.to_str().expect("path"),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(stdout(&out), "port: must be 1..=65535 (got 0)\n");
}

/// The review's reproduction: a tcp load balancer whose backends reach the
/// VM itself passed `check` ("accepted by envoy"). Each address is now
/// refused with its field path, and the operator's way out works.
#[test]
fn regression_check_accepted_backends_that_reach_the_vm_itself() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut doc = lb("self", "tcp", 8080, "round_robin", &[]);
    doc["backends"] = json!([
        {"id": "admin", "address": "127.0.0.1", "port": 9901},
        {"id": "metadata", "address": "169.254.169.254", "port": 80},
        {"id": "mapped", "address": "::ffff:127.0.0.1", "port": 9902},
        {"id": "ssh", "address": "localhost", "port": 22},
    ]);
    let input = write_json(dir.path(), "self.json", &doc);
    let out = agent(&["check", "--input", &input]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let text = stdout(&out);
    for want in [
        "backends[0].address: 127.0.0.1 is a loopback address",
        "backends[1].address: 169.254.169.254 is a link-local address",
        "backends[2].address: ::ffff:127.0.0.1 is a loopback address",
        "backends[3].address: localhost always means the load balancer VM itself",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
    assert_eq!(text.lines().count(), 4, "{text}");

    // The operator trusts loopback and the link: now only the name is refused.
    let out = agent(&[
        "check",
        "--no-envoy",
        "--input",
        &input,
        "--allow-backend-network",
        "127.0.0.0/8",
        "--allow-backend-network",
        "169.254.0.0/16",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert_eq!(
        stdout(&out).lines().collect::<Vec<_>>(),
        vec![
            "backends[3].address: localhost always means the load balancer VM itself; refused so that traffic cannot reach envoy's admin or the agent. Write the IP address and add its network to allowed_backend_networks (or pass --allow-backend-network CIDR)"
        ]
    );
    let out = agent(&[
        "check",
        "--input",
        &input,
        "--allow-backend-network",
        "10.0.0.0/33",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("the prefix length must be 0..=32"),
        "{}",
        stderr(&out)
    );
}

/// Go's encoding/json writes unset fields as zero values
/// (`"min_version": ""`, `"connect": 0`), and `check` refused them.
#[test]
fn regression_check_refused_documents_marshaled_from_go_structs() {
    for case in ["go-encoded-http.json", "go-encoded-https.json"] {
        let input = golden_dir().join("in").join(case);
        let out = agent(&[
            "check",
            "--no-envoy",
            "--input",
            input.to_str().expect("path"),
        ]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{case}: {}{}",
            stdout(&out),
            stderr(&out)
        );
    }
    let input = golden_dir().join("in/go-encoded-http.json");
    let out = agent(&["check", "--input", input.to_str().expect("path")]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
}

/// `apply` and a running agent could write one Envoy directory at once and
/// interleave their steps; the second writer is refused instead.
#[test]
fn apply_is_refused_while_another_writer_holds_the_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("envoy");
    std::fs::create_dir_all(&out).expect("mkdir");
    let input = write_json(
        dir.path(),
        "lb.json",
        &lb("web", "http", 8080, "round_robin", &[("a", 9000, 1)]),
    );
    let out_s = out.to_str().expect("path");
    let rendered = agent(&["render", "--input", &input, "--out", out_s]);
    assert_eq!(rendered.status.code(), Some(0), "{}", stderr(&rendered));
    let held = vpsie_lb_agent::fsutil::lock_dir(&std::fs::canonicalize(&out).expect("canon"))
        .expect("lock");
    let applied = agent(&["apply", "--no-envoy", "--input", &input, "--out", out_s]);
    assert_eq!(applied.status.code(), Some(1), "{}", stdout(&applied));
    assert!(
        stderr(&applied).contains("is in use by another vpsie-lb-agent (run or apply)"),
        "{}",
        stderr(&applied)
    );
    drop(held);
}

/// Runs the agent with `args` and returns its exit code and the highest
/// resident memory seen (`VmHWM`, read until it exits).
fn peak_rss(args: &[&str]) -> (Option<i32>, u64) {
    let mut child = std::process::Command::new(common::agent_bin())
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start agent");
    let status_path = format!("/proc/{}/status", child.id());
    let mut peak = 0;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        if let Ok(text) = std::fs::read_to_string(&status_path) {
            let hwm = text
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                .unwrap_or(0);
            peak = peak.max(hwm * 1024);
        }
        if let Some(status) = child.try_wait().expect("wait") {
            return (status.code(), peak);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "agent {args:?} did not finish"
        );
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
}

/// The caps (1,000 load balancers, 10,000 backends in one, 10 MiB) bound
/// what one document can make the agent hold.
#[test]
fn documents_at_the_caps_stay_within_a_memory_bound() {
    let dir = tempfile::tempdir().expect("tempdir");
    // 1,000 load balancers of 10 backends, padded towards the 10 MiB limit
    // with a field the agent ignores.
    let pad = "x".repeat(9_000);
    let wide: Vec<Value> = (0..1000)
        .map(|i| {
            let mut d = lb(&format!("lb{i}"), "http", 10_000 + i as u16, "round_robin", &[]);
            d["backends"] = (0..10)
                .map(|j| json!({"id": format!("b{j}"), "address": format!("10.0.{}.{}", i % 250, j + 1), "port": 80}))
                .collect();
            d["created_at"] = json!(pad);
            d
        })
        .collect();
    let wide = write_json(dir.path(), "wide.json", &Value::Array(wide));
    let mut deep = lb("deep", "http", 8080, "round_robin", &[]);
    deep["backends"] = (0..10_000)
        .map(|j| json!({"id": format!("b{j}"), "address": format!("10.1.{}.{}", j / 250, j % 250 + 1), "port": 80}))
        .collect();
    let deep = write_json(dir.path(), "deep.json", &deep);
    for (input, expect) in [(&wide, Some(0)), (&deep, Some(0))] {
        let size = std::fs::metadata(input).expect("size").len();
        let (code, peak) = peak_rss(&["check", "--no-envoy", "--input", input]);
        eprintln!(
            "check {input}: {size} bytes, exit {code:?}, peak RSS {} MiB",
            peak >> 20
        );
        assert_eq!(code, expect, "{input}");
        assert!(peak < 128 << 20, "{input}: peak RSS {} MiB", peak >> 20);
    }
}

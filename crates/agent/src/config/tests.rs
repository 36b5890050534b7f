//! The agent config's validation, key by key.

use super::*;
use std::os::unix::fs::PermissionsExt;

fn load(yaml: &str) -> Result<Config, Vec<String>> {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path().join("agent.yaml");
    std::fs::write(&p, yaml).expect("write");
    Config::load(&p).map_err(|e| e.problems)
}

#[test]
fn file_source_needs_only_a_file() {
    let c = load("source: file\nfile: /tmp/lb.yaml\n").expect("valid");
    assert_eq!(c.source, SourceKind::File("/tmp/lb.yaml".into()));
    assert_eq!(c.vpsie.poll_interval, Duration::from_secs(30));
    assert_eq!(
        c.envoy.admin_address.to_string(),
        "unix:/run/envoy/admin.sock"
    );
    assert_eq!(
        c.envoy.stats_address,
        Some(SocketAddr::from(([127, 0, 0, 1], 9901)))
    );
    assert_eq!(c.agent_listen.to_string(), "unix:/run/vpsie-lb/agent.sock");
    assert_eq!(c.envoy.access_log_sample_percent, 1);
}

#[test]
fn every_problem_is_named() {
    let errs = load(
        "source: file\nvpsie: {api_url: 'http://api.example.com/v1', poll_interval: 3x, loadbalancer_ids: ['bad id']}\nenvoy: {admin_address: '0.0.0.0:9901', access_log_sample_percent: 101}\nlogging: {level: loud}\n",
    )
    .expect_err("invalid");
    let all = errs.join("\n");
    for want in [
        "file: is required when source is file",
        "vpsie.api_url: \"http://api.example.com/v1\" must use https unless the host is loopback",
        "vpsie.poll_interval: \"3x\": unit must be ms, s, m or h",
        "vpsie.loadbalancer_ids: \"bad id\" must match",
        "envoy.admin_address: 0.0.0.0:9901 must be a unix socket or a loopback address",
        "envoy.access_log_sample_percent: must be 0..=100 (got 101)",
        "logging.level: must be error",
    ] {
        assert!(all.contains(want), "missing {want:?} in:\n{all}");
    }
}

#[test]
fn the_public_source_takes_an_origin_and_its_own_keys() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = dir.path().join("key");
    std::fs::write(&key, "k").expect("key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let yaml = |extra: &str| {
        format!(
            "source: vpsie_public\nvpsie: {{api_key_file: {}, loadbalancer_ids: [8152952c-87ca-11eb-9353-0242ac110004]{extra}}}\n",
            key.display()
        )
    };
    let c = load(&yaml("")).expect("defaults");
    assert_eq!(c.source, SourceKind::VpsiePublic);
    assert_eq!(c.vpsie.api_url, "https://api.vpsie.com");
    assert_eq!(
        c.vpsie.certificate_dir,
        PathBuf::from("/etc/vpsie-lb/certs")
    );
    assert_eq!((c.vpsie.redirect_port, c.vpsie.agent_api_url), (80, None));
    let c = load(&yaml(", api_url: 'https://api.vpsie.com/', certificate_dir: /etc/letsencrypt/live, redirect_port: 8080, agent_api_url: 'https://api.vpsie.com/v1'")).expect("set");
    assert_eq!(
        c.vpsie.certificate_dir,
        PathBuf::from("/etc/letsencrypt/live")
    );
    assert_eq!(c.vpsie.redirect_port, 8080);
    assert_eq!(
        c.vpsie.agent_api_url.as_deref(),
        Some("https://api.vpsie.com/v1")
    );
    let errs = load(&yaml(
        ", api_url: 'https://api.vpsie.com/v1', agent_api_url: 'http://10.0.0.1/v1'",
    ))
    .expect_err("bad");
    assert!(
        errs[0].contains("has a path; with source vpsie_public it is the origin alone"),
        "{errs:?}"
    );
    assert!(
        errs[1].starts_with("vpsie.agent_api_url: \"http://10.0.0.1/v1\" must use https"),
        "{errs:?}"
    );
}

#[test]
fn unknown_keys_are_refused_with_their_path() {
    let errs = load("envoy: {admin_adress: '127.0.0.1:9901'}\n").expect_err("typo");
    assert!(
        errs[0].starts_with("envoy.admin_adress: unknown field `admin_adress`"),
        "{errs:?}"
    );
}

#[test]
fn acme_keys_default_to_the_runtime_socket_and_the_system_roots() {
    let c = load("source: file\nfile: /tmp/x.json\n").expect("valid");
    assert_eq!(
        c.acme,
        AcmeConfig {
            responder_socket: PathBuf::from(vpsie_lb_envoy::DEFAULT_ACME_SOCKET),
            directory_ca_file: None,
            allowed_directories: vec![],
            account_email: None,
            order_timeout: super::acme::DEFAULT_ORDER_TIMEOUT,
        }
    );
    let errs = load(
        "source: file\nfile: /tmp/x.json\nacme: {responder_socket: acme.sock, directory_ca_file: ca.pem}\n",
    )
    .expect_err("relative paths");
    assert_eq!(
        errs[0], "acme.responder_socket: acme.sock: a unix socket needs an absolute path",
        "{errs:?}"
    );
    assert!(
        errs[1].starts_with("acme.directory_ca_file: ca.pem must be an absolute path"),
        "{errs:?}"
    );
    let errs = load(
        "source: file\nfile: /tmp/x.json\nacme: {allowed_directories: ['http://ca.lan/dir'], account_email: ops, order_timeout: 1s}\n",
    )
    .expect_err("bad acme keys");
    assert_eq!(
        errs,
        [
            "acme.allowed_directories: \"http://ca.lan/dir\" must be an https:// URL",
            "acme.account_email: \"ops\" is not an email address",
            "acme.order_timeout: 1s must be 5s..=1h",
        ],
    );
    let c = load("source: file\nfile: /tmp/x.json\nacme: {allowed_directories: ['https://ca.lan/dir'], account_email: ops@lan.net, order_timeout: 20s}\n")
        .expect("valid");
    assert_eq!(c.acme.allowed_directories, ["https://ca.lan/dir"]);
    assert_eq!(c.acme.order_timeout, std::time::Duration::from_secs(20));
}

#[test]
fn every_socket_key_wants_an_absolute_path_the_kernel_takes() {
    let long = format!("/run/{}", "s".repeat(103));
    for (section, key) in [
        ("acme", "responder_socket"),
        ("envoy", "xds_socket"),
        ("envoy", "waf_socket"),
    ] {
        for (path, why) in [
            ("x.sock", "a unix socket needs an absolute path"),
            (
                long.as_str(),
                "a unix socket path must be at most 107 bytes",
            ),
        ] {
            let errs = load(&format!(
                "source: file\nfile: /tmp/x.json\n{section}: {{{key}: {path}}}\n"
            ))
            .expect_err("a bad socket path");
            assert_eq!(errs, [format!("{section}.{key}: {path}: {why}")]);
        }
    }
}

#[test]
fn http_is_allowed_only_to_loopback() {
    for ok in [
        "https://api.vpsie.com/v1",
        "http://127.0.0.1:8080/v1",
        "http://localhost/v1",
        "http://[::1]:9/v1",
    ] {
        assert_eq!(url_problem("vpsie.api_url", ok), None, "{ok}");
    }
    for bad in [
        "http://10.0.0.1/v1",
        "ftp://x/v1",
        "http://127.0.0.1.evil.com/v1",
        "http://127.0.0.1:80@evil.example/v1",
        "HTTP://10.0.0.1/v1",
        "api.vpsie.com/v1",
    ] {
        assert!(url_problem("vpsie.api_url", bad).is_some(), "{bad}");
    }
}

#[test]
fn a_key_file_others_can_read_is_refused_with_the_fix() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = dir.path().join("api-key");
    std::fs::write(&key, "secret-key-123\n").expect("write");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let cfg = format!(
        "vpsie: {{api_key_file: {}, loadbalancer_id: lb-1}}\n",
        key.display()
    );
    let errs = load(&cfg).expect_err("world-readable key");
    assert!(
        errs[0].contains("readable by every user (mode 0644); run chmod 600"),
        "{errs:?}"
    );
    assert!(!errs[0].contains("secret-key-123"));
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let c = load(&cfg).expect("0600 key is fine");
    assert_eq!(c.vpsie.loadbalancer_ids, vec!["lb-1"]);
    assert_eq!(read_api_key(&key).expect("key"), "secret-key-123");
}

#[test]
fn durations() {
    let d = |s: &str| parse_duration(&serde_norway::from_str(s).expect("yaml"));
    assert_eq!(d("30s"), Ok(Duration::from_secs(30)));
    assert_eq!(d("500ms"), Ok(Duration::from_millis(500)));
    assert_eq!(d("2m"), Ok(Duration::from_secs(120)));
    assert_eq!(d("5"), Ok(Duration::from_secs(5)));
    assert!(d("-1s").is_err());
}

#[test]
fn regression_overflowing_durations_wrapped_or_panicked() {
    let d = |s: &str| parse_duration(&serde_norway::from_str(s).expect("yaml"));
    for huge in [
        "18446744073709551615h",
        "5124095576030432h",
        "307445734561825861m",
        "18446744073709551615",
        "18446744073709551615s",
        "400d",
        "366d",
    ] {
        assert!(d(huge).is_err(), "{huge} must be refused");
    }
    assert_eq!(d("8760h"), Ok(Duration::from_secs(365 * 86_400)));
    let errs = load("source: file\nfile: /x\nvpsie: {poll_interval: 99999999999999h}\n")
        .expect_err("huge interval");
    assert!(errs[0].starts_with("vpsie.poll_interval:"), "{errs:?}");
}

#[test]
fn agent_endpoints_must_listen_on_loopback() {
    let errs = load("source: file\nfile: /x\nagent: {listen_address: '0.0.0.0:9902'}\n")
        .expect_err("public endpoints");
    assert!(
        errs[0].starts_with(
            "agent.listen_address: 0.0.0.0:9902 must be a unix socket or a loopback address"
        ),
        "{errs:?}"
    );
    assert!(load("source: file\nfile: /x\nagent: {listen_address: '[::1]:9902'}\n").is_ok());
}

#[test]
fn allowed_backend_networks_are_parsed_and_named_when_wrong() {
    let c = load("source: file\nfile: /x\nallowed_backend_networks: [127.0.0.0/8, '::1/128']\n")
        .expect("valid");
    assert_eq!(c.allowed_backend_networks.len(), 2);
    let errs = load("source: file\nfile: /x\nallowed_backend_networks: [127.0.0.0/40]\n")
        .expect_err("bad prefix");
    assert!(
        errs[0].starts_with("allowed_backend_networks: \"127.0.0.0/40\""),
        "{errs:?}"
    );
}

#[test]
fn the_udp_guard_is_on_by_default_and_its_table_name_is_checked() {
    let base = "source: file\nfile: /tmp/x.json\n";
    let guard = |extra: &str| load(&format!("{base}{extra}")).map(|c| c.udp_guard);
    let table = |extra: &str| guard(extra).map(|g| g.map(|g| g.table));
    assert_eq!(table(""), Ok(Some("vpsie_lb".to_owned())));
    assert_eq!(
        table("udp_guard: {table: lb_2}\n"),
        Ok(Some("lb_2".to_owned()))
    );
    let tracked = |extra: &str| guard(extra).map(|g| g.map(|g| g.tracked_clients));
    assert_eq!(tracked(""), Ok(Some(65_536)));
    assert_eq!(tracked("udp_guard: {tracked_clients: 2}\n"), Ok(Some(2)));
    for bad in ["0", "1048577"] {
        let errs = tracked(&format!("udp_guard: {{tracked_clients: {bad}}}\n")).expect_err(bad);
        assert!(
            errs[0].starts_with("udp_guard.tracked_clients: must be 1..=1048576"),
            "{errs:?}"
        );
    }
    assert_eq!(guard("udp_guard: {enabled: false}\n"), Ok(None));
    // The name goes into nft commands: nothing that could end one.
    for bad in ["'x; flush ruleset'", "2lb", "LB", "''", &"a".repeat(33)] {
        let errs = guard(&format!("udp_guard: {{table: {bad}}}\n")).expect_err(bad);
        assert!(
            errs[0].starts_with("udp_guard.table: ")
                && errs[0].ends_with("not starting with a digit"),
            "{errs:?}"
        );
    }
}

#[test]
fn the_waf_engine_is_the_service_unless_envoy_is_asked_for() {
    use vpsie_lb_envoy::WafEngine;
    let engine = |extra: &str| {
        load(&format!("source: file\nfile: /tmp/x.json\n{extra}")).map(|c| c.envoy.waf_engine)
    };
    let module = std::path::PathBuf::from(vpsie_lb_envoy::DEFAULT_WAF_FILTER);
    let cases: &[(&str, Result<WafEngine, &str>)] = &[
        ("", Ok(WafEngine::Service)),
        ("envoy: {waf_engine: service}\n", Ok(WafEngine::Service)),
        (
            "envoy: {waf_engine: envoy}\n",
            Ok(WafEngine::InEnvoy(module)),
        ),
        (
            "envoy: {waf_engine: envoy, waf_filter: /opt/waf.so}\n",
            Ok(WafEngine::InEnvoy("/opt/waf.so".into())),
        ),
        (
            "envoy: {waf_engine: envoy, waf_filter: waf.so}\n",
            Err("envoy.waf_engine: the filter module waf.so must be an absolute path"),
        ),
        (
            "envoy: {waf_engine: nginx}\n",
            Err("envoy.waf_engine: must be service or envoy (got \"nginx\")"),
        ),
    ];
    for (extra, want) in cases {
        let got = engine(extra);
        match want {
            Ok(w) => assert_eq!(got.as_ref(), Ok(w), "{extra}"),
            Err(msg) => assert_eq!(got.expect_err(extra), [*msg], "{extra}"),
        }
    }
}

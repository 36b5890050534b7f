//! `vpsie-lb-agent ha render|check|notify` on their own: the rendered
//! config against the real keepalived's `--config-test`, the check against
//! a real Envoy, and the notify record and hook. The pair itself is in
//! `live_ha.rs`.

mod common;

use std::path::Path;
use std::process::Output;

use vpsie_lb_testkit::free_port;
use vpsie_lb_testkit::netns::Lan;

fn agent(args: &[&str]) -> Output {
    common::agent(args)
}

fn text(out: &[u8]) -> String {
    String::from_utf8_lossy(out).into_owned()
}

/// An agent config with an `ha` section in `mode` (`extra`: more `ha` lines).
fn write_config(dir: &Path, admin_port: u16, mode: &str, extra: &str) -> String {
    let path = dir.join("agent.yaml");
    let vips = if mode == "active_active" {
        "[10.77.0.10/24, 10.77.0.20/24]\n  primary_ip: 10.77.0.10"
    } else {
        "[10.77.0.10/24]"
    };
    std::fs::write(
        &path,
        format!(
            "source: file\nfile: {d}/lb.yaml\nstate_dir: {d}/state\nenvoy: {{admin_address: '127.0.0.1:{admin_port}'}}\nha:\n  mode: {mode}\n  priority: 100\n  interface: eth0\n  virtual_ips: {vips}\n  peers: [10.77.0.2]\n  source_address: 10.77.0.1\n  advert_interval: 100ms\n  script_user: nobody\n  status_dir: {d}/ha\n{extra}",
            d = dir.display()
        ),
    )
    .expect("write agent.yaml");
    path.to_string_lossy().into_owned()
}

/// An active-passive config whose `notify_command` is a shell script of
/// `body`, given `arg`.
fn with_hook(dir: &Path, body: &str, arg: &str) -> String {
    let hook = dir.join("hook.sh");
    std::fs::write(&hook, format!("#!/bin/sh\n{body}\n")).expect("hook");
    std::fs::set_permissions(&hook, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    let command = format!("[{}, '{arg}']", hook.display());
    write_config(
        dir,
        9901,
        "active_passive",
        &format!("  notify_command: {command}\n"),
    )
}

/// keepalived 2.2.7's `--config-test` ends by killing itself (fixed in
/// 2.2.8), so its exit code says nothing: what it wrote is the verdict.
fn keepalived_verdict(lan: &Lan, conf: &Path) -> String {
    let log = conf.with_extension("test.log");
    let _ = std::fs::remove_file(&log);
    let out = lan
        .ns("n1")
        .command("keepalived")
        .arg(format!("--config-test={}", log.display()))
        .arg(format!("--use-file={}", conf.display()))
        .output()
        .expect("run keepalived");
    let written = std::fs::read_to_string(&log).unwrap_or_default();
    format!("{written}{}", text(&out.stderr).replace("Terminated\n", ""))
}

#[test]
fn keepalived_accepts_what_ha_render_writes_in_both_modes() {
    let lan = {
        let mut lan = Lan::new("hacfg").expect("lan");
        lan.add("n1", "10.77.0.1".parse().expect("ip"))
            .expect("node");
        lan
    };
    for mode in ["active_passive", "active_active"] {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = write_config(dir.path(), 9901, mode, "");
        let conf = dir.path().join("keepalived.conf");
        let out = agent(&[
            "ha",
            "render",
            "--config",
            &config,
            "--out",
            &conf.to_string_lossy(),
        ]);
        assert!(out.status.success(), "{mode}: {}", text(&out.stderr));
        assert_eq!(
            keepalived_verdict(&lan, &conf),
            "",
            "{mode}: keepalived objects"
        );
        // The printed config is the written one.
        let printed = agent(&["ha", "render", "--config", &config]);
        assert_eq!(
            text(&printed.stdout),
            std::fs::read_to_string(&conf).expect("conf")
        );
        // And the verdict can fail: the same file with a typo is refused.
        let broken = std::fs::read_to_string(&conf)
            .expect("conf")
            .replace("nopreempt", "nopreemptt")
            .replace("preempt_delay", "preempt_delayy");
        std::fs::write(&conf, broken).expect("write");
        assert!(
            keepalived_verdict(&lan, &conf).contains("Unknown keyword"),
            "{mode}"
        );
    }
}

#[test]
fn ha_render_refuses_a_config_without_ha_or_with_problems() {
    let dir = tempfile::tempdir().expect("tempdir");
    let plain = dir.path().join("plain.yaml");
    std::fs::write(&plain, "source: file\nfile: /x\n").expect("write");
    let out = agent(&["ha", "render", "--config", &plain.to_string_lossy()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("has no ha section"),
        "{}",
        text(&out.stderr)
    );
    let config = write_config(
        dir.path(),
        9901,
        "active_passive",
        "  virtual_router_id: 999\n",
    );
    let out = agent(&["ha", "render", "--config", &config]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("ha.virtual_router_id: must be 1..=255 (got 999)"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn ha_notify_records_the_state_and_runs_the_hook_only_on_master() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hook_out = dir.path().join("hook.out");
    let config = with_hook(
        dir.path(),
        &format!(
            "echo \"$VPSIE_LB_HA_INSTANCE $VPSIE_LB_HA_STATE $VPSIE_LB_HA_VIRTUAL_IPS $1\" >> {}",
            hook_out.display()
        ),
        "moved",
    );
    let notify = |instance: &str, state: &str| {
        agent(&[
            "ha",
            "notify",
            "--config",
            &config,
            "--instance",
            instance,
            state,
        ])
    };
    let record = || -> serde_json::Value {
        serde_json::from_slice(
            &std::fs::read(dir.path().join("ha/vpsie_lb_1.json")).expect("record"),
        )
        .expect("json")
    };
    let out = notify("vpsie_lb_1", "backup");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(record()["state"], "backup");
    assert!(!hook_out.exists(), "the hook runs only on becoming master");

    let out = notify("vpsie_lb_1", "master");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(record()["state"], "master");
    assert_eq!(record()["notify_command"], "exit 0");
    assert_eq!(
        std::fs::read_to_string(&hook_out).expect("hook ran"),
        "vpsie_lb_1 master 10.77.0.10/24 moved\n"
    );

    let out = notify("../../etc/x", "master");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("is not in this node's ha config (vpsie_lb_1)"),
        "{}",
        text(&out.stderr)
    );
    let out = notify("vpsie_lb_1", "sideways");
    assert_eq!(out.status.code(), Some(2), "clap refuses an unknown state");
}

#[test]
fn ha_check_refuses_until_envoy_is_ready_and_holds_the_confirmed_listeners() {
    let dir = tempfile::tempdir().expect("tempdir");
    let admin = free_port();
    let config = write_config(dir.path(), admin, "active_passive", "");
    let check = || {
        let out = agent(&["ha", "check", "--config", &config]);
        (out.status.code(), text(&out.stderr))
    };
    let (code, why) = check();
    assert_eq!(code, Some(1));
    assert!(why.contains("envoy is not ready"), "{why}");

    let bootstrap = dir.path().join("bootstrap.yaml");
    std::fs::write(
        &bootstrap,
        format!(
            "admin:\n  address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}\n"
        ),
    )
    .expect("bootstrap");
    let _envoy =
        vpsie_lb_testkit::envoy::Envoy::start(&bootstrap, admin, &dir.path().join("envoy.log"));
    let (code, why) = check();
    assert_eq!(code, Some(1));
    assert!(
        why.contains("no config was ever confirmed on this node"),
        "{why}"
    );

    let state = dir.path().join("state");
    // Documents and their listeners, as a pass would save them.
    let save = |listeners: &[&str]| {
        let docs = [(
            "web".to_owned(),
            serde_json::json!({"id": "web", "listeners": listeners}),
        )]
        .into_iter()
        .collect();
        let unsaved = vpsie_lb_agent::state::Unsaved {
            files: vec![],
            listeners: listeners.iter().map(|s| (*s).to_owned()).collect(),
        };
        vpsie_lb_agent::state::save(&state, &docs, &unsaved).expect("save");
    };
    save(&[]);
    let (code, why) = check();
    assert_eq!(code, Some(1));
    assert!(why.contains("has no listeners"), "{why}");
    save(&["lb_web"]);
    let (code, why) = check();
    assert_eq!(code, Some(1));
    assert!(
        why.contains("envoy lacks 1 of the 1 confirmed listeners (lb_web)"),
        "{why}"
    );
}

#[test]
fn regression_a_hook_still_running_overwrote_the_state_keepalived_reported_after_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    // The hook takes so long that keepalived reports the next state first.
    let script = format!(
        "{} ha notify --config {} --instance vpsie_lb_1 backup",
        common::agent_bin(),
        dir.path().join("agent.yaml").display()
    );
    let config = with_hook(dir.path(), &script, "");
    let out = agent(&[
        "ha",
        "notify",
        "--config",
        &config,
        "--instance",
        "vpsie_lb_1",
        "master",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let record: serde_json::Value = serde_json::from_slice(
        &std::fs::read(dir.path().join("ha/vpsie_lb_1.json")).expect("record"),
    )
    .expect("json");
    assert_eq!(record["state"], "backup", "{record}");
}

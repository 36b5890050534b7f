//! The files under packaging/: units pass `systemd-analyze verify` with the
//! real binaries in place, their exposure stays at or under 4.0, the sysctl
//! keys exist in this kernel, and the example config is a valid config.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

fn packaging() -> PathBuf {
    vpsie_lb_testkit::workspace_root().join("packaging")
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("read dir") {
        let e = e.expect("entry");
        let dest = to.join(e.file_name());
        let kind = e.file_type().expect("type");
        if kind.is_dir() {
            copy_dir(&e.path(), &dest);
        } else if kind.is_symlink() {
            let target = std::fs::read_link(e.path()).expect("link");
            let _ = std::os::unix::fs::symlink(target, dest);
        } else {
            std::fs::copy(e.path(), dest).expect("copy");
        }
    }
}

#[test]
fn units_verify_with_the_real_binaries_in_place() {
    let root = tempfile::tempdir().expect("tempdir");
    let r = root.path();
    for d in ["usr/bin", "bin", "etc/systemd/system"] {
        std::fs::create_dir_all(r.join(d)).expect("mkdir");
    }
    // systemd needs its own units (targets) inside the root.
    copy_dir(
        Path::new("/lib/systemd/system"),
        &r.join("lib/systemd/system"),
    );
    std::fs::copy(common::agent_bin(), r.join("usr/bin/vpsie-lb-agent")).expect("agent binary");
    std::fs::copy(
        vpsie_lb_testkit::envoy::envoy_bin(),
        r.join("usr/bin/envoy"),
    )
    .expect("envoy binary");
    std::fs::copy("/bin/kill", r.join("bin/kill")).expect("kill");
    let mut units = Vec::new();
    for unit in ["vpsie-lb-agent.service", "envoy.service"] {
        let dest = r.join("etc/systemd/system").join(unit);
        std::fs::copy(packaging().join("systemd").join(unit), &dest).expect("unit");
        units.push(dest);
    }
    // Debian's keepalived unit with our drop-in (scripts/setup.sh installs
    // keepalived, so its unit is among those copied above).
    std::fs::create_dir_all(r.join("usr/sbin")).expect("mkdir");
    std::fs::copy("/usr/sbin/keepalived", r.join("usr/sbin/keepalived")).expect("keepalived");
    let drop_in = r.join("etc/systemd/system/keepalived.service.d");
    std::fs::create_dir_all(&drop_in).expect("mkdir");
    std::fs::copy(
        packaging().join("systemd/keepalived.service.d/vpsie-lb.conf"),
        drop_in.join("vpsie-lb.conf"),
    )
    .expect("drop-in");
    units.push(r.join("lib/systemd/system/keepalived.service"));
    let out = Command::new("systemd-analyze")
        .arg(format!("--root={}", r.display()))
        .arg("verify")
        .args(&units)
        .output()
        .expect("run systemd-analyze (scripts/setup.sh installs it)");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "systemd-analyze verify:\n{said}"
    );
}

#[test]
fn units_expose_at_most_4_0() {
    for unit in ["vpsie-lb-agent.service", "envoy.service"] {
        let out = Command::new("systemd-analyze")
            .args(["security", "--offline=true", "--threshold=40"])
            .arg(packaging().join("systemd").join(unit))
            .output()
            .expect("run systemd-analyze");
        let text = String::from_utf8_lossy(&out.stdout);
        let line = text
            .lines()
            .find(|l| l.contains("Overall exposure level"))
            .unwrap_or_default()
            .to_owned();
        eprintln!("{line}");
        let score: f64 = line
            .split(": ")
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no score for {unit}: {text}"));
        assert!(score <= 4.0, "{unit}: exposure {score} > 4.0\n{text}");
        assert!(out.status.success(), "{unit}: over the threshold\n{text}");
    }
}

#[test]
fn every_sysctl_key_exists_in_this_kernel() {
    let text =
        std::fs::read_to_string(packaging().join("sysctl/60-vpsie-lb.conf")).expect("sysctl file");
    let mut keys = 0;
    for line in text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let (key, value) = line
            .split_once(" = ")
            .unwrap_or_else(|| panic!("not `key = value`: {line}"));
        assert!(!value.trim().is_empty(), "{key} has no value");
        let path = Path::new("/proc/sys").join(key.replace('.', "/"));
        assert!(path.exists(), "{key}: no {}", path.display());
        keys += 1;
    }
    assert!(keys >= 10, "only {keys} keys");
}

#[test]
fn the_example_config_is_valid_once_an_id_is_filled_in() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = dir.path().join("api-key");
    std::fs::write(&key, "k").expect("key");
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .expect("chmod");
    let text = std::fs::read_to_string(packaging().join("config/agent.yaml"))
        .expect("example")
        .replace("CHANGE-ME", "lb-1")
        .replace("/etc/vpsie-lb/api-key", key.to_str().expect("path"));
    let path = dir.path().join("agent.yaml");
    std::fs::write(&path, text).expect("write");
    let cfg = vpsie_lb_agent::config::Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
    assert!(!cfg.envoy.manage, "production runs envoy under systemd");
    // Nothing a proxied connection could reach: both on unix sockets.
    for addr in [&cfg.agent_listen, &cfg.envoy.admin_address] {
        assert!(
            matches!(addr, vpsie_lb_envoy::LocalAddress::Unix(_)),
            "{addr} is not a unix socket"
        );
    }
    assert!(
        cfg.envoy
            .stats_address
            .is_some_and(|a| a.ip().is_loopback())
    );
}

#[test]
fn the_ha_example_is_a_valid_ha_section_that_renders() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ha = std::fs::read_to_string(packaging().join("config/agent-ha.yaml")).expect("example");
    let path = dir.path().join("agent.yaml");
    std::fs::write(
        &path,
        format!("source: file\nfile: /etc/vpsie-lb/lb.yaml\n{ha}"),
    )
    .expect("write");
    let cfg = vpsie_lb_agent::config::Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
    let ha = cfg.ha.expect("an ha section");
    let conf = vpsie_lb_agent::ha::render(&ha, &path);
    assert!(
        conf.contains("nopreempt") && conf.contains("script_user vpsie-lb"),
        "{conf}"
    );
    // The drop-in renders from the config the agent's unit reads.
    let drop_in =
        std::fs::read_to_string(packaging().join("systemd/keepalived.service.d/vpsie-lb.conf"))
            .expect("drop-in");
    assert!(drop_in.contains(
        "ExecStartPre=/usr/bin/vpsie-lb-agent ha render --config /etc/vpsie-lb/agent.yaml --out /etc/keepalived/keepalived.conf"
    ));
}

/// Any local process can flood the agent's endpoints; the unit bounds what
/// that, or a leak, can take from the machine.
#[test]
fn the_agent_unit_bounds_descriptors_and_memory() {
    let unit = std::fs::read_to_string(packaging().join("systemd/vpsie-lb-agent.service"))
        .expect("read unit");
    for key in ["LimitNOFILE=", "MemoryMax="] {
        assert!(
            unit.lines().any(|l| l.starts_with(key)),
            "the agent unit has no {key}"
        );
    }
}

//! Live: `vpsie-lb-agent run` with a file source and a managed Envoy.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{RunningAgent, Via, agent_config_via, backends, lb_over, serves, write_doc};
use serde_json::json;
use vpsie_lb_testkit::http::count_by_backend;
use vpsie_lb_testkit::{free_port, poll_until, signal};

fn config(via: Via, dir: &Path, admin: u16) -> PathBuf {
    let source = format!(
        "source: file\nfile: {}/desired.json\nvpsie: {{poll_interval: 1s}}\n",
        dir.display()
    );
    agent_config_via(dir, admin, &source, via)
}

fn run_follows_the_file_keeps_serving_through_bad_input_and_envoy_crashes_and_restarts_from_last_known_good(
    via: Via,
) {
    let dir = tempfile::tempdir().expect("tempdir");
    let bs = backends(&["a", "b"]);
    let port = free_port();
    let desired = dir.path().join("desired.json");
    write_doc(
        &desired,
        &lb_over("web", "http", port, "round_robin", &bs[..1]),
    );
    let cfg = config(via, dir.path(), free_port());

    let agent = RunningAgent::start(dir.path(), &cfg);
    poll_until("first config served", Duration::from_secs(30), || {
        serves(port, "a")
    });
    agent.wait_log("config_applied event", "\"event\":\"config_applied\"");

    // A change in the file is live within a poll interval plus the apply.
    write_doc(&desired, &lb_over("web", "http", port, "round_robin", &bs));
    poll_until("added backend served", Duration::from_secs(15), || {
        serves(port, "b")
    });

    // Invalid input is reported with its field path, and the previous config keeps serving.
    let mut bad = lb_over("web", "http", port, "round_robin", &bs[..1]);
    bad["backends"][0]["port"] = json!(70000);
    write_doc(&desired, &bad);
    agent.wait_log(
        "config_rejected event",
        "backends[0].port: must be 1..=65535 (got 70000)",
    );
    let counts = count_by_backend(port, 20);
    assert!(
        counts.contains_key("a") && counts.contains_key("b"),
        "previous config stopped serving: {counts:?}"
    );
    assert_eq!(
        agent.log().matches("\"event\":\"config_rejected\"").count(),
        1,
        "the same rejection was reported more than once"
    );

    // Envoy killed: the agent restarts it and it serves again.
    let pids = agent.envoy_pids();
    assert_eq!(pids.len(), 1, "one envoy: {pids:?}");
    signal(pids[0], "KILL");
    agent.wait_log("envoy restart", "envoy exited; restarting");
    poll_until(
        "serving after envoy restart",
        Duration::from_secs(30),
        || serves(port, "b"),
    );

    // SIGTERM: the agent drains Envoy and exits cleanly.
    let mut agent = agent;
    let status = agent.terminate(Duration::from_secs(30));
    assert!(status.success(), "agent exit {status}\n{}", agent.log());
    poll_until("envoy stopped", Duration::from_secs(10), || {
        if agent.envoy_pids().is_empty() {
            Ok(())
        } else {
            Err("envoy still running".into())
        }
    });
    drop(agent);

    // Restart with the source gone: the last-known-good config serves.
    std::fs::remove_file(&desired).expect("remove desired");
    let again = RunningAgent::start(dir.path(), &cfg);
    poll_until(
        "last-known-good served after restart",
        Duration::from_secs(30),
        || serves(port, "b"),
    );
    // Envoy serves the files left on disk as soon as it starts, which can be
    // before the agent's first pass: wait for the report, do not assume it.
    again.wait_log("the missing source reported", "fetch failed");
    drop(again);

    // The review's reproduction: the documents of last-known-good lost too.
    // That used to render "no load balancers" and take every listener off.
    std::fs::remove_file(dir.path().join("state/last-known-good/desired.json"))
        .expect("remove the saved documents");
    let third = RunningAgent::start(dir.path(), &cfg);
    third.wait_log("the lost state is loud", "the saved state is unusable");
    third.wait_log(
        "a pass that refused to serve nothing",
        "no last-known-good state and the desired config is incomplete",
    );
    if via == Via::Files {
        // Envoy reads the files on disk at start. Over xDS, the Envoy this
        // agent started has nothing until the agent publishes, and it must
        // not publish from a lost state: that is the guard's whole job there.
        serves(port, "b").expect("envoy still serves the last config");
    }
    assert!(
        !third.log().contains("\"event\":\"config_applied\""),
        "nothing may be applied from a lost state"
    );
}

/// A write error during apply was reported as Envoy refusing the config
/// (`config_rolled_back`) and parked the candidate until the document
/// changed. Only Envoy's verdict may park a candidate: anything else rolls
/// back, backs off and tries again. (Files only: over xDS nothing is written.)
#[test]
fn regression_a_write_error_was_recorded_as_envoy_refusing_the_config() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bs = backends(&["a", "b"]);
    let (p1, p2) = (free_port(), free_port());
    let desired = dir.path().join("desired.json");
    let web = lb_over("web", "http", p1, "round_robin", &bs[..1]);
    write_doc(&desired, &json!([web]));
    let agent = RunningAgent::start(dir.path(), &config(Via::Files, dir.path(), free_port()));
    poll_until("web served", Duration::from_secs(30), || serves(p1, "a"));

    // The new load balancer's endpoint directory cannot be created: a
    // dangling symlink stands where it goes, like a disk gone bad.
    let blocker = dir.path().join("envoy/eds/lb_two");
    std::os::unix::fs::symlink(dir.path().join("nowhere"), &blocker).expect("blocker");
    let two = lb_over("two", "http", p2, "round_robin", &bs[1..]);
    write_doc(&desired, &json!([web, two]));
    agent.wait_log("the write failure", "apply: write: ");
    serves(p1, "a").expect("the previous config serves");
    assert!(
        !agent.log().contains("config_rolled_back"),
        "a write error is not envoy's verdict:\n{}",
        agent.log()
    );

    // The disk recovers; the same document applies without being changed.
    std::fs::remove_file(&blocker).expect("remove blocker");
    poll_until(
        "two served after the retry",
        Duration::from_secs(30),
        || serves(p2, "b"),
    );
}

/// Stopping a managed Envoy waited the whole drain time even with no
/// connection open: now it stops once Envoy's downstream connections are 0.
fn regression_stopping_envoy_waited_the_whole_drain_time_with_nothing_open(via: Via) {
    let dir = tempfile::tempdir().expect("tempdir");
    let bs = backends(&["a"]);
    let port = free_port();
    write_doc(
        &dir.path().join("desired.json"),
        &lb_over("web", "http", port, "round_robin", &bs),
    );
    let cfg = config(via, dir.path(), free_port());
    let text = std::fs::read_to_string(&cfg).expect("config");
    std::fs::write(&cfg, text.replace("drain_time: 1s", "drain_time: 60s")).expect("config");
    let mut agent = RunningAgent::start(dir.path(), &cfg);
    poll_until("served", Duration::from_secs(30), || serves(port, "a"));
    // Far less than the 60 s drain time: nothing is open.
    let status = agent.terminate(Duration::from_secs(15));
    assert!(status.success(), "agent exit {status}\n{}", agent.log());
}

/// A failed save of last-known-good was tried once: the next pass saw the
/// new documents in memory and an older copy on disk, and a restart brought
/// back the older copy. Now a lagging save is retried every pass.
fn regression_a_failed_save_of_last_known_good_was_never_retried(via: Via) {
    let dir = tempfile::tempdir().expect("tempdir");
    let bs = backends(&["a", "b"]);
    let port = free_port();
    let desired = dir.path().join("desired.json");
    write_doc(
        &desired,
        &lb_over("web", "http", port, "round_robin", &bs[..1]),
    );
    let agent = RunningAgent::start(dir.path(), &config(via, dir.path(), free_port()));
    poll_until("first config served", Duration::from_secs(30), || {
        serves(port, "a")
    });
    let saved = || {
        std::fs::read_to_string(dir.path().join("state/last-known-good/desired.json"))
            .unwrap_or_default()
    };
    poll_until("first state saved", Duration::from_secs(10), || {
        if saved().contains("\"web\"") {
            Ok(())
        } else {
            Err(saved())
        }
    });
    // The link's temp name is taken by a directory: the swap fails, like a
    // full disk would.
    let blocker = dir.path().join("state/.last-known-good.link.tmp");
    std::fs::create_dir_all(blocker.join("x")).expect("blocker");
    write_doc(&desired, &lb_over("web", "http", port, "round_robin", &bs));
    poll_until("the change served", Duration::from_secs(15), || {
        serves(port, "b")
    });
    agent.wait_log("the failed save reported", "save last-known-good failed");
    let port_b = bs[1].port().to_string();
    assert!(
        !saved().contains(&port_b),
        "saved although the swap was blocked"
    );
    std::fs::remove_dir_all(&blocker).expect("unblock");
    poll_until("the lagging save retried", Duration::from_secs(15), || {
        if saved().contains(&port_b) {
            Ok(())
        } else {
            Err(saved())
        }
    });
}

common::over_deliveries!(
    run_follows_the_file_keeps_serving_through_bad_input_and_envoy_crashes_and_restarts_from_last_known_good,
    regression_stopping_envoy_waited_the_whole_drain_time_with_nothing_open,
    regression_a_failed_save_of_last_known_good_was_never_retried,
);

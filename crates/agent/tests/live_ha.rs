//! HA pairs: two nodes in network namespaces, each with a real keepalived,
//! the agent and Envoy, and a client sending 200 new connections a second
//! to the virtual IPs the whole time (`vpsie_lb_testkit::ha_pair`). What
//! must hold: a fault on the master moves the address and traffic resumes
//! through the other node; the old master's return moves nothing and fails
//! nothing; an agent that dies while Envoy serves moves nothing and fails
//! nothing; no address is ever held by two connected nodes. How fast is
//! the benchmark runner's business (`scripts/bench.sh --only ha`).

mod common;

use common::{Via, over_deliveries};

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use vpsie_lb_agent::status::AgentStatus;
use vpsie_lb_envoy::LocalAddress;
use vpsie_lb_testkit::ha_pair::{
    Client, Fault, Mode, Pair, PairOptions, Watcher, longest_split_brain,
};
use vpsie_lb_testkit::poll_until;

/// The labs take most of the machine; one at a time.
static ONE_LAB: Mutex<()> = Mutex::new(());

/// A pair (one lab at a time), the client at 200 new connections a second
/// to each address, and the split-brain watcher.
fn lab(
    mode: Mode,
    prefix: &str,
    via: Via,
) -> (MutexGuard<'static, ()>, Arc<Pair>, Client, Watcher) {
    let one = ONE_LAB
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let pair = start(mode, prefix, via);
    let client = pair.client(200).expect("client");
    let watcher = pair.watch_holders(Duration::from_millis(100));
    (one, pair, client, watcher)
}

/// Stops the client and the watcher; no address was on two connected
/// nodes in two samples in a row.
fn assert_no_split_brain(client: Client, watcher: Watcher) {
    drop(client);
    let holders = watcher.stop();
    assert!(holders.len() > 20, "the watcher sampled: {}", holders.len());
    let split = longest_split_brain(&holders);
    assert!(split <= 1, "split brain: {split} samples in a row");
}

fn start(mode: Mode, prefix: &str, via: Via) -> Arc<Pair> {
    let opts = PairOptions {
        mode,
        advert_ms: 100,
        agent_bin: common::agent_bin().into(),
        envoy_bin: vpsie_lb_testkit::envoy::envoy_bin(),
        prefix: prefix.to_owned(),
        xds: via == Via::Xds,
    };
    Arc::new(Pair::start(opts).unwrap_or_else(|e| panic!("start the ha pair: {e}")))
}

fn status(pair: &Pair, node: usize) -> Result<AgentStatus, String> {
    let addr = LocalAddress::Unix(pair.agent_socket(node));
    let reply = vpsie_lb_agent::local_http::request(
        &addr,
        "GET",
        "/status",
        Duration::from_secs(5),
        1 << 20,
    )
    .map_err(|e| e.to_string())?;
    serde_json::from_str(&reply.body).map_err(|e| e.to_string())
}

over_deliveries!(active_passive_fails_over_never_fails_back_and_ignores_a_dead_agent);

/// Over files and over xDS: the agent's death must not move the address
/// either way, though over xDS Envoy loses its management stream.
fn active_passive_fails_over_never_fails_back_and_ignores_a_dead_agent(via: Via) {
    let prefix = if via == Via::Xds { "hapx" } else { "hapf" };
    let (_one, pair, client, watcher) = lab(Mode::ActivePassive, prefix, via);

    // Both nodes show their state and serve the same confirmed config.
    let versions = poll_until("both agents ready", Duration::from_secs(30), || {
        let (a, b) = (status(&pair, 0)?, status(&pair, 1)?);
        if !(a.ready && b.ready) {
            return Err(format!("ready: {} {}", a.ready, b.ready));
        }
        Ok((a, b))
    });
    assert!(!versions.0.config_version.is_empty(), "{versions:?}");
    assert_eq!(
        versions.0.config_version, versions.1.config_version,
        "the pair serves one config"
    );
    let states: Vec<String> = [&versions.0, &versions.1]
        .iter()
        .map(|s| s.ha.as_ref().expect("ha status").instances[0].state.clone())
        .collect();
    assert_eq!(states, ["master", "backup"]);
    assert!(
        vpsie_lb_agent::local_http::request(
            &LocalAddress::Unix(pair.agent_socket(0)),
            "GET",
            "/metrics",
            Duration::from_secs(5),
            1 << 20
        )
        .expect("metrics")
        .body
        .contains("vpsie_lb_ha_state{instance=\"vpsie_lb_1\",state=\"master\"} 1")
    );

    for fault in [Fault::KillEnvoy, Fault::CutLink, Fault::StopKeepalived] {
        let t = pair
            .fail_and_return(&client, fault)
            .unwrap_or_else(|e| panic!("{fault:?}: {e}"));
        eprintln!("{t:?}");
        let other = 1 - t.master;
        assert!(
            t.failover.failover.is_some(),
            "{fault:?}: the other node never served: {t:?}"
        );
        // The old master returns and takes nothing back, failing nothing.
        assert_eq!(
            t.holders_after,
            vec![other],
            "{fault:?}: failed back: {t:?}"
        );
        assert_eq!(
            (t.comeback.failed, t.comeback.keep_alive_failed),
            (0, 0),
            "{fault:?}: {t:?}"
        );
        assert!(t.comeback.total > 0);
    }

    // Each node became master at least once, and its agent reported it.
    for node in 0..2 {
        let reported = |log: &str| {
            log.lines().any(|l| {
                l.contains("ha_state_changed") && l.contains("on this node: backup -> master")
            })
        };
        poll_until("the takeover reported", Duration::from_secs(10), || {
            let log = pair.whole_log(node, "agent.log");
            reported(&log)
                .then_some(())
                .ok_or_else(|| format!("node {node}: {}", pair.log(node, "agent.log")))
        });
    }

    // The agent dies on the master while Envoy serves: nothing moves.
    let t = pair
        .agent_dies(&client)
        .unwrap_or_else(|e| panic!("agent killed: {e}"));
    eprintln!("{t:?}");
    assert_eq!(
        t.holders_after,
        vec![t.master],
        "a dead agent moved the address"
    );
    assert_eq!(
        (t.failover.failed, t.failover.keep_alive_failed),
        (0, 0),
        "{t:?}"
    );
    assert_eq!(t.failover.failover, None, "{t:?}");
    assert_eq!(
        (t.comeback.failed, t.comeback.keep_alive_failed),
        (0, 0),
        "the agent's return: {t:?}"
    );
    poll_until("the agent back", Duration::from_secs(30), || {
        status(&pair, t.master)?
            .ready
            .then_some(())
            .ok_or_else(|| "not ready".to_owned())
    });

    assert_no_split_brain(client, watcher);
}

#[test]
fn active_active_serves_both_addresses_and_one_node_serves_both_when_the_other_dies() {
    let (_one, pair, client, watcher) = lab(Mode::ActiveActive, "haa", Via::Files);
    let t = pair.both_serve_through_one(&client).expect("active-active");
    eprintln!("{t:?}");
    assert!(t.vip1_moved.failover.is_some(), "{t:?}");
    assert_eq!(
        t.survivor_own.failed, 0,
        "the survivor's own address kept serving: {t:?}"
    );
    assert_eq!(t.holders_during, [1, 1], "{t:?}");
    assert_eq!(
        t.holders_after,
        [0, 1],
        "the returning node takes its address back: {t:?}"
    );

    assert_no_split_brain(client, watcher);
}

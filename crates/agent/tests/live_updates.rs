//! Live: re-rendering while Envoy runs. Backend changes travel by EDS, so
//! the cluster is not rebuilt and no listener drains.

mod common;

use std::time::Duration;

use common::{Lab, Via, backends, lb_over};
use vpsie_lb_testkit::http::count_by_backend;
use vpsie_lb_testkit::{free_port, poll_until};

fn backend_change_updates_endpoints_only_and_drains_nothing(via: Via) {
    let bs = backends(&["a", "b", "c"]);
    let port = free_port();
    let mut lab = Lab::start(via, &lb_over("eds", "http", port, "round_robin", &bs[..2]));
    lab.wait_healthy("eds", 2);
    let cds_before = lab.envoy().stat("cluster_manager.cds.update_success");
    // With files, the listener and cluster files must not even be rewritten.
    let out = lab.out_dir();
    let files = || ["lds/lds.json", "cds/cds.json"].map(|f| std::fs::read(out.join(f)).ok());
    let before = files();

    lab.render(&lb_over("eds", "http", port, "round_robin", &bs));
    assert_eq!(files(), before, "listener or cluster files changed");
    poll_until(
        "the added backend gets traffic",
        Duration::from_secs(20),
        || {
            let counts = count_by_backend(port, 30);
            if counts.contains_key("c") {
                Ok(())
            } else {
                Err(format!("{counts:?}"))
            }
        },
    );

    lab.render(&lb_over("eds", "http", port, "round_robin", &bs[1..]));
    let envoy = lab.envoy();
    poll_until(
        "the removed backend gets no traffic",
        Duration::from_secs(20),
        || {
            let counts = count_by_backend(port, 30);
            if counts.contains_key("a") {
                Err(format!("{counts:?}"))
            } else {
                Ok(())
            }
        },
    );
    let counts = count_by_backend(port, 60);
    assert_eq!(
        counts.get("b").unwrap_or(&0) + counts.get("c").unwrap_or(&0),
        60,
        "{counts:?}"
    );

    for stat in [
        "cluster_manager.cluster_modified",
        "listener_manager.listener_modified",
        "listener_manager.listener_in_place_updated",
        "listener_manager.total_listeners_draining",
        "listener_manager.lds.update_rejected",
        "cluster_manager.cds.update_rejected",
    ] {
        assert_eq!(envoy.stat(stat), Some(0), "{stat}\n{}", envoy.log());
    }
    // Identical CDS content was offered again, and Envoy kept the cluster as it was.
    assert!(envoy.stat("cluster_manager.cds.update_success") >= cds_before);
    assert_eq!(envoy.stat("cluster.lb_eds.update_rejected"), Some(0));
    assert!(
        envoy.stat("cluster.lb_eds.update_success").unwrap_or(0) >= 3,
        "eds updates: initial + 2"
    );
}

common::over_deliveries!(backend_change_updates_endpoints_only_and_drains_nothing,);

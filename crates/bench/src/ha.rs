//! Scenario 9, HA: a keepalived pair in network namespaces
//! (`vpsie_lb_testkit::ha_pair`), a client sending 200 new connections a
//! second to the virtual IP, and faults on the master. For each: the time
//! from the fault to the first request the other node served, the
//! requests that failed, and what a keep-alive client saw; then the old
//! master's return. The split-brain watcher samples who holds each
//! address every 100 ms the whole time.

use std::time::Duration;

use anyhow::{Result, anyhow};
use vpsie_lb_testkit::ha_pair::{
    Fault, Mode, Outcome, Pair, PairOptions, Trial, longest_split_brain,
};

use crate::lab::sibling_binary;
use crate::report::{Summary, Table, fmt_num, verdict};
use crate::{Ctx, Failures, Findings};

/// The advert interval measured (VRRPv3 allows 10 ms steps).
const ADVERT_MS: u32 = 100;
/// New connections a second, per virtual IP.
const RATE: u32 = 200;
/// The targets: link loss and graceful stop, in seconds.
const LINK_TARGET: f64 = 1.0;
const GRACEFUL_TARGET: f64 = 0.5;

/// Runs the scenario and returns its tables.
pub fn run(ctx: &Ctx, findings: &mut Findings, failures: &mut Failures) -> Result<Vec<Table>> {
    let pair = std::sync::Arc::new(start(Mode::ActivePassive, "bhap")?);
    let client = pair.client(RATE).map_err(|e| anyhow!(e))?;
    let watcher = pair.watch_holders(Duration::from_millis(100));
    let mut trials: Vec<Trial> = Vec::new();
    for _ in 0..ctx.runs {
        for fault in [Fault::KillEnvoy, Fault::CutLink, Fault::StopKeepalived] {
            trials.push(
                pair.fail_and_return(&client, fault)
                    .map_err(|e| anyhow!("{fault:?}: {e}"))?,
            );
        }
        trials.push(
            pair.agent_dies(&client)
                .map_err(|e| anyhow!("agent killed: {e}"))?,
        );
    }
    drop(client);
    let split = longest_split_brain(&watcher.stop());
    drop(pair);
    let (shared_table, split_aa) = shared(ctx)?;
    let mut tables = vec![
        failover_table(&trials, ctx.runs, findings, failures),
        shared_table,
    ];
    for (what, n) in [("active-passive", split), ("active-active", split_aa)] {
        if n > 1 {
            failures.push(format!(
                "ha: split brain in {what}: a virtual IP was on both connected nodes for {n} samples in a row (100 ms apart)"
            ));
        }
    }
    tables[0].note(format!(
        "Split brain (an address on both connected nodes in two or more samples in a row, sampled every 100 ms): longest run {split} sample(s) active-passive, {split_aa} active-active: {}.",
        verdict(split <= 1 && split_aa <= 1)
    ));
    Ok(tables)
}

fn start(mode: Mode, prefix: &str) -> Result<Pair> {
    Pair::start(PairOptions {
        mode,
        advert_ms: ADVERT_MS,
        agent_bin: sibling_binary("vpsie-lb-agent")?,
        envoy_bin: vpsie_lb_testkit::envoy::envoy_bin(),
        prefix: prefix.to_owned(),
        xds: false,
    })
    .map_err(|e| anyhow!("start the ha pair: {e}"))
}

fn name(fault: Fault) -> &'static str {
    match fault {
        Fault::KillEnvoy => "1. Envoy killed on the master",
        Fault::CutLink => "2. master's link cut (VM death)",
        Fault::StopKeepalived => "3. keepalived stopped (priority-0 advert)",
        Fault::KillAgent => "4. agent killed, Envoy serving",
    }
}

fn secs(o: &Outcome) -> Option<f64> {
    o.failover.map(|d| d.as_secs_f64())
}

fn failover_table(
    trials: &[Trial],
    runs_per_row: usize,
    findings: &mut Findings,
    failures: &mut Failures,
) -> Table {
    let mut t = Table::new(
        &format!(
            "HA, active-passive: failover (VRRPv3, advert {ADVERT_MS} ms, check every 1 s, fall 2; {RATE} new connections/s)"
        ),
        &[
            "scenario",
            "to first success via the other node, s",
            "failed / sent (new connections)",
            "keep-alive client errors",
            "5. old master returns: failed / sent",
            "target",
        ],
    );
    for fault in [
        Fault::KillEnvoy,
        Fault::CutLink,
        Fault::StopKeepalived,
        Fault::KillAgent,
    ] {
        let runs: Vec<&Trial> = trials.iter().filter(|t| t.fault == fault).collect();
        let times: Vec<f64> = runs.iter().filter_map(|t| secs(&t.failover)).collect();
        let per_run =
            |f: &dyn Fn(&Trial) -> String| runs.iter().map(|t| f(t)).collect::<Vec<_>>().join(", ");
        let (target, met) = judge(fault, &runs, &times);
        if !met {
            findings.push(format!(
                "ha: {} missed its target ({target}): {:?}",
                name(fault),
                times
            ));
        }
        for r in &runs {
            never(fault, r, failures);
        }
        t.row(vec![
            name(fault).into(),
            match Summary::of(&times) {
                Some(s) if fault != Fault::KillAgent => s.show(3),
                _ => "no failover".into(),
            },
            per_run(&|t| format!("{} / {}", t.failover.failed, t.failover.total)),
            per_run(&|t| t.failover.keep_alive_failed.to_string()),
            per_run(&|t| format!("{} / {}", t.comeback.failed, t.comeback.total)),
            format!("{target}: {}", verdict(met)),
        ]);
    }
    t.note(format!(
        "Runs per row: {}. The time is the median (min–max), counts are per run. A request is counted in the window from the fault until the other node served and the traffic settled; requests time out after 0.5 s (connect) and 1 s (read). Scenario 5 is each fault's return (Envoy started again, the link mended, keepalived started again, the agent started again): with `nopreempt` the address stays where it is.",
        runs_per_row
    ));
    t.note("A keep-alive client loses its connection on failover: Envoy terminates TCP, and the other node has no state for it (a reset, or a timeout while the link is cut). It reconnects at once; while the address still leads to a node whose Envoy is dead (scenario 1), every reconnect is refused too, which is why that row counts dozens.");
    t
}

/// A fault's target, and whether every run met it.
fn judge(fault: Fault, runs: &[&Trial], times: &[f64]) -> (String, bool) {
    let every_run_within =
        |limit: f64| times.len() == runs.len() && times.iter().all(|s| *s <= limit);
    match fault {
        Fault::CutLink => (format!("≤ {LINK_TARGET} s"), every_run_within(LINK_TARGET)),
        Fault::StopKeepalived => (
            format!("≤ {GRACEFUL_TARGET} s"),
            every_run_within(GRACEFUL_TARGET),
        ),
        Fault::KillAgent => (
            "no failover, 0 failed".into(),
            runs.iter().all(|t| {
                t.failover.failed == 0
                    && t.failover.failover.is_none()
                    && t.holders_after == vec![t.master]
            }),
        ),
        Fault::KillEnvoy => ("fails over".into(), times.len() == runs.len()),
    }
}

/// What must never happen in a run, whatever the machine: the old master's
/// return failing requests or taking the address back, and a dead agent
/// failing requests or moving the address.
fn never(fault: Fault, r: &Trial, failures: &mut Failures) {
    if r.comeback.failed + r.comeback.keep_alive_failed > 0
        || (fault != Fault::KillAgent && r.holders_after != vec![1 - r.master])
    {
        failures.push(format!(
            "ha: {}: the old master's return failed requests or took the address back: {:?}",
            name(fault),
            r.comeback
        ));
    }
    if fault == Fault::KillAgent && (r.failover.failed > 0 || r.holders_after != vec![r.master]) {
        failures.push(format!(
            "ha: an agent killed while Envoy served failed requests or moved the address: {:?}",
            r.failover
        ));
    }
}

/// Active-active: both addresses served; node 0 cut; node 1 serves both.
fn shared(ctx: &Ctx) -> Result<(Table, usize)> {
    let pair = std::sync::Arc::new(start(Mode::ActiveActive, "bhaa")?);
    let client = pair.client(RATE).map_err(|e| anyhow!(e))?;
    let watcher = pair.watch_holders(Duration::from_millis(100));
    let mut t = Table::new(
        &format!(
            "HA, active-active: node 0 lost and back (two virtual IPs, {RATE} new connections/s to each)"
        ),
        &[
            "run",
            "node 0's address served by node 1 after, s",
            "its failed / sent",
            "node 1's own address: failed / sent",
            "holders during (vip1, vip2)",
            "node 0 takes its address back: failed / sent",
        ],
    );
    for run in 1..=ctx.runs {
        let s = pair
            .both_serve_through_one(&client)
            .map_err(|e| anyhow!("active-active: {e}"))?;
        t.row(vec![
            run.to_string(),
            secs(&s.vip1_moved).map_or("never".into(), |v| fmt_num(v, 3)),
            format!("{} / {}", s.vip1_moved.failed, s.vip1_moved.total),
            format!("{} / {}", s.survivor_own.failed, s.survivor_own.total),
            format!("node {}, node {}", s.holders_during[0], s.holders_during[1]),
            format!("{} / {}", s.vip1_returned.failed, s.vip1_returned.total),
        ]);
    }
    t.note("Active-active preempts (after `preempt_delay`, 2 s here) so that each node serves its own address again; moving the address back resets the connections the survivor held for it, which the last column counts.");
    drop(client);
    let split = longest_split_brain(&watcher.stop());
    Ok((t, split))
}

//! Scenario 4, scale: the real agent, on a file source, applying 1, 100
//! and 1,000 load balancers of 10 backends, and one load balancer of
//! 10,000 backends, to its own Envoy: first from nothing (a fresh VM), then
//! one weight changed in one load balancer (the everyday case). Phase times
//! come from the agent's own log line; memory from `/proc`.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use serde_json::{Value, json};
use vpsie_lb_testkit::free_port;

use crate::lab::{Agent, PHASES, Via, file_source_yaml, unix_now};
use crate::procs::{self, peak_rss_mib, rss_mib};
use crate::report::{Table, fmt_num, verdict};
use crate::{Ctx, Findings};

/// A document of `lbs` load balancers with `backends` each.
fn document(lbs: usize, backends: usize) -> Value {
    Value::Array(
        (0..lbs)
            .map(|i| {
                let b: Vec<Value> = (0..backends)
                    .map(|j| {
                        json!({
                            "id": format!("b{j}"),
                            // Loopback, and nothing listens there: no health
                            // checks are configured, so Envoy never dials them.
                            "address": "127.0.0.1",
                            "port": 40_000 + j,
                            "weight": 1
                        })
                    })
                    .collect();
                json!({
                    "id": format!("s{i}"),
                    "name": format!("scale {i}"),
                    "protocol": if i % 4 == 3 { "tcp" } else { "http" },
                    "port": free_port(),
                    "algorithm": "round_robin",
                    "backends": b,
                })
            })
            .collect(),
    )
}

/// Phase times (ms) of the `n`th change the agent applied, waiting for it.
pub(crate) fn wait_pass(agent: &mut Agent, n: usize, timeout: Duration) -> Result<Vec<f64>> {
    let deadline = Instant::now() + timeout;
    loop {
        agent.proc.check_alive()?;
        let passes = agent.phase_times();
        if let Some(p) = passes.get(n) {
            return Ok(p.to_vec());
        }
        if Instant::now() >= deadline {
            bail!(
                "scale: pass {} not applied within {timeout:?}; agent log:\n{}",
                n + 1,
                procs::tail(&agent.proc.log(), 20)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs scenario 4 and returns its tables.
pub fn run(ctx: &Ctx, findings: &mut Findings) -> Result<Vec<Table>> {
    let cases: &[(usize, usize)] = if ctx.smoke {
        &[(1, 10), (20, 10), (1, 200)]
    } else {
        &[(1, 10), (100, 10), (1000, 10), (1, 10_000)]
    };
    let mut headers = vec!["load balancers × backends", "delivery", "pass"];
    headers.extend(PHASES.iter().map(|p| match *p {
        "translate" => "translate ms",
        "validate" => "validate ms",
        "preflight" => "pre-flight ms",
        "verify" => "verify ms",
        "write" => "write ms",
        "plan" => "plan ms",
        _ => "fetch ms",
    }));
    headers.push("total ms");
    headers.push("file change → confirmed ms");
    let mut times = Table::new("Scale: time per phase of one pass", &headers);
    let mut memory = Table::new(
        "Scale: memory and targets",
        &[
            "load balancers × backends",
            "delivery",
            "agent peak RSS MiB",
            "agent RSS after MiB",
            "Envoy RSS MiB",
            "targets",
        ],
    );
    for (ci, &(lbs, backends)) in cases.iter().enumerate() {
        for via in Via::BOTH {
            let dir = ctx.dir.join(format!("scale-{ci}-{}", via.name()));
            std::fs::create_dir_all(&dir)?;
            let row = one_case(&dir, lbs, backends, via)?;
            let label = format!(
                "{} × {}",
                fmt_num(lbs as f64, 0),
                fmt_num(backends as f64, 0)
            );
            for (name, t, served) in [
                ("first, from nothing", &row.cold, None),
                ("one weight changed", &row.warm, Some(row.served)),
            ] {
                let mut cells = vec![label.clone(), via.name().to_owned(), name.to_owned()];
                cells.extend(t.iter().map(|v| fmt_num(*v, 1)));
                cells.push(fmt_num(t.iter().sum(), 1));
                cells.push(served.map_or(String::new(), |d: Duration| {
                    fmt_num(d.as_secs_f64() * 1000.0, 1)
                }));
                times.row(cells);
            }
            let target = targets(lbs, via, &row, findings);
            memory.row(vec![
                label,
                via.name().to_owned(),
                row.peak.map_or("-".into(), |m| fmt_num(m, 1)),
                row.rss.map_or("-".into(), |m| fmt_num(m, 1)),
                row.envoy.map_or("-".into(), |m| fmt_num(m, 0)),
                target,
            ]);
            eprintln!(
                "bench: scale {lbs}×{backends} {}: cold {:?} ms, change {:?} ms, served in {:?}",
                via.name(),
                row.cold,
                row.warm,
                row.served
            );
        }
    }
    times.note("`file change → confirmed`: from the rename of the changed file to the agent's log line for that pass, which it writes once Envoy confirmed the change (files: through the admin API; xds: Envoy's ACK, sent after Envoy applied it). It includes the agent noticing the change (it looks every 50 ms). Polling Envoy's `/clusters` instead would load Envoy's main thread with 10,000 hosts a look at this scale.");
    times.note("The real `vpsie-lb-agent run` on a file source with a managed Envoy. `first, from nothing`: the first pass after start (Envoy up and empty). `one weight changed`: the file rewritten with one backend's weight changed; the agent sees the change and applies it. Phases come from the agent's `pass applied a change` log line: validate = per-document validation and choosing; translate = whole-config validation, translation and rendering; plan = comparing with what Envoy has (files: reading them from disk); pre-flight = `envoy --mode validate`; write = files written, or resources published (apply minus verify); verify = Envoy confirming each step (files: through its admin API; xds: its ACK on the stream).");
    times.note("Every fourth load balancer is tcp, the rest http; backends are 127.0.0.1 addresses with no health checks, so Envoy never dials them.");
    Ok(vec![times, memory])
}

/// What one case measured.
struct Case {
    cold: Vec<f64>,
    warm: Vec<f64>,
    served: Duration,
    peak: Option<f64>,
    rss: Option<f64>,
    envoy: Option<f64>,
}

/// `lbs` load balancers of `backends` each, delivered `via`: the first
/// pass, then one weight changed.
fn one_case(dir: &std::path::Path, lbs: usize, backends: usize, via: Via) -> Result<Case> {
    let mut doc = document(lbs, backends);
    let desired = dir.join("desired.json");
    std::fs::write(&desired, serde_json::to_vec(&doc)?)?;
    let mut agent = Agent::start_via(dir, &file_source_yaml(&desired), via)?;
    let timeout = Duration::from_secs(120);
    let cold = wait_pass(&mut agent, 0, timeout)?;
    // The pass goes on after its log line (status, health, reports): change
    // the file only once it ended, or the change waits for that tail.
    let deadline = Instant::now() + timeout;
    while !agent.proc.log().contains("\"message\":\"pass\"") {
        agent.proc.check_alive()?;
        if Instant::now() >= deadline {
            bail!("scale: the first pass did not end within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    // The everyday change: one weight in one load balancer.
    doc[0]["backends"][0]["weight"] = json!(5);
    let tmp = dir.join("desired.json.tmp");
    std::fs::write(&tmp, serde_json::to_vec(&doc)?)?;
    let changed = unix_now();
    std::fs::rename(&tmp, &desired)?;
    let warm = wait_pass(&mut agent, 1, timeout)?;
    let served = agent.applied_at().get(1).map_or(Duration::ZERO, |t| {
        Duration::from_secs_f64((t - changed).max(0.0))
    });
    let pid = agent.proc.pid();
    Ok(Case {
        cold,
        warm,
        served,
        peak: peak_rss_mib(pid),
        rss: rss_mib(pid),
        envoy: agent.envoy_pid().and_then(rss_mib),
    })
}

/// The verdicts of the targets that apply to `lbs`, with a finding for each miss:
/// 1,000 first < 1.5 s and a change served < 100 ms over xds (< 2 s with
/// files), peak RSS < 60 MiB at 1,000 and < 25 MiB at 100 over xds.
fn targets(lbs: usize, via: Via, row: &Case, findings: &mut Findings) -> String {
    let cold: f64 = row.cold.iter().sum();
    let served = row.served.as_secs_f64() * 1000.0;
    let peak = row.peak.unwrap_or(f64::NAN);
    let mut checks: Vec<(String, bool)> = Vec::new();
    match (lbs, via) {
        (1000, Via::Files) => {
            checks.push((
                "first and a change < 2 s".into(),
                cold < 2000.0 && served < 2000.0,
            ));
        }
        (1000, Via::Xds) => {
            checks.push(("first < 1.5 s".into(), cold < 1500.0));
            checks.push(("change confirmed < 100 ms".into(), served < 100.0));
            checks.push(("peak RSS < 60 MiB".into(), peak < 60.0));
        }
        (100, Via::Xds) => checks.push(("peak RSS < 25 MiB".into(), peak < 25.0)),
        _ => {}
    }
    for (what, met) in &checks {
        if !met {
            findings.push(format!(
                "scale ({} load balancers, {}): missed {what}: first pass {cold:.0} ms, change confirmed in {served:.0} ms, peak RSS {peak:.1} MiB",
                lbs,
                via.name()
            ));
        }
    }
    checks
        .iter()
        .map(|(what, met)| format!("{what}: {}", verdict(*met)))
        .collect::<Vec<_>>()
        .join("; ")
}

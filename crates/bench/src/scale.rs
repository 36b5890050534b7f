//! Scenario 4, scale: the real agent, on a file source, applying 1, 100
//! and 1,000 load balancers of 10 backends, and one load balancer of
//! 10,000 backends, to its own Envoy: first from nothing (a fresh VM), then
//! one weight changed in one load balancer (the everyday case). Phase times
//! come from the agent's own log line; memory from `/proc`.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use serde_json::{Value, json};
use vpsie_lb_testkit::free_port;

use crate::lab::{Agent, PHASES, file_source_yaml};
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
fn wait_pass(agent: &mut Agent, n: usize, timeout: Duration) -> Result<Vec<f64>> {
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
    let mut headers = vec!["load balancers × backends", "pass"];
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
    let mut times = Table::new("Scale: time per phase of one pass", &headers);
    let mut memory = Table::new(
        "Scale: memory",
        &[
            "load balancers × backends",
            "agent peak RSS MiB",
            "agent RSS after MiB",
            "Envoy RSS MiB",
            "translate+validate+apply of a change ≤ 2 s (1,000 LBs)",
        ],
    );
    for (ci, &(lbs, backends)) in cases.iter().enumerate() {
        let dir = ctx.dir.join(format!("scale-{ci}"));
        std::fs::create_dir_all(&dir)?;
        let mut doc = document(lbs, backends);
        let desired = dir.join("desired.json");
        std::fs::write(&desired, serde_json::to_vec(&doc)?)?;
        let mut agent = Agent::start(&dir, &file_source_yaml(&desired))?;
        let timeout = Duration::from_secs(120);
        let cold = wait_pass(&mut agent, 0, timeout)?;
        // The everyday change: one weight in one load balancer.
        doc[0]["backends"][0]["weight"] = json!(5);
        let tmp = dir.join("desired.json.tmp");
        std::fs::write(&tmp, serde_json::to_vec(&doc)?)?;
        std::fs::rename(&tmp, &desired)?;
        let warm = wait_pass(&mut agent, 1, timeout)?;
        let label = format!(
            "{} × {}",
            fmt_num(lbs as f64, 0),
            fmt_num(backends as f64, 0)
        );
        for (name, t) in [
            ("first, from nothing", &cold),
            ("one weight changed", &warm),
        ] {
            let mut row = vec![label.clone(), name.to_owned()];
            row.extend(t.iter().map(|v| fmt_num(*v, 1)));
            row.push(fmt_num(t.iter().sum(), 1));
            times.row(row);
        }
        let pid = agent.proc.pid();
        let envoy = agent.envoy_pid().and_then(rss_mib);
        let applied_ms: f64 = warm.iter().sum();
        let target = if lbs == 1000 {
            let met = applied_ms < 2000.0 && cold.iter().sum::<f64>() < 2000.0;
            if !met {
                findings.push(format!(
                    "scale: 1,000 load balancers took {:.0} ms from nothing and {applied_ms:.0} ms for one change (target < 2,000 ms)",
                    cold.iter().sum::<f64>()
                ));
            }
            verdict(met)
        } else {
            "".to_owned()
        };
        memory.row(vec![
            label,
            peak_rss_mib(pid).map_or("-".into(), |m| fmt_num(m, 1)),
            rss_mib(pid).map_or("-".into(), |m| fmt_num(m, 1)),
            envoy.map_or("-".into(), |m| fmt_num(m, 0)),
            target,
        ]);
        eprintln!("bench: scale {lbs}×{backends}: cold {cold:?} ms, change {warm:?} ms");
    }
    times.note("The real `vpsie-lb-agent run` on a file source with a managed Envoy. `first, from nothing`: the first pass after start (Envoy up and empty). `one weight changed`: the file rewritten with one backend's weight changed; the agent sees the change and applies it. Phases come from the agent's `pass applied a change` log line: validate = per-document validation and choosing; translate = whole-config validation, translation and rendering; plan = reading the files on disk and diffing; pre-flight = `envoy --mode validate`; write = files written (apply minus verify); verify = Envoy confirming each step through its admin API.");
    times.note("Every fourth load balancer is tcp, the rest http; backends are 127.0.0.1 addresses with no health checks, so Envoy never dials them.");
    Ok(vec![times, memory])
}

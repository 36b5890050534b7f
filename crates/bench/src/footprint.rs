//! Scenario 5, footprint: the agent polling the API emulator for 100 load
//! balancers at the default interval with nothing changing (its idle CPU
//! and RSS over ten minutes), then the same agent driven through 10,000
//! passes with `POST /sync` (its RSS must not grow; the CPU of one pass).

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use vpsie_lb_testkit::free_port;

use crate::lab::{Agent, Api, lb_doc};
use crate::procs::{cpu_time, peak_rss_mib, rss_mib};
use crate::report::{Summary, Table, fmt_num, verdict};
use crate::{Ctx, Findings};

/// Runs scenario 5 and returns its tables.
pub fn run(ctx: &Ctx, findings: &mut Findings) -> Result<Vec<Table>> {
    let (lbs, idle, passes, poll) = if ctx.smoke {
        (5, Duration::from_secs(3), 50, "1s")
    } else {
        (100, Duration::from_secs(600), 10_000, "30s")
    };
    let dir = ctx.dir.join("footprint");
    std::fs::create_dir_all(&dir)?;
    let api = Api::start()?;
    let mut ids = Vec::new();
    // Ten backends each on loopback ports nothing listens on; without
    // health checks Envoy never dials them.
    let backends: Vec<(u16, u32)> = (0..10).map(|j| (40_000 + j, 1)).collect();
    for i in 0..lbs {
        let id = format!("f{i}");
        api.put_lb(&lb_doc(&id, "http", free_port(), &backends))?;
        ids.push(id);
    }
    let mut agent = Agent::start(&dir, &api.source_yaml(&dir, &ids, poll)?)?;
    let pid = agent.proc.pid();
    let deadline = Instant::now() + Duration::from_secs(60);
    while agent.phase_times().is_empty() {
        agent.proc.check_alive()?;
        if Instant::now() >= deadline {
            bail!("footprint: the first pass did not apply within 60 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }

    // Idle: sample RSS every second, CPU at both ends.
    let cpu0 = cpu_time(pid).unwrap_or_default();
    let t0 = Instant::now();
    let mut rss = Vec::new();
    while t0.elapsed() < idle {
        agent.proc.check_alive()?;
        rss.extend(rss_mib(pid));
        std::thread::sleep(Duration::from_secs(1));
    }
    let cpu = cpu_time(pid).unwrap_or_default().saturating_sub(cpu0);
    let idle_cpu_pct = 100.0 * cpu.as_secs_f64() / t0.elapsed().as_secs_f64();
    let rss_idle = Summary::of(&rss);
    let passes_idle = count_passes(&agent)?;

    // Many passes: push as fast as the agent takes them.
    let rss_before = rss_mib(pid).unwrap_or(f64::NAN);
    let start_passes = count_passes(&agent)?;
    let cpu_before = cpu_time(pid).unwrap_or_default();
    let bound = Instant::now() + Duration::from_secs(if ctx.smoke { 60 } else { 1800 });
    let mut samples = Vec::new();
    let mut done = 0;
    let mut next_sample = (passes / 10).max(1);
    while done < passes && Instant::now() < bound {
        agent.sync()?;
        // The controller folds syncs that arrive during a pass into one,
        // so wait for this one to be counted before the next.
        let target = start_passes + done + 1;
        let wait = Instant::now() + Duration::from_secs(10);
        loop {
            let n = count_passes(&agent)?;
            if n >= target {
                done = n - start_passes;
                break;
            }
            if Instant::now() >= wait {
                bail!("footprint: pass {target} did not happen within 10 s");
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        if done >= next_sample {
            next_sample += (passes / 10).max(1);
            samples.extend(rss_mib(pid));
        }
    }
    let rss_after = rss_mib(pid).unwrap_or(f64::NAN);
    let peak = peak_rss_mib(pid).unwrap_or(f64::NAN);
    let cpu_per_pass = cpu_time(pid)
        .unwrap_or_default()
        .saturating_sub(cpu_before)
        .as_secs_f64()
        * 1000.0
        / done.max(1) as f64;

    let mut t = Table::new(
        &format!("Footprint: the agent with {lbs} load balancers"),
        &["measure", "value", "target"],
    );
    let cpu_met = idle_cpu_pct < 0.5;
    t.row(vec![
        format!("CPU while polling every {poll} for {} s", idle.as_secs()),
        format!(
            "{idle_cpu_pct:.3} % of one core ({:.2} s of CPU)",
            cpu.as_secs_f64()
        ),
        format!("rounds to 0: {}", verdict(cpu_met)),
    ]);
    t.row(vec![
        format!(
            "RSS while polling (median, min–max of {} samples)",
            rss.len()
        ),
        rss_idle.map_or("-".into(), |s| format!("{} MiB", s.show(1))),
        format!(
            "< 30 MiB: {}",
            verdict(rss_idle.is_some_and(|s| s.max < 30.0))
        ),
    ]);
    t.row(vec![
        "passes while polling".into(),
        passes_idle.to_string(),
        String::new(),
    ]);
    // Growth after warm-up: from the first tenth of the passes to the end
    // (the first passes grow the allocator's per-thread arenas once).
    let warm = samples.first().copied().unwrap_or(rss_before);
    let growth = rss_after - warm;
    t.row(vec![
        format!("RSS before / after {done} more passes"),
        format!("{} / {} MiB", fmt_num(rss_before, 1), fmt_num(rss_after, 1)),
        String::new(),
    ]);
    t.row(vec![
        "RSS growth from the first tenth of those passes to the end".into(),
        format!("{growth:+.1} MiB"),
        format!("< 1 MiB: {}", verdict(growth < 1.0)),
    ]);
    t.row(vec![
        "RSS during those passes (every tenth)".into(),
        samples
            .iter()
            .map(|m| fmt_num(*m, 1))
            .collect::<Vec<_>>()
            .join(", "),
        String::new(),
    ]);
    t.row(vec![
        "peak RSS".into(),
        format!("{} MiB", fmt_num(peak, 1)),
        String::new(),
    ]);
    t.row(vec![
        "CPU of one unchanged pass (all load balancers fetched, 304s)".into(),
        format!("{cpu_per_pass:.2} ms"),
        String::new(),
    ]);
    if !cpu_met {
        findings.push(format!(
            "footprint: idle CPU {idle_cpu_pct:.3} % does not round to zero"
        ));
    }
    if rss_idle.is_some_and(|s| s.max >= 30.0) {
        findings.push(format!(
            "footprint: agent RSS {} MiB at {lbs} load balancers (target < 30)",
            rss_idle.map_or("-".into(), |s| s.show(1))
        ));
    }
    if growth >= 1.0 {
        findings.push(format!(
            "footprint: RSS grew by {growth:.1} MiB over {done} passes"
        ));
    }
    t.note("The agent polls the emulator at the default interval (ETag, so an unchanged load balancer is a 304); CPU is the agent's own user+system time from `/proc/<pid>/stat`, RSS is `VmRSS`, peak is `VmHWM`. Its Envoy is not counted.");
    Ok(vec![t])
}

/// Passes the agent has finished, from its `/metrics`.
fn count_passes(agent: &Agent) -> Result<usize> {
    let body = vpsie_lb_testkit::http::get(agent.endpoints, "/metrics")?.body;
    Ok(body
        .lines()
        .filter(|l| l.starts_with("vpsie_lb_reconcile_passes_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as usize)
}

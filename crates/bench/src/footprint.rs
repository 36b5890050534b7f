//! Scenario 5, footprint: the agent polling the API emulator for 100 load
//! balancers at the default interval with nothing changing (its idle CPU
//! and RSS over five minutes), then the same agent driven through 3,000
//! passes with `POST /sync` (its RSS must not grow; the CPU of one pass),
//! once per delivery.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use vpsie_lb_testkit::free_port;

use crate::lab::{Agent, Api, Via, lb_doc};
use crate::procs::{cpu_time, peak_rss_mib, rss_mib};
use crate::report::{Summary, Table, fmt_num};
use crate::{Ctx, Findings};

/// What one agent measured.
struct Measured {
    idle_cpu_pct: f64,
    idle_cpu: Duration,
    rss_idle: Option<Summary>,
    idle_samples: usize,
    passes_idle: usize,
    rss_before: f64,
    rss_after: f64,
    growth: f64,
    samples: Vec<f64>,
    peak: f64,
    done: usize,
    cpu_per_pass: f64,
}

/// Runs scenario 5 and returns its tables.
pub fn run(ctx: &Ctx, findings: &mut Findings) -> Result<Vec<Table>> {
    let (lbs, idle, passes, poll) = if ctx.smoke {
        (5, Duration::from_secs(3), 50, "1s")
    } else {
        (100, Duration::from_secs(300), 3_000, "30s")
    };
    let mut all = Vec::new();
    for via in Via::BOTH {
        let dir = ctx.dir.join(format!("footprint-{}", via.name()));
        std::fs::create_dir_all(&dir)?;
        all.push((via, measure(&dir, via, lbs, idle, passes, poll, ctx.smoke)?));
    }
    let mut t = Table::new(
        &format!("Footprint: the agent with {lbs} load balancers"),
        &["measure", "files", "xds", "target"],
    );
    let cells = |f: &dyn Fn(&Measured) -> String| -> Vec<String> {
        all.iter().map(|(_, m)| f(m)).collect()
    };
    let mut row = |what: String, f: &dyn Fn(&Measured) -> String, target: String| {
        let mut r = vec![what];
        r.extend(cells(f));
        r.push(target);
        t.row(r);
    };
    row(
        format!("CPU while polling every {poll} for {} s", idle.as_secs()),
        &|m| {
            format!(
                "{:.3} % of one core ({:.2} s)",
                m.idle_cpu_pct,
                m.idle_cpu.as_secs_f64()
            )
        },
        "rounds to 0".into(),
    );
    row(
        "RSS while polling (median, min–max of one sample a second)".into(),
        &|m| {
            m.rss_idle.map_or("-".into(), |s| {
                format!("{} MiB ({} samples)", s.show(1), m.idle_samples)
            })
        },
        "< 30 MiB".into(),
    );
    row(
        "passes while polling".into(),
        &|m| m.passes_idle.to_string(),
        String::new(),
    );
    row(
        "RSS before / after the pushed passes".into(),
        &|m| {
            format!(
                "{} / {} MiB after {}",
                fmt_num(m.rss_before, 1),
                fmt_num(m.rss_after, 1),
                m.done
            )
        },
        String::new(),
    );
    row(
        "RSS growth from the first tenth of those passes to the end".into(),
        &|m| format!("{:+.1} MiB", m.growth),
        "< 1 MiB".into(),
    );
    row(
        "RSS during those passes (every tenth)".into(),
        &|m| {
            m.samples
                .iter()
                .map(|x| fmt_num(*x, 1))
                .collect::<Vec<_>>()
                .join(", ")
        },
        String::new(),
    );
    row(
        "peak RSS".into(),
        &|m| format!("{} MiB", fmt_num(m.peak, 1)),
        "xds: < 25 MiB".into(),
    );
    row(
        "CPU of one unchanged pass (all load balancers fetched, 304s)".into(),
        &|m| format!("{:.2} ms", m.cpu_per_pass),
        "xds: half of files".into(),
    );
    for (via, m) in &all {
        let name = via.name();
        if m.idle_cpu_pct >= 0.5 {
            findings.push(format!(
                "footprint ({name}): idle CPU {:.3} % does not round to zero",
                m.idle_cpu_pct
            ));
        }
        if m.rss_idle.is_some_and(|s| s.max >= 30.0) {
            findings.push(format!(
                "footprint ({name}): agent RSS {} MiB at {lbs} load balancers (target < 30)",
                m.rss_idle.map_or("-".into(), |s| s.show(1))
            ));
        }
        if m.growth >= 1.0 {
            findings.push(format!(
                "footprint ({name}): RSS grew by {:.1} MiB over {} passes",
                m.growth, m.done
            ));
        }
    }
    if let [(_, files), (_, xds)] = &all[..] {
        if xds.peak >= 25.0 {
            findings.push(format!(
                "footprint (xds): peak RSS {:.1} MiB at {lbs} load balancers (target < 25)",
                xds.peak
            ));
        }
        if xds.cpu_per_pass > files.cpu_per_pass / 2.0 {
            findings.push(format!(
                "footprint (xds): an unchanged pass costs {:.2} ms of CPU against {:.2} ms with files (target: at most half)",
                xds.cpu_per_pass, files.cpu_per_pass
            ));
        }
    }
    t.note("The agent polls the emulator at the default interval (ETag, so an unchanged load balancer is a 304), then is pushed through passes with `POST /sync` as fast as it takes them (after a burst of 3, at least 250 ms apart: `POST /sync` floods collapse), the runner counting them through `/metrics` every 25 ms; CPU is the agent's own user+system time from `/proc/<pid>/stat`, RSS is `VmRSS`, peak is `VmHWM`. Its Envoy is not counted.");
    Ok(vec![t])
}

/// One agent delivering `via`: idle polling, then `passes` pushed passes.
fn measure(
    dir: &std::path::Path,
    via: Via,
    lbs: usize,
    idle: Duration,
    passes: usize,
    poll: &str,
    smoke: bool,
) -> Result<Measured> {
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
    let mut agent = Agent::start_via(dir, &api.source_yaml(dir, &ids, poll)?, via)?;
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
    let idle_cpu = cpu_time(pid).unwrap_or_default().saturating_sub(cpu0);
    let idle_cpu_pct = 100.0 * idle_cpu.as_secs_f64() / t0.elapsed().as_secs_f64();
    let passes_idle = count_passes(&agent)?;

    // Many passes: push as fast as the agent takes them.
    let rss_before = rss_mib(pid).unwrap_or(f64::NAN);
    let start_passes = count_passes(&agent)?;
    let cpu_before = cpu_time(pid).unwrap_or_default();
    let bound = Instant::now() + Duration::from_secs(if smoke { 60 } else { 1800 });
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
            // Not finer: every look is a `/metrics` request the agent
            // answers, counted in its CPU. At 1 ms, with pushed passes
            // then at least 250 ms apart (MIN_SYNC_GAP), the looks doubled
            // the measured CPU of a pass (60 to 110 ms).
            std::thread::sleep(Duration::from_millis(25));
        }
        if done >= next_sample {
            next_sample += (passes / 10).max(1);
            samples.extend(rss_mib(pid));
        }
    }
    let rss_after = rss_mib(pid).unwrap_or(f64::NAN);
    let cpu_per_pass = cpu_time(pid)
        .unwrap_or_default()
        .saturating_sub(cpu_before)
        .as_secs_f64()
        * 1000.0
        / done.max(1) as f64;
    // Growth after warm-up: from the first tenth of the passes to the end
    // (the first passes grow the allocator's per-thread arenas once).
    let warm = samples.first().copied().unwrap_or(rss_before);
    Ok(Measured {
        idle_cpu_pct,
        idle_cpu,
        rss_idle: Summary::of(&rss),
        idle_samples: rss.len(),
        passes_idle,
        rss_before,
        rss_after,
        growth: rss_after - warm,
        samples,
        peak: peak_rss_mib(pid).unwrap_or(f64::NAN),
        done,
        cpu_per_pass,
    })
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

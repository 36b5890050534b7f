//! Two load balancers on one agent over the same backends, loaded in
//! turn (the order alternating per run, so neither always runs on a warmer
//! machine): the second's req/s over the first's, per run.

use std::time::Duration;

use anyhow::Result;
use serde_json::Value;

use crate::lab::{Agent, Via, file_source_yaml};
use crate::report::{Summary, Table, verdict};
use crate::wrk::Load;
use crate::{Ctx, Findings};

/// One side of the comparison: its document, and the path the load asks for.
pub struct Side {
    /// The load balancer; its `port` is where the load goes.
    pub doc: Value,
    /// The request path.
    pub path: String,
}

/// What the runs gave.
pub struct Outcome {
    /// The second's req/s over the first's, per run.
    pub ratio: Option<Summary>,
    /// req/s of each side, per run.
    pub rps: [Option<Summary>; 2],
    /// p99 latency of each side, ms, per run.
    pub p99: [Option<Summary>; 2],
    /// CPU time per request of Envoy and the helpers, µs, per run.
    pub cpu_us: [Option<Summary>; 2],
    /// The delivery the agent used.
    pub via: Via,
}

/// What else runs beside the agent: more `envoy:` keys, and processes
/// whose CPU time counts with Envoy's.
#[derive(Default)]
pub struct Extra<'a> {
    /// Lines for the agent config's `envoy:` section.
    pub envoy_yaml: &'a str,
    /// Processes that serve the requests with Envoy (the WAF service).
    pub helpers: &'a [u32],
}

/// Serves `sides` from one agent in `dir` and loads each in turn.
pub fn compare(
    ctx: &Ctx,
    findings: &mut Findings,
    name: &str,
    dir: &std::path::Path,
    sides: [Side; 2],
) -> Result<Outcome> {
    compare_with(ctx, findings, name, dir, sides, &Extra::default())
}

/// [`compare`], with `extra` beside the agent.
pub fn compare_with(
    ctx: &Ctx,
    findings: &mut Findings,
    name: &str,
    dir: &std::path::Path,
    sides: [Side; 2],
    extra: &Extra<'_>,
) -> Result<Outcome> {
    std::fs::create_dir_all(dir)?;
    let port = |s: &Side| s.doc["port"].as_u64().unwrap_or(0) as u16;
    let docs = Value::Array(sides.iter().map(|s| s.doc.clone()).collect());
    let desired = dir.join("desired.json");
    std::fs::write(&desired, serde_json::to_vec(&docs)?)?;
    let via = Via::default_of_agent();
    let mut agent = Agent::configure(
        dir,
        &file_source_yaml(&desired),
        via,
        true,
        extra.envoy_yaml,
    )?
    .spawn()?;
    agent.wait_serving(port(&sides[0]), Duration::from_secs(60))?;
    agent.wait_serving(port(&sides[1]), Duration::from_secs(10))?;
    let load = |s: &Side, d: Duration| Load {
        url: format!("http://127.0.0.1:{}{}", port(s), s.path),
        threads: 2,
        connections: 64,
        duration: d,
        close: false,
        // A name, as real clients send (a numeric Host matches WAF rule
        // 920350, and the WAF rows would count a logged match per request).
        host: Some("shop.example.com".into()),
    };
    if !ctx.smoke {
        for s in &sides {
            load(s, Duration::from_secs(1)).run()?;
        }
    }
    let (mut p99, mut rps, mut cpu, mut ratios) = (
        [Vec::new(), Vec::new()],
        [Vec::new(), Vec::new()],
        [Vec::new(), Vec::new()],
        Vec::new(),
    );
    let mut pids: Vec<u32> = extra.helpers.to_vec();
    pids.extend(agent.envoy_pid());
    let cpu_now = || -> Duration { pids.iter().filter_map(|p| crate::procs::cpu_time(*p)).sum() };
    for run in 0..ctx.runs {
        let order = if run % 2 == 0 { [0, 1] } else { [1, 0] };
        let mut pair = [0.0; 2];
        for i in order {
            let before = cpu_now();
            let w = load(&sides[i], ctx.duration).run()?;
            let spent = cpu_now().saturating_sub(before);
            if w.requests > 0 {
                cpu[i].push(spent.as_secs_f64() * 1e6 / w.requests as f64);
            }
            rps[i].push(w.rps);
            if w.failed() > 0 {
                findings.push(format!("{name}: {} failed requests", w.failed()));
            }
            eprintln!(
                "bench: {name} run {} side {i}: {:.0} req/s, p99 {:.2} ms",
                run + 1,
                w.rps,
                w.p99_ms
            );
            pair[i] = w.rps;
            p99[i].push(w.p99_ms);
        }
        ratios.push(pair[1] / pair[0]);
    }
    let both = |v: &[Vec<f64>; 2]| [Summary::of(&v[0]), Summary::of(&v[1])];
    Ok(Outcome {
        ratio: Summary::of(&ratios),
        rps: both(&rps),
        p99: both(&p99),
        cpu_us: both(&cpu),
        via,
    })
}

impl Outcome {
    /// One row of a table without a target: req/s, the ratio, p99 and CPU
    /// per request of each side.
    pub fn cost_row(&self, label: &str) -> Vec<String> {
        let show = |s: Option<Summary>, d: usize| s.map_or("-".into(), |s| s.show(d));
        vec![
            label.to_owned(),
            show(self.rps[1], 0),
            show(self.ratio, 3),
            show(self.p99[0], 2),
            show(self.p99[1], 2),
            show(self.cpu_us[0], 1),
            show(self.cpu_us[1], 1),
        ]
    }

    /// The table of one comparison against the ≥ 0.95× target, `names`
    /// being the two sides; a miss goes to `findings` under `what`.
    pub fn table(
        &self,
        findings: &mut Findings,
        title: &str,
        what: &str,
        names: [&str; 2],
    ) -> Table {
        let [base, other] = names;
        let ratio = self.ratio.map_or("-".into(), |s| s.show(3));
        let met = self.ratio.is_some_and(|s| s.median >= 0.95);
        if !met {
            findings.push(format!(
                "{what}: {other} / {base} req/s {ratio} misses ≥ 0.95"
            ));
        }
        let mut t = Table::new(
            title,
            &[
                &format!("{other} / {base} req/s"),
                &format!("{base} p99 ms"),
                &format!("{other} p99 ms"),
                "target ≥ 0.95×",
            ],
        );
        let p99 = |s: Option<Summary>| s.map_or("-".into(), |s| s.show(2));
        t.row(vec![
            ratio,
            p99(self.p99[0]),
            p99(self.p99[1]),
            verdict(met),
        ]);
        t
    }
}

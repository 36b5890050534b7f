//! Scenario 2, convergence: a change stored in the API emulator (a backend
//! added, a weight changed, a backend removed) timed until Envoy serves it,
//! at the default poll interval, at 1 s, and with `POST /sync` as a push.
//!
//! Changes arrive at random moments, as they would from customers, so the
//! time to the next poll is uniformly spread rather than always the worst
//! case. They go to several load balancers in turn, so a slow poll interval
//! does not make the run last for hours; a load balancer gets its next
//! change only after its previous one was seen.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Result;
use serde_json::Value;
use vpsie_lb_testkit::backend::HttpBackend;
use vpsie_lb_testkit::{free_port, http};

use crate::lab::{Agent, Api, PHASES, Rng, Via, lb_doc};
use crate::report::{Summary, Table, fmt_num, percentile, verdict};
use crate::{Ctx, Failures, Findings};

/// The agent's default poll interval (`vpsie.poll_interval`).
const DEFAULT_POLL: Duration = Duration::from_secs(30);

/// One way of noticing changes.
struct Variant {
    name: &'static str,
    poll: Duration,
    push: bool,
    via: Via,
}

/// What a change does to a load balancer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    AddBackend,
    ChangeWeight(u32),
    RemoveBackend,
}

/// One load balancer's desired state.
struct Lb {
    id: String,
    port: u16,
    /// The backend whose weight changes.
    first_port: u16,
    has_extra: bool,
    weight: u32,
    step: usize,
    /// The change in flight: what, and when it was stored.
    pending: Option<(Op, Instant)>,
}

impl Lb {
    fn doc(&self, pool: &[HttpBackend], extra: &HttpBackend) -> Value {
        let mut backends: Vec<(u16, u32)> = pool.iter().map(|b| (b.port(), 1)).collect();
        backends[0].1 = self.weight;
        if self.has_extra {
            backends.push((extra.port(), 1));
        }
        lb_doc(&self.id, "http", self.port, &backends)
    }

    fn next_op(&self) -> Op {
        match self.step % 3 {
            0 => Op::AddBackend,
            1 => Op::ChangeWeight(if self.weight == 1 { 7 } else { 1 }),
            _ => Op::RemoveBackend,
        }
    }

    fn apply(&mut self, op: Op) {
        match op {
            Op::AddBackend => self.has_extra = true,
            Op::RemoveBackend => self.has_extra = false,
            Op::ChangeWeight(w) => self.weight = w,
        }
        self.step += 1;
    }
}

/// Runs scenario 2 and returns its tables.
pub fn run(ctx: &Ctx, findings: &mut Findings, failures: &mut Failures) -> Result<Vec<Table>> {
    let changes = if ctx.smoke { 3 } else { 50 };
    let variants = [
        Variant {
            name: "polling, default interval (30 s)",
            poll: if ctx.smoke {
                Duration::from_secs(2)
            } else {
                DEFAULT_POLL
            },
            push: false,
            via: Via::Files,
        },
        Variant {
            name: "polling, 1 s interval",
            poll: Duration::from_secs(1),
            push: false,
            via: Via::Files,
        },
        Variant {
            name: "push: POST /sync after the change (files)",
            poll: DEFAULT_POLL,
            push: true,
            via: Via::Files,
        },
        Variant {
            name: "push: POST /sync after the change (xds)",
            poll: DEFAULT_POLL,
            push: true,
            via: Via::Xds,
        },
    ];
    let pool: Vec<HttpBackend> = ["c1", "c2", "c3"]
        .iter()
        .map(|n| HttpBackend::start(n))
        .collect();
    let extra = HttpBackend::start("c4");
    let mut table = Table::new(
        "Convergence: from the change stored in the API to Envoy serving it",
        &[
            "trigger",
            "changes",
            "p50 s",
            "p99 s",
            "max s",
            "target p99",
            "",
        ],
    );
    let mut by_op = Table::new(
        "Convergence by kind of change (p50 / p99 s)",
        &[
            "trigger",
            "backend added",
            "weight changed",
            "backend removed",
        ],
    );
    let mut phases: BTreeMap<(&'static str, &'static str), Vec<f64>> = BTreeMap::new();
    for (vi, v) in variants.iter().enumerate() {
        let dir = ctx.dir.join(format!("convergence-{vi}"));
        std::fs::create_dir_all(&dir)?;
        let api = Api::start()?;
        // Mean gap between changes: a tenth of the interval when polling.
        let mean_gap = if v.push {
            Duration::from_millis(500)
        } else {
            v.poll / 10
        };
        let lb_count = if v.push {
            2
        } else {
            (v.poll.as_secs_f64() * 1.3 / mean_gap.as_secs_f64()).ceil() as usize + 2
        };
        let mut lbs: Vec<Lb> = (0..lb_count)
            .map(|i| Lb {
                id: format!("conv-{i}"),
                port: free_port(),
                first_port: pool[0].port(),
                has_extra: false,
                weight: 1,
                step: 0,
                pending: None,
            })
            .collect();
        for lb in &lbs {
            api.put_lb(&lb.doc(&pool, &extra))?;
        }
        let ids: Vec<String> = lbs.iter().map(|l| l.id.clone()).collect();
        let poll_text = format!("{}ms", v.poll.as_millis());
        let mut agent = Agent::start_via(&dir, &api.source_yaml(&dir, &ids, &poll_text)?, v.via)?;
        for lb in &lbs {
            agent.wait_serving(lb.port, Duration::from_secs(60))?;
        }
        let deadline_per_change = v.poll + Duration::from_secs(15);
        let mut rng = Rng::new(0x5eed + vi as u64);
        let mut samples: Vec<(Op, f64)> = Vec::new();
        let mut made = 0usize;
        let mut next_change = Instant::now();
        let mut turn = 0usize;
        // Bounded: each change either is seen or times out.
        let scenario_deadline =
            Instant::now() + (mean_gap * 2 + deadline_per_change) * (changes as u32 + 2);
        while (made < changes || lbs.iter().any(|l| l.pending.is_some()))
            && Instant::now() < scenario_deadline
        {
            agent.proc.check_alive()?;
            // Look at every change in flight.
            let clusters = agent.admin("/clusters").unwrap_or_default();
            for lb in lbs.iter_mut() {
                let Some((op, t0)) = lb.pending else { continue };
                if seen(op, lb, &clusters, &extra) {
                    samples.push((op, t0.elapsed().as_secs_f64()));
                    lb.pending = None;
                } else if t0.elapsed() > deadline_per_change {
                    failures.push(format!(
                        "convergence ({}): {:?} on {} not served after {:?}",
                        v.name, op, lb.id, deadline_per_change
                    ));
                    lb.pending = None;
                }
            }
            if made < changes && Instant::now() >= next_change {
                let idx = turn % lbs.len();
                if lbs[idx].pending.is_none() {
                    let lb = &mut lbs[idx];
                    let op = lb.next_op();
                    lb.apply(op);
                    let t0 = Instant::now();
                    api.put_lb(&lb.doc(&pool, &extra))?;
                    if v.push {
                        agent.sync()?;
                    }
                    lb.pending = Some((op, t0));
                    made += 1;
                    turn += 1;
                    let gap = mean_gap.as_secs_f64() * 2.0 * rng.unit();
                    next_change = Instant::now() + Duration::from_secs_f64(gap);
                }
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        for (i, lb) in lbs.iter().enumerate() {
            if lb.pending.is_some() {
                failures.push(format!(
                    "convergence ({}): change {i} still pending at the end",
                    v.name
                ));
            }
        }
        let all: Vec<f64> = samples.iter().map(|s| s.1).collect();
        let target = v.poll.as_secs_f64() + 1.0;
        let target = if v.push { 1.0 } else { target };
        let p99 = percentile(&all, 99.0);
        let met = all.len() == changes && p99 <= target;
        if !met {
            findings.push(format!(
                "convergence ({}): p99 {:.3} s against a target of {target:.1} s over {} of {changes} changes",
                v.name,
                p99,
                all.len()
            ));
        }
        let show = |ss: &[f64], p: f64| fmt_num(percentile(ss, p), 3);
        table.row(vec![
            if ctx.smoke && !v.push && vi == 0 {
                "polling, 2 s interval (smoke stand-in for 30 s)".to_owned()
            } else {
                v.name.to_owned()
            },
            format!("{}/{changes}", all.len()),
            show(&all, 50.0),
            show(&all, 99.0),
            show(&all, 100.0),
            format!("≤ {target:.1}"),
            verdict(met),
        ]);
        let of = |pred: fn(&Op) -> bool| -> String {
            let v: Vec<f64> = samples.iter().filter(|s| pred(&s.0)).map(|s| s.1).collect();
            format!("{} / {}", show(&v, 50.0), show(&v, 99.0))
        };
        by_op.row(vec![
            v.name.to_owned(),
            of(|o| *o == Op::AddBackend),
            of(|o| matches!(o, Op::ChangeWeight(_))),
            of(|o| *o == Op::RemoveBackend),
        ]);
        if v.push {
            // The first pass applied the initial config, not a change.
            for pass in agent.phase_times().into_iter().skip(1) {
                for (phase, ms) in PHASES.into_iter().zip(pass) {
                    if ms.is_finite() {
                        phases.entry((v.via.name(), phase)).or_default().push(ms);
                    }
                }
            }
        }
        // Each change really served: the extra backend answers when present.
        let lb = &lbs[0];
        // Weights go up to 7 of 10: 40 requests reach every backend.
        let counts = http::count_by_backend(lb.port, 40);
        if lb.has_extra != counts.contains_key("c4") {
            failures.push(format!(
                "convergence ({}): {} serves {counts:?}, extra backend expected: {}",
                v.name, lb.id, lb.has_extra
            ));
        }
    }
    table.note(format!(
        "{changes} changes per trigger, cycling backend added → first backend's weight changed → backend removed, each on one of several load balancers in turn; the gap before the next change is random (uniform, mean a tenth of the poll interval; 0.5 s with push). A change counts as served when a request through Envoy is answered by the added backend, or when Envoy's `/clusters` shows the new weight or no longer lists the removed backend (polled every 5 ms)."
    ));
    table.note("Targets: p99 ≤ 1 s with the push, ≤ poll interval + 1 s with polling.");
    let mut share = Table::new(
        "The agent's own share of a push-triggered change, per phase (ms)",
        &["delivery", "phase", "p50", "p99", "max"],
    );
    for via in Via::BOTH {
        let mut total = Vec::new();
        for phase in PHASES {
            let v = phases
                .get(&(via.name(), phase))
                .cloned()
                .unwrap_or_default();
            if total.is_empty() {
                total = vec![0.0; v.len()];
            }
            for (t, x) in total.iter_mut().zip(&v) {
                *t += x;
            }
            share.row(phase_row(via, phase, &v));
        }
        let p99 = percentile(&total, 99.0);
        if via == Via::Xds && (p99.is_nan() || p99 > 50.0) {
            findings.push(format!(
                "convergence: an xds push's whole pass took {p99:.1} ms at p99 (target ≤ 50 ms)"
            ));
        }
        share.row(phase_row(via, "whole pass", &total));
    }
    share.note("Target over xds: the whole pass ≤ 50 ms at p99 (push convergence as the agent sees it: fetch to Envoy's ACK).");
    share.note("From the agent's own `pass applied a change` log line (also exported as `vpsie_lb_pass_phase_duration_seconds`). fetch = the API calls; validate = validating each document and choosing what to serve; translate = building and rendering Envoy's files; plan = reading the files on disk and diffing; preflight = `envoy --mode validate` on the candidate; write = writing files (apply minus verify); verify = waiting for Envoy to confirm each step.");
    Ok(vec![table, by_op, share])
}

fn phase_row(via: Via, name: &str, v: &[f64]) -> Vec<String> {
    let s = Summary::of(v);
    vec![
        via.name().to_owned(),
        name.to_owned(),
        fmt_num(percentile(v, 50.0), 1),
        fmt_num(percentile(v, 99.0), 1),
        s.map_or("-".into(), |s| fmt_num(s.max, 1)),
    ]
}

/// Whether Envoy serves `op` on `lb` yet.
fn seen(op: Op, lb: &Lb, clusters: &str, extra: &HttpBackend) -> bool {
    let host = |port: u16| format!("lb_{}::127.0.0.1:{port}::weight::", lb.id);
    match op {
        Op::AddBackend => {
            // Served for real: a request answered by the new backend.
            clusters.contains(&host(extra.port()))
                && (0..12).any(|_| http::get(lb.port, "/").is_ok_and(|r| r.body.trim() == "c4"))
        }
        Op::ChangeWeight(w) => clusters
            .lines()
            .any(|l| l == format!("{}{w}", host(lb.first_port))),
        Op::RemoveBackend => !clusters.contains(&host(extra.port())),
    }
}

//! Scenario 3, hitless change: hundreds of backend changes (added, removed,
//! weight changed, mixed at random) pushed through the API and `POST /sync`
//! while wrk keeps HTTP keep-alive and TCP traffic flowing. Nothing may
//! fail, and no listener may drain for a backend-only change.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use serde_json::Value;
use vpsie_lb_testkit::free_port;

use crate::lab::{Agent, Api, Nginx, Rng, Via, lb_doc};
use crate::report::{Table, fmt_num, percentile, verdict};
use crate::wrk::{self, Load, WrkResult};
use crate::{Ctx, Failures, Findings};

/// Backends that are always in the pool, and the ones that come and go.
const STEADY: usize = 3;
const EXTRA: usize = 2;

/// Envoy counters that show listener and cluster churn.
const COUNTERS: [&str; 5] = [
    "listener_manager.listener_modified",
    "listener_manager.listener_in_place_updated",
    "listener_manager.listener_removed",
    "listener_manager.listener_added",
    "cluster_manager.cluster_modified",
];

/// Runs scenario 3 once per delivery and returns its tables.
pub fn run(ctx: &Ctx, findings: &mut Findings, failures: &mut Failures) -> Result<Vec<Table>> {
    let mut tables = Vec::new();
    for via in Via::BOTH {
        tables.extend(run_via(ctx, via, findings, failures)?);
    }
    Ok(tables)
}

/// Scenario 3 with the agent delivering `via`.
fn run_via(
    ctx: &Ctx,
    via: Via,
    findings: &mut Findings,
    failures: &mut Failures,
) -> Result<Vec<Table>> {
    let changes = if ctx.smoke { 6 } else { 500 };
    let name = via.name();
    let dir = ctx.dir.join(format!("hitless-{name}"));
    std::fs::create_dir_all(&dir)?;
    let ports: Vec<u16> = (0..STEADY + EXTRA).map(|_| free_port()).collect();
    let _nginx = Nginx::start(&dir.join("nginx"), &ports, None)?;
    let api = Api::start()?;
    let (http_port, tcp_port) = (free_port(), free_port());
    // Desired pool: weight per backend port, absent = not configured.
    let mut pool: BTreeMap<u16, u32> = ports[..STEADY].iter().map(|p| (*p, 1)).collect();
    let docs = |pool: &BTreeMap<u16, u32>| -> [Value; 2] {
        let b: Vec<(u16, u32)> = pool.iter().map(|(p, w)| (*p, *w)).collect();
        [
            lb_doc("hl-http", "http", http_port, &b),
            lb_doc("hl-tcp", "tcp", tcp_port, &b),
        ]
    };
    for d in docs(&pool) {
        api.put_lb(&d)?;
    }
    let ids = ["hl-http".to_owned(), "hl-tcp".to_owned()];
    let mut agent = Agent::start_via(&dir, &api.source_yaml(&dir, &ids, "30s")?, via)?;
    agent.wait_serving(http_port, Duration::from_secs(60))?;
    agent.wait_serving(tcp_port, Duration::from_secs(10))?;

    let load = |port: u16, d: Duration| Load {
        url: format!("http://127.0.0.1:{port}/"),
        threads: 1,
        connections: 16,
        duration: d,
        close: false,
        host: None,
    };
    let cx = |agent: &Agent| -> Result<[u64; 2]> {
        Ok([
            agent.stat("cluster.lb_hl-http.upstream_cx_total")?,
            agent.stat("cluster.lb_hl-tcp.upstream_cx_total")?,
        ])
    };

    // Without changes first: the reference p99 and connection rate.
    let base_len = ctx.duration;
    let cx0 = cx(&agent)?;
    let base_http = load(http_port, base_len).start(&dir.join("wrk-http-base.log"))?;
    let base_tcp = load(tcp_port, base_len).start(&dir.join("wrk-tcp-base.log"))?;
    std::thread::sleep(base_len + Duration::from_millis(300));
    let base = [wrk::finish(base_http)?, wrk::finish(base_tcp)?];
    let cx1 = cx(&agent)?;

    // With changes.
    let before: Vec<u64> = COUNTERS
        .iter()
        .map(|c| agent.stat(c))
        .collect::<Result<_>>()?;
    let bound = Duration::from_secs(60) + Duration::from_secs(2) * changes as u32;
    let started = Instant::now();
    let during_http = load(http_port, bound).start(&dir.join("wrk-http.log"))?;
    let during_tcp = load(tcp_port, bound).start(&dir.join("wrk-tcp.log"))?;
    // Let both open their connections before the first change.
    std::thread::sleep(Duration::from_millis(500));
    let mut rng = Rng::new(0x417_1e55);
    let mut converge = Vec::new();
    let mut max_draining = 0;
    let mut kinds: BTreeMap<&str, usize> = BTreeMap::new();
    for i in 0..changes {
        agent.proc.check_alive()?;
        let absent: Vec<u16> = ports[STEADY..]
            .iter()
            .copied()
            .filter(|p| !pool.contains_key(p))
            .collect();
        let present: Vec<u16> = ports[STEADY..]
            .iter()
            .copied()
            .filter(|p| pool.contains_key(p))
            .collect();
        let kind = match rng.below(3) {
            0 if !absent.is_empty() => {
                pool.insert(absent[rng.below(absent.len())], 1);
                "backend added"
            }
            1 if !present.is_empty() => {
                pool.remove(&present[rng.below(present.len())]);
                "backend removed"
            }
            _ => {
                let p = ports[rng.below(STEADY)];
                let old = pool[&p];
                pool.insert(p, 1 + (old + rng.below(9) as u32) % 10);
                "weight changed"
            }
        };
        *kinds.entry(kind).or_default() += 1;
        let t0 = Instant::now();
        for d in docs(&pool) {
            api.put_lb(&d)?;
        }
        agent.sync()?;
        let want: Vec<(String, u32)> = pool
            .iter()
            .map(|(p, w)| (format!("127.0.0.1:{p}"), *w))
            .collect();
        let deadline = t0 + Duration::from_secs(10);
        loop {
            let ok = ["lb_hl-http", "lb_hl-tcp"].iter().all(|c| {
                agent.hosts(c).is_ok_and(|mut h| {
                    h.sort();
                    h == want
                })
            });
            max_draining =
                max_draining.max(agent.stat("listener_manager.total_listeners_draining")?);
            if ok {
                converge.push(t0.elapsed().as_secs_f64());
                break;
            }
            if Instant::now() >= deadline {
                failures.push(format!(
                    "hitless ({name}): change {i} ({kind}) not served after 10 s"
                ));
                break;
            }
            // Not finer: every look is two admin requests Envoy's main
            // thread answers while it carries the load being measured.
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let span = started.elapsed();
    let during = [wrk::finish(during_http)?, wrk::finish(during_tcp)?];
    let cx2 = cx(&agent)?;
    let after: Vec<u64> = COUNTERS
        .iter()
        .map(|c| agent.stat(c))
        .collect::<Result<_>>()?;
    if during.iter().any(|w| w.requests == 0) {
        bail!("hitless ({name}): wrk served no requests: {during:?}");
    }

    let mut summary = Table::new(
        &format!("Hitless ({name}): {changes} backend changes under load"),
        &["", "HTTP keep-alive", "TCP"],
    );
    let both = |f: &dyn Fn(usize) -> String| vec![f(0), f(1)];
    let mut row = |name: &str, cells: Vec<String>| {
        let mut r = vec![name.to_owned()];
        r.extend(cells);
        summary.row(r);
    };
    row(
        "requests during the changes",
        both(&|i| during[i].requests.to_string()),
    );
    row(
        "failed requests (non-2xx + socket errors; target 0)",
        both(&|i| during[i].failed().to_string()),
    );
    row(
        "req/s: during changes / without",
        both(&|i| {
            format!(
                "{} / {}",
                fmt_num(during[i].rps, 0),
                fmt_num(base[i].rps, 0)
            )
        }),
    );
    row(
        "p50 ms: during changes / without",
        both(&|i| format!("{:.2} / {:.2}", during[i].p50_ms, base[i].p50_ms)),
    );
    row(
        "p99 ms: during changes / without (ratio)",
        both(&|i| {
            format!(
                "{:.2} / {:.2} ({:.2}×)",
                during[i].p99_ms,
                base[i].p99_ms,
                during[i].p99_ms / base[i].p99_ms
            )
        }),
    );
    row(
        "new upstream connections per change",
        both(&|i| fmt_num((cx2[i] - cx1[i]) as f64 / changes as f64, 2)),
    );
    row(
        "new upstream connections per second without changes",
        both(&|i| fmt_num((cx1[i] - cx0[i]) as f64 / base_len.as_secs_f64(), 2)),
    );
    for (i, w) in during.iter().enumerate() {
        let what = format!("{name}, {}", ["http", "tcp"][i]);
        if w.failed() > 0 {
            failures.push(format!("hitless ({what}): {} failed requests", w.failed()));
        }
        check_p99(findings, &what, &during[i], &base[i]);
    }
    summary.note(format!(
        "Changes: {} ({}), the same change to both load balancers, each stored in the emulator, pushed with `POST /sync`, and the next one sent once Envoy's `/clusters` showed it (looked at every 20 ms). {} s in all; convergence under load p50 {} s, p99 {} s.",
        converge.len(),
        kinds.iter().map(|(k, n)| format!("{n} {k}")).collect::<Vec<_>>().join(", "),
        fmt_num(span.as_secs_f64(), 0),
        fmt_num(percentile(&converge, 50.0), 3),
        fmt_num(percentile(&converge, 99.0), 3),
    ));
    summary.note("Load: one `wrk -t1 -c16` per load balancer for the whole run (stopped with SIGINT after the last change), plus a run of the same shape without changes for the reference. Backends: nginx, 3 steady and 2 that come and go; no health checks, so a change is all that moves traffic.");
    summary.note("A new backend needs new connections (one per Envoy worker and client connection that picks it), so some churn per added backend is expected; what must not happen is the whole pool re-opening, which a cluster (CDS) update instead of an endpoint (EDS) update would cause.");

    let mut counters = Table::new(
        &format!("Hitless ({name}): Envoy's listener and cluster counters across the changes"),
        &["counter", "change", "target"],
    );
    for (i, c) in COUNTERS.iter().enumerate() {
        let delta = after[i].saturating_sub(before[i]);
        if delta > 0 {
            failures.push(format!(
                "hitless ({name}): {c} went up by {delta} for backend-only changes"
            ));
        }
        counters.row(vec![
            format!("`{c}`"),
            delta.to_string(),
            format!("0: {}", verdict(delta == 0)),
        ]);
    }
    counters.row(vec![
        "`listener_manager.total_listeners_draining` (highest seen)".into(),
        max_draining.to_string(),
        format!("0: {}", verdict(max_draining == 0)),
    ]);
    if max_draining > 0 {
        failures.push(format!(
            "hitless ({name}): {max_draining} listeners draining during backend-only changes"
        ));
    }
    Ok(vec![summary, counters])
}

/// Notes a p99 under changes more than 10 % above the one without.
fn check_p99(findings: &mut Findings, what: &str, during: &WrkResult, base: &WrkResult) {
    if during.p99_ms > base.p99_ms * 1.10 {
        findings.push(format!(
            "hitless ({what}): p99 {:.2} ms during changes against {:.2} ms without",
            during.p99_ms, base.p99_ms
        ));
    }
}

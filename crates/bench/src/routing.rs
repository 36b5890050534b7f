//! Scenario 7, routing: what L7 routes cost the data plane, and how fast a
//! route change lands when 100 load balancers carry 50 routes each.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use serde_json::{Value, json};
use vpsie_lb_testkit::free_port;

use crate::ab::{Side, compare};
use crate::lab::{Agent, Nginx, PHASES, Via, file_source_yaml, lb_doc, unix_now};
use crate::report::{Table, fmt_num, verdict};
use crate::scale::wait_pass;
use crate::{Ctx, Findings};

/// Host routes and path routes on the routed listener.
const HOST_ROUTES: usize = 20;
const PATH_ROUTES: usize = 20;

/// `doc` with `hosts` host routes and `paths` path routes over two pools
/// `a` and `b` of `backends`; route `p<i>` matches `/p<i>/`.
fn with_routes(mut doc: Value, backends: &[(u16, u32)], hosts: usize, paths: usize) -> Value {
    let pool = |id: &str| {
        let mut p = lb_doc("x", "http", 1, backends);
        for b in p["backends"].as_array_mut().into_iter().flatten() {
            b["id"] = json!(format!("{id}-{}", b["id"].as_str().unwrap_or_default()));
        }
        json!({"id": id, "backends": p["backends"]})
    };
    doc["pools"] = json!([pool("a"), pool("b")]);
    let mut routes: Vec<Value> = (0..hosts)
        .map(|i| {
            json!({"id": format!("h{i}"), "hosts": [format!("h{i}.example.com")],
                   "forward": [{"pool": if i % 2 == 0 { "a" } else { "b" }}]})
        })
        .collect();
    routes.extend((0..paths).map(|i| {
        json!({"id": format!("p{i}"), "path_prefix": format!("/p{i}/"),
               "forward": [{"pool": "a", "weight": 90}, {"pool": "b", "weight": 10}]})
    }));
    doc["routes"] = json!(routes);
    doc
}

/// Runs the scenario and returns its tables.
pub fn run(ctx: &Ctx, findings: &mut Findings) -> Result<Vec<Table>> {
    if std::env::var_os("ROUTING_SCALE_ONLY").is_some() {
        return Ok(vec![scale(ctx, findings)?]);
    }
    let mut tables = vec![data_plane(ctx, findings)?];
    tables.push(scale(ctx, findings)?);
    Ok(tables)
}

/// The same load through a listener without routes and one with 20 host
/// and 20 path routes, whose request matches the last path route.
fn data_plane(ctx: &Ctx, findings: &mut Findings) -> Result<Table> {
    let dir = ctx.dir.join("routing-dataplane");
    let backends = [free_port(), free_port()];
    let _nginx = Nginx::start(&dir.join("nginx"), &backends, None)?;
    let pool: Vec<(u16, u32)> = backends.iter().map(|p| (*p, 1)).collect();
    let last = format!("/p{}/x", PATH_ROUTES - 1);
    let sides = [
        Side {
            doc: lb_doc("plain", "http", free_port(), &pool),
            path: "/".into(),
        },
        Side {
            doc: with_routes(
                lb_doc("routed", "http", free_port(), &pool),
                &pool,
                HOST_ROUTES,
                PATH_ROUTES,
            ),
            path: last.clone(),
        },
    ];
    let out = compare(ctx, findings, "routing", &dir, sides)?;
    let mut t = out.table(
        findings,
        "Routing: the data plane with 20 host and 20 path routes per listener",
        "routing data plane",
        ["plain", "routed"],
    );
    t.note(format!(
        "Two http load balancers on one agent ({} delivery) over the same two nginx ports: `plain` has no routes; `routed` has {HOST_ROUTES} host routes and {PATH_ROUTES} path routes over two pools (the path routes are 90/10 canaries), and the load asks for `{last}`, which only the last path route matches. `wrk -t2 -c64 -d{}s`, {} runs, the two interleaved; the ratio is per run, median (min–max).",
        out.via.name(),
        ctx.duration.as_secs(),
        ctx.runs
    ));
    Ok(t)
}

/// 100 load balancers × 50 routes: the first pass, then one canary weight
/// changed in one load balancer, end to end.
fn scale(ctx: &Ctx, findings: &mut Findings) -> Result<Table> {
    let (lbs, routes) = if ctx.smoke { (10, 50) } else { (100, 50) };
    let mut t = Table::new(
        "Routing at scale: one route change, file changed → Envoy confirmed",
        &[
            "load balancers × routes",
            "delivery",
            "first pass ms",
            "route change confirmed ms",
            "its phases, ms",
            "target < 200 ms",
        ],
    );
    for via in Via::BOTH {
        let dir = ctx.dir.join(format!("routing-scale-{}", via.name()));
        std::fs::create_dir_all(&dir)?;
        let pool: Vec<(u16, u32)> = (0..4).map(|j| (40_000 + j, 1)).collect();
        let mut doc = Value::Array(
            (0..lbs)
                .map(|i| {
                    let d = lb_doc(&format!("r{i}"), "http", free_port(), &pool);
                    with_routes(d, &pool, routes / 2, routes - routes / 2)
                })
                .collect(),
        );
        let desired = dir.join("desired.json");
        std::fs::write(&desired, serde_json::to_vec(&doc)?)?;
        let mut agent = Agent::start_via(&dir, &file_source_yaml(&desired), via)?;
        let timeout = Duration::from_secs(120);
        let cold: f64 = wait_pass(&mut agent, 0, timeout)?.iter().sum();
        let deadline = Instant::now() + timeout;
        while !agent.proc.log().contains("\"message\":\"pass\"") {
            agent.proc.check_alive()?;
            if Instant::now() >= deadline {
                bail!("routing scale: the first pass did not end within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        // A canary moves from 90/10 to 50/50 in one load balancer.
        let last = routes - 1;
        doc[0]["routes"][last]["forward"] =
            json!([{"pool": "a", "weight": 50}, {"pool": "b", "weight": 50}]);
        let tmp = dir.join("desired.json.tmp");
        std::fs::write(&tmp, serde_json::to_vec(&doc)?)?;
        let changed = unix_now();
        std::fs::rename(&tmp, &desired)?;
        let phases = wait_pass(&mut agent, 1, timeout)?;
        let served = agent
            .applied_at()
            .get(1)
            .map_or(f64::NAN, |at| (at - changed).max(0.0) * 1000.0);
        let met = served < 200.0;
        if !met {
            findings.push(format!(
                "routing scale ({lbs} × {routes}, {}): a route change took {served:.0} ms (target < 200 ms)",
                via.name()
            ));
        }
        eprintln!(
            "bench: routing scale {lbs}×{routes} {}: first {cold:.0} ms, change {served:.0} ms, phases {:?}",
            via.name(),
            PHASES.iter().zip(&phases).collect::<Vec<_>>()
        );
        t.row(vec![
            format!("{lbs} × {routes}"),
            via.name().to_owned(),
            fmt_num(cold, 0),
            fmt_num(served, 1),
            PHASES
                .iter()
                .zip(&phases)
                .filter(|(_, ms)| **ms >= 1.0)
                .map(|(p, ms)| format!("{p} {}", fmt_num(*ms, 0)))
                .collect::<Vec<_>>()
                .join(", "),
            verdict(met),
        ]);
    }
    t.note("The real agent on a file source with a managed Envoy; each load balancer has 25 host routes and 25 path routes (90/10 canaries) over two pools of four backends (127.0.0.1 ports nothing listens on; no health checks, so Envoy never dials them). The change moves one canary to 50/50 in one load balancer; `confirmed` is from the rename of the document to the agent's log line for that pass, written once Envoy confirmed it (files: the RDS subscription's version through the admin API; xds: the ACK).");
    Ok(t)
}

//! Scenario 8, protection: what a per-client rate limit that never
//! triggers, and an access list that never matches, cost the data plane,
//! each against the same load balancer without it.

use anyhow::Result;
use serde_json::{Value, json};
use vpsie_lb_testkit::free_port;

use std::path::Path;

use crate::ab::{Extra, Side, compare, compare_with};
use crate::lab::{Nginx, lb_doc, waf_service};
use crate::report::Table;
use crate::{Ctx, Findings};

/// Runs the scenario and returns its tables.
pub fn run(ctx: &Ctx, findings: &mut Findings) -> Result<Vec<Table>> {
    let dir = ctx.dir.join("protect-dataplane");
    let backends = [free_port(), free_port()];
    let _nginx = Nginx::start(&dir.join("nginx"), &backends, None)?;
    let pool: Vec<(u16, u32)> = backends.iter().map(|p| (*p, 1)).collect();
    // A bucket no load here empties: the cost of counting, not of refusing.
    let rate = (
        "rate_limit",
        json!({"requests_per_second": 1_000_000, "burst": 1_000_000}),
    );
    // A deny list no client is in: the cost of looking.
    let access = (
        "access",
        json!({"deny": ["192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24"]}),
    );
    let mut tables = Vec::new();
    for (name, (key, value), what) in [
        (
            "limited",
            rate,
            "a per-client rate limit that never triggers",
        ),
        (
            "listed",
            access,
            "a deny list of three networks that never matches",
        ),
    ] {
        let mut doc = lb_doc(name, "http", free_port(), &pool);
        doc[key] = value;
        tables.push(one(ctx, findings, &dir.join(name), &pool, doc, name, what)?);
    }
    tables.push(waf(ctx, findings, &dir.join("waf"), &pool)?);
    tables.push(crate::waf_ref::run(
        ctx,
        findings,
        &dir.join("waf-reference"),
        &pool,
    )?);
    Ok(tables)
}

/// The WAF in detect and in block mode against the same load balancer
/// without one, each with the service running beside the agent.
fn waf(ctx: &Ctx, findings: &mut Findings, dir: &Path, pool: &[(u16, u32)]) -> Result<Table> {
    let mut t = Table::new(
        "Protection: the WAF (ModSecurity with the Core Rule Set, paranoia level 1)",
        &[
            "mode",
            "waf req/s",
            "waf / plain req/s",
            "plain p99 ms",
            "waf p99 ms",
            "plain CPU µs/req",
            "waf CPU µs/req",
        ],
    );
    for mode in ["detect", "block"] {
        let d = dir.join(mode);
        std::fs::create_dir_all(&d)?;
        let (service, socket) = waf_service(&d)?;
        let mut doc = lb_doc("guarded", "http", free_port(), pool);
        doc["waf"] = json!({"mode": mode});
        let sides = against_plain(pool, doc);
        let yaml = format!("  waf_socket: {}\n", socket.display());
        let extra = Extra {
            envoy_yaml: &yaml,
            helpers: &[service.pid()],
        };
        let out = compare_with(ctx, findings, &format!("waf ({mode})"), &d, sides, &extra)?;
        t.row(out.cost_row(mode));
        drop(service);
    }
    t.note(format!(
        "Two http load balancers on one agent over the same two nginx ports, one with `waf` (`paranoia_level: 1`, `fail_open: true`) and one without, and `vpsie-lb-waf` beside them. `wrk -t2 -c64 -d{}s` asking for `/` (nothing matches, so `block` refuses nothing), {} runs, interleaved. CPU per request is Envoy's and the WAF service's user and system time over the run, divided by the requests it served. No target yet: this is what inspecting every request costs.",
        ctx.duration.as_secs(),
        ctx.runs
    ));
    Ok(t)
}

fn one(
    ctx: &Ctx,
    findings: &mut Findings,
    dir: &std::path::Path,
    pool: &[(u16, u32)],
    doc: Value,
    name: &str,
    what: &str,
) -> Result<Table> {
    let sides = against_plain(pool, doc);
    let out = compare(ctx, findings, &format!("protection ({name})"), dir, sides)?;
    let mut t = out.table(
        findings,
        &format!("Protection: {what}"),
        &format!("protection data plane ({name})"),
        ["plain", name],
    );
    t.note(format!(
        "Two http load balancers on one agent ({} delivery) over the same two nginx ports; both carry the RBAC and local rate-limit filters every http listener has, and `plain` leaves them off. `wrk -t2 -c64 -d{}s` from 127.0.0.1 (one client: one bucket, always found), {} runs, interleaved; the ratio is per run, median (min–max).",
        out.via.name(),
        ctx.duration.as_secs(),
        ctx.runs
    ));
    Ok(t)
}

/// `doc` beside a plain load balancer over the same `pool`, both asked for `/`.
fn against_plain(pool: &[(u16, u32)], doc: Value) -> [Side; 2] {
    [
        Side {
            doc: lb_doc("plain", "http", free_port(), pool),
            path: "/".into(),
        },
        Side {
            doc,
            path: "/".into(),
        },
    ]
}

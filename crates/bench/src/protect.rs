//! Scenario 8, protection: what a per-client rate limit that never
//! triggers and an access list that never matches cost the data plane.

use anyhow::Result;
use serde_json::json;
use vpsie_lb_testkit::free_port;

use crate::ab::{Side, compare};
use crate::lab::{Nginx, lb_doc};
use crate::report::Table;
use crate::{Ctx, Findings};

/// Runs the scenario and returns its table.
pub fn run(ctx: &Ctx, findings: &mut Findings) -> Result<Vec<Table>> {
    let dir = ctx.dir.join("protect-dataplane");
    let backends = [free_port(), free_port()];
    let _nginx = Nginx::start(&dir.join("nginx"), &backends, None)?;
    let pool: Vec<(u16, u32)> = backends.iter().map(|p| (*p, 1)).collect();
    let mut guarded = lb_doc("guarded", "http", free_port(), &pool);
    // A bucket no load here empties, and a deny list no client is in: the
    // cost of looking, not of refusing.
    guarded["rate_limit"] = json!({"requests_per_second": 1_000_000, "burst": 1_000_000});
    guarded["access"] = json!({"deny": ["192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24"]});
    let sides = [
        Side {
            doc: lb_doc("plain", "http", free_port(), &pool),
            path: "/".into(),
        },
        Side {
            doc: guarded,
            path: "/".into(),
        },
    ];
    let out = compare(ctx, findings, "protection", &dir, sides)?;
    let mut t = out.table(
        findings,
        "Protection: a rate limit that never triggers and a deny list that never matches",
        "protection data plane",
        ["plain", "guarded"],
    );
    t.note(format!(
        "Two http load balancers on one agent ({} delivery) over the same two nginx ports. Both carry the RBAC and local rate-limit filters every http listener has; `plain` leaves them off, `guarded` turns on a per-client bucket of 1,000,000 requests a second and a deny list of the three documentation networks, so every request is counted and checked and none is refused. `wrk -t2 -c64 -d{}s` from 127.0.0.1 (one client, one bucket), {} runs, interleaved; the ratio is per run, median (min–max).",
        out.via.name(),
        ctx.duration.as_secs(),
        ctx.runs
    ));
    Ok(vec![t])
}

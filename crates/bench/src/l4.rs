//! Scenario 10, layer 4 additions: the PROXY protocol's cost on tcp. Two tcp
//! load balancers on one agent and one Envoy, one sending a PROXY v2 header
//! to nginx ports that expect it, one plain, measured side by side with
//! HTTP keep-alive inside (one header per connection) and with a new
//! connection per request (one header per request). There is no target.

use std::time::Duration;

use anyhow::Result;
use serde_json::json;
use vpsie_lb_testkit::free_port;

use crate::lab::{Agent, Delivery, Nginx, file_source_yaml, lb_doc};
use crate::report::{Summary, Table};
use crate::wrk::{Load, WrkResult};
use crate::{Ctx, Findings};

/// Whether each request opens its own connection.
const MODES: [(bool, &str); 2] = [
    (false, "HTTP keep-alive inside the TCP connection"),
    (true, "a new TCP connection per request"),
];

/// Runs the scenario and returns its table.
pub fn run(ctx: &Ctx, findings: &mut Findings) -> Result<Vec<Table>> {
    let dir = ctx.dir.join("l4");
    std::fs::create_dir_all(&dir)?;
    let (plain, proxied) = ([free_port(), free_port()], [free_port(), free_port()]);
    let _nginx = Nginx::start_with(&dir.join("nginx"), &plain, &proxied, None)?;
    let (none_port, v2_port) = (free_port(), free_port());
    let pool = |ports: &[u16; 2]| -> Vec<(u16, u32)> { ports.iter().map(|p| (*p, 1)).collect() };
    let mut with_header = lb_doc("l4-v2", "tcp", v2_port, &pool(&proxied));
    with_header["proxy_protocol"] = json!("v2");
    let docs = json!([
        lb_doc("l4-none", "tcp", none_port, &pool(&plain)),
        with_header
    ]);
    let desired = dir.join("desired.json");
    std::fs::write(&desired, serde_json::to_vec_pretty(&docs)?)?;
    let mut agent = Agent::configure(
        &dir,
        &file_source_yaml(&desired),
        Delivery::default_of_agent(),
        true,
        "",
    )?
    .spawn()?;
    agent.wait_serving(none_port, Duration::from_secs(60))?;
    agent.wait_serving(v2_port, Duration::from_secs(10))?;

    let load = |port: u16, close: bool, d: Duration| Load {
        url: format!("http://127.0.0.1:{port}/"),
        threads: 2,
        connections: 64,
        duration: d,
        close,
    };
    let mut table = Table::new(
        "PROXY protocol v2 to backends, against none (tcp; per-run ratios, median (min–max))",
        &[
            "mode",
            "none req/s",
            "v2 req/s",
            "v2 / none req/s",
            "none p99 ms",
            "v2 p99 ms",
            "v2 / none p99",
        ],
    );
    for (close, title) in MODES {
        if !ctx.smoke {
            load(none_port, close, Duration::from_secs(1)).run()?;
            load(v2_port, close, Duration::from_secs(1)).run()?;
        }
        let (mut none, mut v2): (Vec<WrkResult>, Vec<WrkResult>) = (vec![], vec![]);
        for run in 0..ctx.runs {
            // Alternate which goes first, so neither always meets a cold machine.
            let order = if run % 2 == 0 {
                [false, true]
            } else {
                [true, false]
            };
            for header in order {
                let port = if header { v2_port } else { none_port };
                let r = load(port, close, ctx.duration).run()?;
                eprintln!(
                    "bench: l4 run {} close={close} header={header}: {:.0} req/s, p99 {:.2} ms, {} failed",
                    run + 1,
                    r.rps,
                    r.p99_ms,
                    r.failed()
                );
                if r.failed() > 0 {
                    findings.push(format!(
                        "l4 close={close} header={header}: {} failed requests",
                        r.failed()
                    ));
                }
                if header { v2.push(r) } else { none.push(r) }
            }
        }
        let median = |v: &[WrkResult], f: fn(&WrkResult) -> f64| {
            let xs: Vec<f64> = v.iter().map(f).collect();
            Summary::of(&xs).map_or("-".into(), |s| s.show(2))
        };
        let ratio = |f: fn(&WrkResult) -> f64| {
            let xs: Vec<f64> = v2.iter().zip(&none).map(|(a, b)| f(a) / f(b)).collect();
            Summary::of(&xs).map_or("-".into(), |s| s.show(3))
        };
        table.row(vec![
            title.to_owned(),
            median(&none, |w| w.rps),
            median(&v2, |w| w.rps),
            ratio(|w| w.rps),
            median(&none, |w| w.p99_ms),
            median(&v2, |w| w.p99_ms),
            ratio(|w| w.p99_ms),
        ]);
    }
    table.note(format!(
        "Each cell: `wrk -t2 -c64 -d{}s --latency` through `vpsie-lb-agent run`'s managed Envoy, {} runs, the two load balancers alternating; nginx (one worker) answers on plain ports and on `listen … proxy_protocol` ports. No target yet (issue 15).",
        ctx.duration.as_secs(),
        ctx.runs
    ));
    drop(agent);
    Ok(vec![table])
}

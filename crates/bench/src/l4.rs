//! Scenario 10, what issue 15 added to the data plane. The PROXY protocol's
//! cost on tcp: two tcp load balancers on one agent and one Envoy, one
//! sending a PROXY v2 header to nginx ports that expect it, one plain,
//! measured side by side with HTTP keep-alive inside (one header per
//! connection) and with a new connection per request (one header per
//! request). And HTTP/3 against HTTP/2 on one https load balancer with
//! `http3`: Envoy's CPU per request, the portable number, since the two
//! clients (h2load in C, aioquic in Python) differ. There are no targets.

use std::time::Duration;

use anyhow::Result;
use serde_json::json;
use vpsie_lb_testkit::free_port;

use crate::lab::{Agent, Nginx, Via, file_source_yaml, lb_doc};
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
    let h3_port = free_port();
    let pair = vpsie_lb_testkit::pki::self_signed("localhost");
    let (cert, key) = vpsie_lb_testkit::pki::write_pair(&dir, "h3", &pair);
    let mut h3 = lb_doc("l4-h3", "https", h3_port, &pool(&plain));
    h3["tls_config"] = json!({"certificate_path": cert, "private_key_path": key});
    h3["http3"] = json!(true);
    let docs = json!([
        lb_doc("l4-none", "tcp", none_port, &pool(&plain)),
        with_header,
        h3
    ]);
    let desired = dir.join("desired.json");
    std::fs::write(&desired, serde_json::to_vec_pretty(&docs)?)?;
    let mut agent = Agent::configure(
        &dir,
        &file_source_yaml(&desired),
        Via::default_of_agent(),
        true,
        "",
    )?
    .spawn()?;
    agent.wait_serving(none_port, Duration::from_secs(60))?;
    agent.wait_serving(v2_port, Duration::from_secs(10))?;
    let h3_table = http3_against_http2(ctx, agent.envoy_pid(), h3_port, findings)?;

    let load = |port: u16, close: bool, d: Duration| Load {
        url: format!("http://127.0.0.1:{port}/"),
        threads: 2,
        connections: 64,
        duration: d,
        close,
        host: None,
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
        let median = |v: &[WrkResult], f: fn(&WrkResult) -> f64, digits: usize| {
            let xs: Vec<f64> = v.iter().map(f).collect();
            Summary::of(&xs).map_or("-".into(), |s| s.show(digits))
        };
        let ratio = |f: fn(&WrkResult) -> f64| {
            let xs: Vec<f64> = v2.iter().zip(&none).map(|(a, b)| f(a) / f(b)).collect();
            Summary::of(&xs).map_or("-".into(), |s| s.show(3))
        };
        table.row(vec![
            title.to_owned(),
            median(&none, |w| w.rps, 0),
            median(&v2, |w| w.rps, 0),
            ratio(|w| w.rps),
            median(&none, |w| w.p99_ms, 2),
            median(&v2, |w| w.p99_ms, 2),
            ratio(|w| w.p99_ms),
        ]);
    }
    table.note(format!(
        "Each cell: `wrk -t2 -c64 -d{}s --latency` through `vpsie-lb-agent run`'s managed Envoy, {} runs, the two load balancers alternating; nginx (one worker) answers on plain ports and on `listen … proxy_protocol` ports. No target yet (issue 15).",
        ctx.duration.as_secs(),
        ctx.runs
    ));
    drop(agent);
    Ok(vec![table, h3_table])
}

/// Streams in flight on the one connection each client opens.
const STREAMS: u32 = 10;

/// What one multiplexed run gave: req/s, Envoy CPU µs per request, failed.
type Run = (f64, Option<f64>, u64);

/// How a run's client talks.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Client {
    /// h2load, as fast as it goes.
    Http2,
    /// h2load held to this many requests a second.
    Http2Paced(f64),
    /// The aioquic client, as fast as it goes.
    Http3,
}

/// One closed-loop run against `port`.
fn multiplexed(client: Client, port: u16, envoy: Option<u32>, secs: u64) -> Result<Run> {
    let cpu0 = envoy.and_then(crate::procs::cpu_time);
    let (requests, failed, rps) = match client {
        Client::Http3 => {
            let r = vpsie_lb_testkit::h3::load(port, "/", "localhost", secs, STREAMS)
                .map_err(|e| anyhow::anyhow!("http/3 load: {e}"))?;
            (r.requests, r.failed, r.rps)
        }
        Client::Http2 => h2load(port, secs, None)?,
        Client::Http2Paced(rps) => h2load(port, secs, Some(rps))?,
    };
    let cpu1 = envoy.and_then(crate::procs::cpu_time);
    let cpu = match (cpu0, cpu1) {
        (Some(a), Some(b)) if requests > 0 => Some((b - a).as_secs_f64() * 1e6 / requests as f64),
        _ => None,
    };
    Ok((rps, cpu, failed))
}

/// `h2load -c1 -m STREAMS` for `secs`, at most `rps` requests a second
/// when given: (succeeded, failed, req/s).
fn h2load(port: u16, secs: u64, rps: Option<f64>) -> Result<(u64, u64, f64)> {
    let mut cmd = std::process::Command::new("h2load");
    cmd.args(["-c1", "-t1", &format!("-m{STREAMS}"), &format!("-D{secs}")]);
    if let Some(r) = rps {
        cmd.arg(format!("--rps={}", r.round().max(1.0)));
    }
    let out = cmd.arg(format!("https://127.0.0.1:{port}/")).output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    // "requests: 9 total, 9 started, 9 done, 9 succeeded, 0 failed, ..."
    let line = text
        .lines()
        .find(|l| l.starts_with("requests:"))
        .ok_or_else(|| anyhow::anyhow!("h2load said no requests: {text}"))?;
    let count = |word: &str| -> u64 {
        line.trim_start_matches("requests:")
            .split(',')
            .find(|p| p.trim().ends_with(word))
            .and_then(|p| p.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    let (ok, failed) = (count("succeeded"), count("failed"));
    Ok((ok, failed, ok as f64 / secs as f64))
}

fn http3_against_http2(
    ctx: &Ctx,
    envoy: Option<u32>,
    port: u16,
    findings: &mut Findings,
) -> Result<Table> {
    let secs = ctx.duration.as_secs().max(1);
    if !ctx.smoke {
        multiplexed(Client::Http2, port, envoy, 1)?;
        multiplexed(Client::Http3, port, envoy, 1)?;
    }
    let mut measure = |client: Client, run: usize| -> Result<Run> {
        let r = multiplexed(client, port, envoy, secs)?;
        eprintln!(
            "bench: l4 run {} {client:?}: {:.0} req/s, {:?} µs of envoy cpu per request, {} failed",
            run + 1,
            r.0,
            r.1,
            r.2
        );
        if r.2 > 0 {
            findings.push(format!("l4 {client:?}: {} failed requests", r.2));
        }
        Ok(r)
    };
    let (mut h2, mut h3, mut paced): (Vec<Run>, Vec<Run>, Vec<Run>) = (vec![], vec![], vec![]);
    for run in 0..ctx.runs {
        h2.push(measure(Client::Http2, run)?);
        let quic = measure(Client::Http3, run)?;
        // HTTP/2 at HTTP/3's rate: Envoy's fixed costs (timers, polling)
        // spread over as many requests, so the CPU per request compares.
        paced.push(measure(Client::Http2Paced(quic.0), run)?);
        h3.push(quic);
    }
    let med = |v: &[Run], f: fn(&Run) -> Option<f64>, digits: usize| {
        let xs: Vec<f64> = v.iter().filter_map(f).collect();
        Summary::of(&xs).map_or("-".into(), |s| s.show(digits))
    };
    let cpu_ratio: Vec<f64> = h3
        .iter()
        .zip(&paced)
        .filter_map(|(a, b)| Some(a.1? / b.1?))
        .collect();
    let mut t = Table::new(
        "HTTP/3 against HTTP/2 over TLS (one connection, 10 streams in flight; median (min–max))",
        &["client", "req/s", "Envoy CPU µs/req"],
    );
    for (name, runs) in [
        ("HTTP/2: h2load -c1 -m10", &h2),
        ("HTTP/2 at HTTP/3's rate: h2load --rps", &paced),
        ("HTTP/3: aioquic, 10 streams", &h3),
    ] {
        t.row(vec![
            name.into(),
            med(runs, |r| Some(r.0), 0),
            med(runs, |r| r.1, 1),
        ]);
    }
    t.row(vec![
        "HTTP/3 / HTTP/2 at the same rate, Envoy CPU per request".into(),
        "-".into(),
        Summary::of(&cpu_ratio).map_or("-".into(), |s| s.show(2)),
    ]);
    t.note(format!(
        "{} runs of {secs} s each (HTTP/2, HTTP/3, then HTTP/2 held to the rate HTTP/3 reached); one https load balancer with `http3: true` in front of the same nginx. The HTTP/3 client is Python (aioquic) and tops out far below Envoy, so its req/s is the client's; Envoy's CPU per request at the same rate is what compares the protocols (QUIC does its transport and crypto in user space, which Envoy's CPU time counts; TCP's work happens in the kernel, in softirq time that is not all charged to Envoy).",
        ctx.runs
    ));
    Ok(t)
}

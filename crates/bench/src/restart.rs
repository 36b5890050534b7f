//! Scenario 6, restarts: how long a load balancer answers nothing when
//! Envoy or the agent restarts, per delivery. Envoy runs as its own process
//! here (as under systemd), so each can be stopped without the other:
//! Envoy restarted under a running agent; Envoy restarted while the agent is
//! down (the agent comes back two seconds later); both started at once, as
//! at boot. These are the numbers the default delivery is chosen from.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use vpsie_lb_testkit::backend::HttpBackend;
use vpsie_lb_testkit::{free_port, http};

use crate::lab::{Agent, Via, file_source_yaml, lb_doc};
use crate::procs::{Proc, poll};
use crate::report::{Summary, Table};
use crate::{Ctx, Failures, Findings};

/// How long the agent stays away in the second case.
const AGENT_AWAY: Duration = Duration::from_secs(2);

/// Time from `since` until `port` answers 200, polled every 2 ms; `None`
/// after `timeout`.
fn until_served(port: u16, since: Instant, timeout: Duration) -> Option<Duration> {
    poll(since + timeout, Duration::from_millis(2), || {
        http::get(port, "/")
            .is_ok_and(|r| r.status == 200)
            .then(|| since.elapsed())
    })
}

fn kill(p: &mut Proc) {
    p.signal("KILL");
    let _ = p.wait_exit(Duration::from_secs(10));
}

/// Milliseconds of each sample, as `median (min–max)`.
fn show(samples: &[Duration]) -> String {
    let ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
    Summary::of(&ms).map_or("-".into(), |s| s.show(0))
}

/// What one delivery measured, in milliseconds per run.
#[derive(Default)]
struct Outage {
    envoy_restarted: Vec<Duration>,
    /// Envoy back while the agent is away: served by Envoy alone.
    alone: Vec<Duration>,
    /// Runs where Envoy alone served nothing while the agent was away.
    alone_nothing: usize,
    /// From the agent's return until served.
    after_agent: Vec<Duration>,
    at_boot: Vec<Duration>,
}

/// Runs scenario 6 and returns its table.
pub fn run(ctx: &Ctx, findings: &mut Findings, failures: &mut Failures) -> Result<Vec<Table>> {
    let runs = if ctx.smoke { 1 } else { 5 };
    let backend = HttpBackend::start("r1");
    let mut all = Vec::new();
    for via in Via::BOTH {
        let dir = ctx.dir.join(format!("restart-{}", via.name()));
        std::fs::create_dir_all(&dir)?;
        all.push((via, measure(&dir, via, &backend, runs, failures)?));
    }
    let mut t = Table::new(
        "Restarts: time a load balancer answers nothing (ms, median (min–max))",
        &["what restarts", "files", "xds"],
    );
    let cells =
        |f: &dyn Fn(&Outage) -> String| -> Vec<String> { all.iter().map(|(_, o)| f(o)).collect() };
    let mut row = |what: &str, f: &dyn Fn(&Outage) -> String| {
        let mut r = vec![what.to_owned()];
        r.extend(cells(f));
        t.row(r);
    };
    row("Envoy, under a running agent (from Envoy's start)", &|o| {
        show(&o.envoy_restarted)
    });
    row(
        "Envoy, while the agent is down: served by Envoy alone (from Envoy's start)",
        &|o| {
            if o.alone_nothing > 0 {
                format!(
                    "nothing in {} of {} runs: down until the agent is back",
                    o.alone_nothing,
                    o.alone_nothing + o.alone.len()
                )
            } else {
                show(&o.alone)
            }
        },
    );
    row(
        &format!(
            "… and once the agent is back ({} s later; from the agent's start)",
            AGENT_AWAY.as_secs()
        ),
        &|o| show(&o.after_agent),
    );
    row("both, started together as at boot (from the start)", &|o| {
        show(&o.at_boot)
    });
    if let Some((_, xds)) = all.iter().find(|(v, _)| *v == Via::Xds) {
        let slow = xds
            .envoy_restarted
            .iter()
            .filter(|d| **d > Duration::from_secs(1))
            .count();
        if slow > 0 {
            findings.push(format!(
                "restart (xds): a restarted Envoy took over 1 s to serve last-known-good in {slow} of {runs} runs"
            ));
        }
    }
    t.note(format!("{runs} runs each. One http load balancer on one backend; Envoy is started by the runner as systemd would (`manage: false`); \"served\" is the first 200 through Envoy, polled every 2 ms; Envoy's own start-up is inside every number."));
    t.note("With files, Envoy reads the last applied files at start and needs no agent. With xds, Envoy has nothing until an agent answers on the socket; the agent restores last-known-good before its first fetch, and Envoy retries the socket every 100 ms, backing off to 250 ms (`retry_policy` in the bootstrap).");
    Ok(vec![t])
}

/// The three cases for one delivery.
fn measure(
    dir: &Path,
    via: Via,
    backend: &HttpBackend,
    runs: usize,
    failures: &mut Failures,
) -> Result<Outage> {
    let port = free_port();
    let desired = dir.join("desired.json");
    let doc = serde_json::json!([lb_doc("rs", "http", port, &[(backend.port(), 1)])]);
    std::fs::write(&desired, serde_json::to_vec(&doc)?)?;
    let cfg = Agent::configure(dir, &file_source_yaml(&desired), via, false, "")?;
    let mut agent = cfg.spawn()?;
    let mut logs = 0;
    let mut envoy_log = || {
        logs += 1;
        dir.join(format!("envoy-{logs}.log"))
    };
    // The agent writes the bootstrap before anything else.
    if poll(
        Instant::now() + Duration::from_secs(20),
        Duration::from_millis(10),
        || cfg.bootstrap().exists().then_some(()),
    )
    .is_none()
    {
        bail!("restart: no bootstrap from the agent");
    }
    let mut envoy = cfg.spawn_envoy(&envoy_log())?;
    let limit = Duration::from_secs(30);
    if until_served(port, Instant::now(), limit).is_none() {
        bail!(
            "restart ({}): never served; agent log:\n{}",
            via.name(),
            crate::procs::tail(&agent.proc.log(), 20)
        );
    }
    let mut out = Outage::default();
    let lost = |what: &str, failures: &mut Failures| {
        failures.push(format!(
            "restart ({}): {what} never served again",
            via.name()
        ));
    };
    for _ in 0..runs {
        kill(&mut envoy);
        let t0 = Instant::now();
        envoy = cfg.spawn_envoy(&envoy_log())?;
        match until_served(port, t0, limit) {
            Some(d) => out.envoy_restarted.push(d),
            None => lost("envoy restarted under the agent", failures),
        }
    }
    for _ in 0..runs {
        kill(&mut agent.proc);
        kill(&mut envoy);
        let t0 = Instant::now();
        envoy = cfg.spawn_envoy(&envoy_log())?;
        match until_served(port, t0, AGENT_AWAY) {
            Some(d) => out.alone.push(d),
            None => out.alone_nothing += 1,
        }
        let t1 = Instant::now();
        agent = cfg.spawn()?;
        match until_served(port, t1, limit) {
            Some(d) => out.after_agent.push(d),
            None => lost("envoy restarted while the agent was down", failures),
        }
    }
    for _ in 0..runs {
        kill(&mut agent.proc);
        kill(&mut envoy);
        let t0 = Instant::now();
        agent = cfg.spawn()?;
        envoy = cfg.spawn_envoy(&envoy_log())?;
        match until_served(port, t0, limit) {
            Some(d) => out.at_boot.push(d),
            None => lost("both started together", failures),
        }
    }
    drop(envoy);
    drop(agent);
    Ok(out)
}

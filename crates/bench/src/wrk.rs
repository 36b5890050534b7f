//! The load generator: wrk, always with a duration, parsed from its report.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::procs::Proc;

/// What one wrk run measured.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct WrkResult {
    /// Requests per second over the run.
    pub rps: f64,
    /// Median latency, ms.
    pub p50_ms: f64,
    /// 99th percentile latency, ms.
    pub p99_ms: f64,
    /// Completed requests.
    pub requests: u64,
    /// Responses that were not 2xx or 3xx.
    pub non_2xx: u64,
    /// Connect, read, write errors and timeouts.
    pub socket_errors: u64,
}

impl WrkResult {
    /// Every request that did not get a good answer.
    pub fn failed(&self) -> u64 {
        self.non_2xx + self.socket_errors
    }
}

/// How to load a target.
#[derive(Debug, Clone)]
pub struct Load {
    /// The URL (http:// or https:// on 127.0.0.1).
    pub url: String,
    /// wrk threads.
    pub threads: u32,
    /// Open connections.
    pub connections: u32,
    /// Upper bound of the run; a run stopped early with SIGINT still reports.
    pub duration: Duration,
    /// Send `Connection: close`, so every request is a new connection.
    pub close: bool,
    /// The `Host` header, when not the URL's.
    pub host: Option<String>,
}

impl Load {
    fn command(&self) -> Command {
        let mut cmd = Command::new("wrk");
        cmd.args([
            format!("-t{}", self.threads),
            format!("-c{}", self.connections),
            format!("-d{}s", self.duration.as_secs().max(1)),
            "--latency".to_owned(),
            "--timeout".to_owned(),
            "5s".to_owned(),
        ]);
        if self.close {
            cmd.args(["-H", "Connection: close"]);
        }
        if let Some(host) = &self.host {
            cmd.args(["-H", &format!("Host: {host}")]);
        }
        cmd.arg(&self.url);
        cmd
    }

    /// Runs to the end and parses the report.
    pub fn run(&self) -> Result<WrkResult> {
        let out = self.command().output().context("run wrk")?;
        let text = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            bail!(
                "wrk {} failed: {}{}",
                self.url,
                text,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        parse(&text).with_context(|| format!("wrk report for {}:\n{text}", self.url))
    }

    /// Starts in the background; [`finish`] stops it and parses the report.
    pub fn start(&self, log: &Path) -> Result<Proc> {
        Proc::spawn("wrk", &mut self.command(), log)
    }
}

/// Stops a background wrk (SIGINT makes it report what it has) and parses it.
pub fn finish(mut wrk: Proc) -> Result<WrkResult> {
    wrk.signal("INT");
    if wrk.wait_exit(Duration::from_secs(10)).is_none() {
        bail!("wrk did not stop on SIGINT");
    }
    let text = wrk.log();
    parse(&text).with_context(|| format!("wrk report:\n{text}"))
}

/// A latency like `635.00us`, `3.85ms` or `1.02s`, in ms.
fn latency_ms(s: &str) -> Option<f64> {
    let s = s.trim();
    let (num, scale) = if let Some(v) = s.strip_suffix("us") {
        (v, 0.001)
    } else if let Some(v) = s.strip_suffix("ms") {
        (v, 1.0)
    } else if let Some(v) = s.strip_suffix('m') {
        (v, 60_000.0)
    } else if let Some(v) = s.strip_suffix('s') {
        (v, 1000.0)
    } else {
        return None;
    };
    num.parse::<f64>().ok().map(|v| v * scale)
}

/// Parses wrk's `--latency` report.
pub fn parse(text: &str) -> Result<WrkResult> {
    let mut r = WrkResult::default();
    let mut saw_rps = false;
    for line in text.lines().map(str::trim) {
        if let Some(v) = line.strip_prefix("Requests/sec:") {
            r.rps = v.trim().parse().context("requests/sec")?;
            saw_rps = true;
        } else if let Some(v) = line.strip_prefix("50%") {
            r.p50_ms = latency_ms(v).context("50% latency")?;
        } else if let Some(v) = line.strip_prefix("99%") {
            r.p99_ms = latency_ms(v).context("99% latency")?;
        } else if let Some(v) = line.strip_prefix("Non-2xx or 3xx responses:") {
            r.non_2xx = v.trim().parse().context("non-2xx")?;
        } else if let Some(v) = line.strip_prefix("Socket errors:") {
            // "connect 0, read 0, write 0, timeout 0"
            r.socket_errors = v
                .split(',')
                .filter_map(|p| p.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum();
        } else if line.contains(" requests in ") {
            r.requests = line
                .split_whitespace()
                .next()
                .and_then(|n| n.parse().ok())
                .context("request count")?;
        }
    }
    if !saw_rps {
        bail!("no Requests/sec line");
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    const REPORT: &str = "Running 10s test @ http://127.0.0.1:8080/
  2 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     2.05ms    1.01ms  33.20ms   80.00%
    Req/Sec    15.70k     1.20k   18.00k    70.00%
  Latency Distribution
     50%  635.00us
     75%    2.50ms
     90%    3.10ms
     99%    1.02s
  312345 requests in 10.00s, 40.00MB read
  Socket errors: connect 1, read 2, write 0, timeout 3
  Non-2xx or 3xx responses: 7
Requests/sec:  31234.56
Transfer/sec:      4.00MB
";

    #[test]
    fn parses_every_number() {
        let r = parse(REPORT).expect("parse");
        assert_eq!(r.rps, 31234.56);
        assert!((r.p50_ms - 0.635).abs() < 1e-9);
        assert!((r.p99_ms - 1020.0).abs() < 1e-9);
        assert_eq!(r.requests, 312_345);
        assert_eq!((r.socket_errors, r.non_2xx, r.failed()), (6, 7, 13));
    }

    #[test]
    fn a_report_without_a_rate_is_an_error() {
        assert!(parse("unable to connect to 127.0.0.1:1 Connection refused").is_err());
    }
}

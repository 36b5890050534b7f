//! What the service counts, per load balancer: verdicts, and the rules that
//! matched (in detect mode this is the only place a match is counted), in
//! Prometheus text on a Unix socket of its own (`GET /metrics`).

use std::path::Path;
use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Verdict {
    lb_id: String,
    verdict: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Match {
    lb_id: String,
    rule: String,
    action: &'static str,
}

/// The service's counters.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    requests: Family<Verdict, Counter>,
    matches: Family<Match, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("vpsie_lb_waf");
        let requests = Family::<Verdict, Counter>::default();
        let matches = Family::<Match, Counter>::default();
        registry.register(
            "requests",
            "Requests asked about, by load balancer and verdict (pass, detect, block, error, busy: turned away, every worker and the queue being taken)",
            requests.clone(),
        );
        registry.register(
            "rule_matches",
            "Rules that matched, by load balancer, rule id and what was done (detect or block)",
            matches.clone(),
        );
        Self {
            registry: Arc::new(registry),
            requests,
            matches,
        }
    }
}

impl Metrics {
    /// Counts one verdict and, for detect and block, each rule.
    pub fn record(&self, lb: &str, verdict: &'static str, rules: &[u32]) {
        self.requests
            .get_or_create(&Verdict {
                lb_id: lb.to_owned(),
                verdict,
            })
            .inc();
        for rule in rules {
            self.matches
                .get_or_create(&Match {
                    lb_id: lb.to_owned(),
                    rule: rule.to_string(),
                    action: verdict,
                })
                .inc();
        }
    }

    /// The counters in Prometheus text.
    pub fn text(&self) -> String {
        let mut out = String::new();
        // Encoding into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// Answers every request on `socket` with the counters, until the
    /// process ends. One request per connection, heads up to 8 KiB.
    pub async fn serve(self, socket: &Path) -> std::io::Result<()> {
        let _ = std::fs::remove_file(socket);
        let listener = tokio::net::UnixListener::bind(socket)?;
        std::fs::set_permissions(socket, std::os::unix::fs::PermissionsExt::from_mode(0o660))?;
        loop {
            let (mut conn, _) = listener.accept().await?;
            let metrics = self.clone();
            tokio::spawn(async move {
                let mut head = vec![0u8; 8192];
                let read =
                    tokio::time::timeout(std::time::Duration::from_secs(5), conn.read(&mut head))
                        .await;
                let ok = matches!(read, Ok(Ok(n)) if head[..n].starts_with(b"GET /metrics"));
                let (status, body) = if ok {
                    ("200 OK", metrics.text())
                } else {
                    ("404 Not Found", "only GET /metrics\n".to_owned())
                };
                let reply = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = conn.write_all(reply.as_bytes()).await;
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_and_rules_are_counted_per_load_balancer() {
        let m = Metrics::default();
        m.record("shop", "detect", &[942100, 949110]);
        m.record("shop", "detect", &[942100]);
        m.record("blog", "pass", &[]);
        let text = m.text();
        for want in [
            "vpsie_lb_waf_requests_total{lb_id=\"shop\",verdict=\"detect\"} 2",
            "vpsie_lb_waf_requests_total{lb_id=\"blog\",verdict=\"pass\"} 1",
            "vpsie_lb_waf_rule_matches_total{lb_id=\"shop\",rule=\"942100\",action=\"detect\"} 2",
        ] {
            assert!(text.contains(want), "{want} in {text}");
        }
    }
}

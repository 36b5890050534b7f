//! Envoy's ext_authz over gRPC: each request of a load balancer with a WAF
//! comes here with the load balancer's id in its context, is inspected
//! under that load balancer's policy, and is let through or refused.

use std::sync::{Arc, RwLock};

use envoy_types::pb::envoy::config::core::v3::{HeaderValue, HeaderValueOption};
use envoy_types::pb::envoy::service::auth::v3::authorization_server::Authorization;
use envoy_types::pb::envoy::service::auth::v3::{
    CheckRequest, CheckResponse, DeniedHttpResponse, OkHttpResponse, check_response,
};
use envoy_types::pb::envoy::r#type::v3::{HttpStatus, StatusCode};
use envoy_types::pb::google::protobuf::{Struct, Value, value};
use envoy_types::pb::google::rpc;
use tonic::{Request, Response, Status};

use crate::config::WafConfig;
use crate::engine::{self, Engine, Verdict};

/// gRPC status codes the answer uses.
const OK: i32 = 0;
const PERMISSION_DENIED: i32 = 7;

/// The ext_authz service: the engine and the policies it reads.
pub struct Waf {
    engine: Arc<Engine>,
    config: Arc<RwLock<WafConfig>>,
    /// The policy file, read again at once for a load balancer it does not
    /// know yet (the agent writes it just before Envoy learns of one).
    path: std::path::PathBuf,
    metrics: crate::metrics::Metrics,
    /// Where inspections run, at most so many at once.
    pool: crate::pool::Pool,
}

impl Waf {
    /// A service over `engine` with the policies in `config` (replaced
    /// in place when the file at `path` changes).
    pub fn new(
        engine: Arc<Engine>,
        config: Arc<RwLock<WafConfig>>,
        path: std::path::PathBuf,
        metrics: crate::metrics::Metrics,
        pool: crate::pool::Pool,
    ) -> Self {
        Self {
            engine,
            config,
            path,
            metrics,
            pool,
        }
    }

    fn policy(&self, lb: &str) -> Option<crate::config::Policy> {
        self.config
            .read()
            .ok()
            .and_then(|c| c.load_balancers.get(lb).cloned())
    }

    /// The policy of `lb`, reading the file again when it is not known.
    async fn policy_now(&self, lb: &str) -> Option<crate::config::Policy> {
        if let Some(p) = self.policy(lb) {
            return Some(p);
        }
        let (engine, path) = (self.engine.clone(), self.path.clone());
        if let Ok(Ok(fresh)) =
            tokio::task::spawn_blocking(move || crate::load(&engine, &path)).await
            && let Ok(mut slot) = self.config.write()
        {
            *slot = fresh;
        }
        self.policy(lb)
    }
}

#[tonic::async_trait]
impl Authorization for Waf {
    async fn check(&self, req: Request<CheckRequest>) -> Result<Response<CheckResponse>, Status> {
        let attrs = req.into_inner().attributes.unwrap_or_default();
        let lb = attrs
            .context_extensions
            .get("lb")
            .cloned()
            .unwrap_or_default();
        let Some(policy) = self.policy_now(&lb).await else {
            // The agent writes policies before Envoy learns of the load
            // balancer, so this is a lag or a bug. Never a silent pass: an
            // error makes Envoy answer as the document's `fail_open` says.
            tracing::error!(lb_id = %lb, "no waf policy for this load balancer; envoy answers as its fail_open says");
            self.metrics.record(&lb, "error", &[]);
            return Err(Status::unavailable(format!(
                "no waf policy for load balancer {lb:?}"
            )));
        };
        let request = describe(&attrs);
        let engine = self.engine.clone();
        let what = format!("{} {}", request.method, cut(&request.uri));
        let client = request.client.0.clone();
        let verdict = self
            .pool
            .run(move || engine.inspect(&policy, &request))
            .await
            .map_err(|busy| {
                // Counted, not logged: a flood would fill the journal.
                self.metrics.record(&lb, "busy", &[]);
                Status::resource_exhausted(format!("every waf worker is busy ({busy:?})"))
            })?
            .map_err(|e| {
                tracing::error!(lb_id = %lb, error = %e, "inspection failed");
                self.metrics.record(&lb, "error", &[]);
                Status::internal(e)
            })?;
        Ok(Response::new(match verdict {
            Verdict::Pass => {
                self.metrics.record(&lb, "pass", &[]);
                allow(&[])
            }
            Verdict::Detected(rules) => {
                self.metrics.record(&lb, "detect", &rules);
                tracing::info!(lb_id = %lb, client = %client, request = %what, rules = ?rules, action = "detect", "waf rules matched; passed");
                allow(&rules)
            }
            Verdict::Blocked { status, rules } => {
                self.metrics.record(&lb, "block", &rules);
                tracing::warn!(lb_id = %lb, client = %client, request = %what, rules = ?rules, action = "block", "waf refused the request");
                deny(status, &rules)
            }
        }))
    }
}

/// The engine's view of what Envoy sent.
fn describe(
    attrs: &envoy_types::pb::envoy::service::auth::v3::AttributeContext,
) -> engine::Request {
    let http = attrs
        .request
        .as_ref()
        .and_then(|r| r.http.clone())
        .unwrap_or_default();
    let client = attrs
        .source
        .as_ref()
        .and_then(|p| p.address.as_ref())
        .and_then(|a| match &a.address {
            Some(envoy_types::pb::envoy::config::core::v3::address::Address::SocketAddress(s)) => {
                let port = match s.port_specifier {
                    Some(envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier::PortValue(p)) => p,
                    _ => 0,
                };
                Some((s.address.clone(), u16::try_from(port).unwrap_or(0)))
            }
            _ => None,
        })
        .unwrap_or_else(|| ("0.0.0.0".into(), 0));
    let body = if http.raw_body.is_empty() {
        http.body.into_bytes()
    } else {
        http.raw_body
    };
    let partial = http.headers.get(PARTIAL_BODY).is_some_and(|v| v == "true");
    // HTTP/2 names: `:authority` is the Host the rules look for; the
    // other pseudo-headers are already in the method and path. Envoy's
    // own note on the body is not the client's.
    let mut headers: Vec<(String, String)> = http
        .headers
        .into_iter()
        .filter_map(|(k, v)| match k.as_str() {
            ":authority" if v == HOST_ENVOY_GAVE => None,
            ":authority" => Some(("Host".to_owned(), v)),
            PARTIAL_BODY => None,
            k if k.starts_with(':') => None,
            _ => Some((k, v)),
        })
        .collect();
    let http_version = version(&http.protocol);
    headers.extend(framing(&headers, &http_version, body.len(), partial));
    engine::Request {
        client,
        method: http.method,
        uri: http.path,
        http_version,
        headers,
        body,
        partial,
    }
}

/// The header ext_authz adds when it sends only the start of the body.
const PARTIAL_BODY: &str = "x-envoy-auth-partial-body";

/// The Host Envoy gives an HTTP/1.0 request that named none (the envoy
/// crate's `DEFAULT_HOST_FOR_HTTP_10`; a test in the agent pins the two
/// equal). The rules must see the request without one, as sent (920280).
pub const HOST_ENVOY_GAVE: &str = "http10.vpsie-lb.invalid";

/// The framing header a body came with, when Envoy's description lost it:
/// Envoy sends a chunked body without `transfer-encoding`, and the Core
/// Rule Set scores a POST with neither that nor `content-length` as an
/// anomaly (920180), so every chunked upload was on the way to a block.
/// Over HTTP/1.x a body without a length was chunked; over HTTP/2 and 3
/// the frames end it, and its length is known once it is whole.
fn framing(
    headers: &[(String, String)],
    http_version: &str,
    body_len: usize,
    partial: bool,
) -> Option<(String, String)> {
    let has = |name: &str| headers.iter().any(|(k, _)| k.eq_ignore_ascii_case(name));
    if body_len == 0 || has("content-length") || has("transfer-encoding") {
        return None;
    }
    if http_version.starts_with('1') {
        Some(("Transfer-Encoding".into(), "chunked".into()))
    } else if partial {
        None
    } else {
        Some(("Content-Length".into(), body_len.to_string()))
    }
}

fn version(protocol: &str) -> String {
    protocol.strip_prefix("HTTP/").unwrap_or("1.1").to_owned()
}

fn cut(s: &str) -> String {
    s.chars().take(200).collect()
}

/// The rules for the access log: `waf_rules` in ext_authz's metadata.
fn metadata(rules: &[u32], action: &str) -> Option<Struct> {
    let text = |s: String| Value {
        kind: Some(value::Kind::StringValue(s)),
    };
    let ids: Vec<String> = rules.iter().map(ToString::to_string).collect();
    Some(Struct {
        fields: [
            ("waf_rules".to_owned(), text(ids.join(","))),
            ("waf_action".to_owned(), text(action.to_owned())),
        ]
        .into(),
    })
}

fn allow(rules: &[u32]) -> CheckResponse {
    CheckResponse {
        status: Some(rpc::Status {
            code: OK,
            ..Default::default()
        }),
        dynamic_metadata: (!rules.is_empty())
            .then(|| metadata(rules, "detect"))
            .flatten(),
        http_response: Some(check_response::HttpResponse::OkResponse(
            OkHttpResponse::default(),
        )),
    }
}

fn deny(status: u16, rules: &[u32]) -> CheckResponse {
    let code = if status == 403 {
        StatusCode::Forbidden
    } else {
        StatusCode::try_from(i32::from(status)).unwrap_or(StatusCode::Forbidden)
    };
    CheckResponse {
        status: Some(rpc::Status {
            code: PERMISSION_DENIED,
            ..Default::default()
        }),
        dynamic_metadata: metadata(rules, "block"),
        http_response: Some(check_response::HttpResponse::DeniedResponse(
            DeniedHttpResponse {
                status: Some(HttpStatus { code: code as i32 }),
                headers: vec![HeaderValueOption {
                    header: Some(HeaderValue {
                        key: "content-type".into(),
                        value: "text/plain".into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }],
                // The rule ids are for the operator (log, access log), not
                // for whoever probes the rules.
                body: "request refused by the web application firewall\n".into(),
            },
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::framing;

    fn header(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn regression_a_chunked_post_scored_as_having_no_length() {
        let none = header(&[("host", "x")]);
        // (headers Envoy sent, version, body length, partial, what is added)
        type Case<'a> = (
            &'a [(&'a str, &'a str)],
            &'a str,
            usize,
            bool,
            Option<(&'a str, &'a str)>,
        );
        let cases: &[Case] = &[
            (
                &[],
                "1.1",
                10,
                false,
                Some(("Transfer-Encoding", "chunked")),
            ),
            (&[], "1.0", 10, true, Some(("Transfer-Encoding", "chunked"))),
            (&[], "2", 10, false, Some(("Content-Length", "10"))),
            (&[], "3", 7, false, Some(("Content-Length", "7"))),
            // Only the start was sent: its length is not the body's.
            (&[], "2", 10, true, None),
            (&[], "1.1", 0, false, None),
            (&[("Content-Length", "10")], "1.1", 10, false, None),
            (&[("transfer-encoding", "chunked")], "1.1", 10, false, None),
        ];
        for (extra, version, len, partial, want) in cases {
            let mut h = none.clone();
            h.extend(header(extra));
            let got = framing(&h, version, *len, *partial);
            let want = want.map(|(k, v)| (k.to_owned(), v.to_owned()));
            assert_eq!(got, want, "{extra:?} {version} {len} {partial}");
        }
    }
}

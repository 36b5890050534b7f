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
pub use crate::request::HOST_ENVOY_GAVE;

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
    let headers = http
        .headers
        .into_iter()
        .filter(|(k, _)| k != PARTIAL_BODY)
        .collect();
    crate::request::describe(crate::request::Seen {
        client,
        method: http.method,
        path: http.path,
        protocol: http.protocol,
        headers,
        body,
        partial,
    })
}

/// The header ext_authz adds when it sends only the start of the body.
const PARTIAL_BODY: &str = "x-envoy-auth-partial-body";

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

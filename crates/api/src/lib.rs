//! The VPSie API client. One attempt per call: the controller decides when
//! to try again, using what each error says (its class, Retry-After).
//! [`origin`] is where the API may be, and where it may redirect us.

use std::collections::HashMap;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use serde_json::Value;
use vpsie_lb_core::class::Class;

mod answer;
pub mod origin;

use answer::check;
pub use answer::{
    Answer, PUBLIC_LB_PATH, ZONES_PATH, loadbalancer_answer, parse_retry_after, public_answer,
};

/// A latency histogram from 1 ms to about 33 s: the buckets of every
/// latency metric of the agent, which re-exports it.
pub fn seconds_histogram() -> Histogram {
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.001, 2.0, 16,
    ))
}

/// Cap on any response body.
pub const MAX_BODY: u64 = 10 * 1024 * 1024;
/// Connect timeout.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Whole-request timeout.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Redirects followed at most.
const MAX_REDIRECTS: usize = 3;

/// A call to the API failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ApiError {
    /// Could not connect, or the connection broke. Retryable.
    #[error("{what}: {reason}")]
    Network {
        /// Method and path.
        what: String,
        /// Why.
        reason: String,
    },
    /// The API answered with an error status. Retryable for 5xx and 429.
    #[error("{what}: status {status}: {body}")]
    Status {
        /// Method and path.
        what: String,
        /// The status.
        status: u16,
        /// At most 200 characters of the body.
        body: String,
        /// What Retry-After asked for.
        retry_after: Option<Duration>,
    },
    /// 401 or 403: our key is not accepted. Retrying soon will not help.
    #[error("{what}: api key rejected (status {status}): {body}")]
    Unauthorized {
        /// Method and path.
        what: String,
        /// The status.
        status: u16,
        /// At most 200 characters of the body.
        body: String,
    },
    /// The public API answered 2xx with `{"error": true, "message": …}`.
    /// Retryable: it is how that API reports its own trouble.
    #[error("{what}: the api reported an error: {message}")]
    Reported {
        /// Method and path.
        what: String,
        /// Its message (at most 200 characters).
        message: String,
    },
    /// The answer was unusable: too big, not JSON, wrong content type, a
    /// redirect we refuse. Retryable (the next answer may be fine).
    #[error("{what}: {reason}")]
    Body {
        /// Method and path.
        what: String,
        /// Why.
        reason: String,
    },
}

impl ApiError {
    /// Whether trying again later could help.
    pub fn is_retryable(&self) -> bool {
        self.class().is_retryable()
    }
    /// The class of this failure: the one table of what the API's answers
    /// mean, read by the sources, the reporter and the retry decisions.
    pub fn class(&self) -> Class {
        match self {
            ApiError::Network { .. } | ApiError::Body { .. } | ApiError::Reported { .. } => {
                Class::Transient
            }
            ApiError::Status { status, .. } => Class::of_status(*status),
            ApiError::Unauthorized { .. } => Class::Refused,
        }
    }
    /// The wait the server asked for, if it did.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ApiError::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
    /// Whether the API said the thing does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, ApiError::Status { status: 404, .. })
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ApiLabels {
    endpoint: &'static str,
    class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointLabels {
    endpoint: &'static str,
}

/// Metrics of calls to the VPSie API.
#[derive(Clone, Debug)]
pub struct ApiMetrics {
    requests: Family<ApiLabels, Counter>,
    latency: Family<EndpointLabels, Histogram>,
}

impl ApiMetrics {
    /// Registers the API client's metrics.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            requests: Family::default(),
            latency: Family::new_with_constructor(seconds_histogram),
        };
        registry.register(
            "api_requests",
            "Calls to the VPSie API by endpoint and outcome",
            m.requests.clone(),
        );
        registry.register(
            "api_request_duration_seconds",
            "Latency of calls to the VPSie API",
            m.latency.clone(),
        );
        m
    }

    /// Records one call: `status` is None when no answer came.
    pub fn observe(&self, endpoint: &'static str, status: Option<u16>, took: Duration) {
        let class = match status {
            None => "network_error",
            Some(200..=299) => "2xx",
            Some(300..=399) => "3xx",
            Some(400..=499) => "4xx",
            Some(500..=599) => "5xx",
            Some(_) => "other",
        };
        self.requests
            .get_or_create(&ApiLabels { endpoint, class })
            .inc();
        self.latency
            .get_or_create(&EndpointLabels { endpoint })
            .observe(took.as_secs_f64());
    }
}

/// How a client presents its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Auth {
    /// `Authorization: Bearer <key>`: the agent API.
    Bearer,
    /// `Vpsie-Auth: <key>`: the public API, as VPSie's own clients send it.
    VpsieAuth,
}

/// A client for one API base URL and key.
pub struct ApiClient {
    base: String,
    key: String,
    auth: Auth,
    agent: ureq::Agent,
    /// Last ETag and body per load balancer, for If-None-Match.
    cache: std::sync::Mutex<HashMap<String, (String, Value)>>,
    metrics: Option<ApiMetrics>,
}

impl std::fmt::Debug for ApiClient {
    // Hand-written so the key can never be printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiClient")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

impl ApiClient {
    /// A client for `base` (already validated: https, or http to loopback).
    pub fn new(base: &str, key: String) -> Self {
        let config = ureq::Agent::config_builder()
            .timeout_connect(Some(CONNECT_TIMEOUT))
            .timeout_global(Some(REQUEST_TIMEOUT))
            .http_status_as_error(false)
            // Redirects are checked and followed by hand (same host, no downgrade).
            .max_redirects(0)
            .user_agent(concat!("vpsie-lb-agent/", env!("CARGO_PKG_VERSION")))
            .build();
        Self {
            base: base.trim_end_matches('/').to_owned(),
            key,
            auth: Auth::Bearer,
            agent: ureq::Agent::new_with_config(config),
            cache: std::sync::Mutex::new(HashMap::new()),
            metrics: None,
        }
    }

    /// A client of the public API at `origin`, sending `Vpsie-Auth`.
    pub fn public(origin: &str, key: String) -> Self {
        Self {
            auth: Auth::VpsieAuth,
            ..Self::new(origin, key)
        }
    }

    /// Records every call in `metrics`.
    pub fn with_metrics(mut self, metrics: ApiMetrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// One request, timed and counted.
    fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
        etag: Option<&str>,
    ) -> Result<Answer, ApiError> {
        let started = std::time::Instant::now();
        let result = self.call_once(method, path, body, etag);
        if let Some(m) = &self.metrics {
            let endpoint = match (method, path.rsplit('/').next()) {
                ("GET", _) if path.starts_with(PUBLIC_LB_PATH) => "get_public_lb",
                ("GET", _) if path.starts_with(ZONES_PATH) => "get_zones",
                ("GET", _) => "get_loadbalancer",
                (_, Some("status")) => "put_status",
                (_, Some("health")) => "put_health",
                _ => "post_event",
            };
            let status = match &result {
                Ok(a) => Some(a.status),
                Err(ApiError::Network { .. }) => None,
                Err(ApiError::Status { status, .. } | ApiError::Unauthorized { status, .. }) => {
                    Some(*status)
                }
                Err(ApiError::Body { .. } | ApiError::Reported { .. }) => Some(200),
            };
            m.observe(endpoint, status, started.elapsed());
        }
        result
    }

    /// One request with redirects; returns status, ETag, Retry-After, content type and body.
    fn call_once(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
        etag: Option<&str>,
    ) -> Result<Answer, ApiError> {
        let what = format!("{method} {path}");
        let mut url = format!("{}{path}", self.base);
        for _ in 0..=MAX_REDIRECTS {
            let (auth_header, auth) = match self.auth {
                Auth::Bearer => ("Authorization", format!("Bearer {}", self.key)),
                Auth::VpsieAuth => ("Vpsie-Auth", self.key.clone()),
            };
            let result = match (method, body) {
                ("GET", _) => {
                    let mut req = self
                        .agent
                        .get(&url)
                        .header(auth_header, &auth)
                        .header("Accept", "application/json");
                    if let Some(tag) = etag {
                        req = req.header("If-None-Match", tag);
                    }
                    req.call()
                }
                ("PUT", Some(b)) => self
                    .agent
                    .put(&url)
                    .header(auth_header, &auth)
                    .header("Content-Type", "application/json")
                    .send(b.to_string().as_bytes()),
                (_, Some(b)) => self
                    .agent
                    .post(&url)
                    .header(auth_header, &auth)
                    .header("Content-Type", "application/json")
                    .send(b.to_string().as_bytes()),
                _ => self
                    .agent
                    .post(&url)
                    .header(auth_header, &auth)
                    .send_empty(),
            };
            let mut resp = result.map_err(|e| ApiError::Network {
                what: what.clone(),
                reason: match e {
                    ureq::Error::Timeout(_) => format!(
                        "no complete answer within {}s (timed out)",
                        REQUEST_TIMEOUT.as_secs()
                    ),
                    e => e.to_string(),
                },
            })?;
            let status = resp.status().as_u16();
            let header = |name: &str| {
                resp.headers()
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned)
            };
            if (300..400).contains(&status) && status != 304 {
                let location = header("location").unwrap_or_default();
                url = crate::origin::redirect_target(&url, &location).map_err(|reason| {
                    ApiError::Body {
                        what: what.clone(),
                        reason,
                    }
                })?;
                continue;
            }
            let (etag, retry_after, content_type) = (
                header("etag"),
                header("retry-after"),
                header("content-type"),
            );
            let text = resp
                .body_mut()
                .with_config()
                .limit(MAX_BODY)
                .read_to_string()
                .map_err(|e| ApiError::Body {
                    what: what.clone(),
                    reason: format!("reading the body (limit {MAX_BODY} bytes): {e}"),
                })?;
            return Ok(Answer {
                status,
                etag,
                retry_after: retry_after.as_deref().and_then(parse_retry_after),
                content_type: content_type.unwrap_or_default(),
                text,
                what,
            });
        }
        Err(ApiError::Body {
            what,
            reason: format!("more than {MAX_REDIRECTS} redirects"),
        })
    }

    /// `GET /loadbalancers/{id}`, with If-None-Match when an ETag is known.
    /// Safe to call from several threads at once.
    pub fn get_loadbalancer(&self, id: &str) -> Result<Value, ApiError> {
        self.get_cached(&format!("/loadbalancers/{id}"), |a| {
            loadbalancer_answer(id, a)
        })
    }

    /// `GET /api/v1/lb/{identifier}` of the public API: the `data` of its
    /// envelope. Safe to call from several threads at once.
    pub fn get_public_lb(&self, identifier: &str) -> Result<Value, ApiError> {
        self.get_cached(&format!("{PUBLIC_LB_PATH}{identifier}"), public_answer)
    }

    /// `GET /apps/v2/domains`: the account's DNS zones by identifier.
    pub fn get_zones(&self) -> Result<std::collections::BTreeMap<String, String>, ApiError> {
        let data = self.get_cached(ZONES_PATH, public_answer)?;
        Ok(data
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|z| {
                let id = z.get("identifier")?.as_str()?;
                let name = z.get("domain_name")?.as_str()?;
                Some((id.to_owned(), name.to_owned()))
            })
            .collect())
    }

    /// A GET whose answer `parse` reads (`None` for 304), sending the ETag
    /// of the last answer to `path` and answering 304s from it.
    fn get_cached(
        &self,
        path: &str,
        parse: impl FnOnce(Answer) -> Result<Option<Value>, ApiError>,
    ) -> Result<Value, ApiError> {
        let cached = self.cache.lock().ok().and_then(|c| c.get(path).cloned());
        let a = self.call("GET", path, None, cached.as_ref().map(|c| c.0.as_str()))?;
        let etag = a.etag.clone();
        let Some(v) = parse(a)? else {
            // 304: what we cached under the ETag we sent.
            return cached.map(|(_, v)| v).ok_or_else(|| ApiError::Body {
                what: format!("GET {path}"),
                reason: "304 Not Modified, but no earlier answer is cached".into(),
            });
        };
        if let Some(tag) = etag
            && let Ok(mut c) = self.cache.lock()
        {
            c.insert(path.to_owned(), (tag, v.clone()));
        }
        Ok(v)
    }

    /// `PUT /loadbalancers/{id}/status`.
    pub fn put_status(&self, id: &str, body: &Value) -> Result<(), ApiError> {
        check(self.call(
            "PUT",
            &format!("/loadbalancers/{id}/status"),
            Some(body),
            None,
        )?)
        .map(|_| ())
    }

    /// `PUT /loadbalancers/{id}/backends/{backend}/health`.
    pub fn put_health(&self, id: &str, backend: &str, healthy: bool) -> Result<(), ApiError> {
        let body = serde_json::json!({"status": if healthy { "healthy" } else { "unhealthy" }});
        check(self.call(
            "PUT",
            &format!("/loadbalancers/{id}/backends/{backend}/health"),
            Some(&body),
            None,
        )?)
        .map(|_| ())
    }

    /// `POST /loadbalancers/{id}/events`.
    pub fn post_event(&self, id: &str, event: &Value) -> Result<(), ApiError> {
        check(self.call(
            "POST",
            &format!("/loadbalancers/{id}/events"),
            Some(event),
            None,
        )?)
        .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regression_an_answer_about_another_id_was_applied() {
        let sim = vpsie_api_sim::Sim::new("k", None);
        let port = sim.spawn(0).expect("emulator").port();
        let put = |path: &str, doc: &Value| {
            let r =
                vpsie_lb_testkit::http::send(port, "PUT", path, &doc.to_string()).expect("control");
            assert!(r.status < 300, "{}", r.body);
        };
        put(
            "/_sim/loadbalancers/lb-1",
            &serde_json::json!({"id": "lb-2", "name": "x"}),
        );
        put(
            "/_sim/loadbalancers/lb-3",
            &serde_json::json!([{"id": "lb-3"}]),
        );
        put(
            "/_sim/loadbalancers/lb-4",
            &serde_json::json!({"id": "lb-4"}),
        );
        let client = ApiClient::new(&format!("http://127.0.0.1:{port}/v1"), "k".into());
        let err = client.get_loadbalancer("lb-1").expect_err("wrong id");
        assert!(
            err.to_string()
                .contains("the answer is about load balancer \"lb-2\", not \"lb-1\""),
            "{err}"
        );
        let err = client.get_loadbalancer("lb-3").expect_err("an array");
        assert!(
            err.to_string().contains("not one load-balancer object"),
            "{err}"
        );
        assert_eq!(
            client.get_loadbalancer("lb-4").expect("right id")["id"],
            "lb-4"
        );
    }

    #[test]
    fn debug_output_never_shows_the_key() {
        let c = ApiClient::new("https://api.vpsie.com/v1", "super-secret-key".into());
        let text = format!("{c:?}");
        assert!(
            text.contains("api.vpsie.com") && !text.contains("super-secret-key"),
            "{text}"
        );
    }
}

//! `vpsie-lb-waf-filter`: the WAF as an HTTP filter inside Envoy, loaded
//! as a dynamic module. It runs the WAF service's engine (ModSecurity with
//! the Core Rule Set, `vpsie_lb_waf::engine`) on Envoy's worker thread, as
//! ModSecurity-nginx does in nginx's, so a request costs no ext_authz
//! round trip, no gRPC framing and no thread hand-off.
//!
//! The listener's filter config names the load balancer and its
//! `fail_open`; each route's config carries the policy, so a policy change
//! is a route change and never touches the listener. See "The WAF's two
//! engines" in `docs/load-balancer-format.md`.

mod abi;

use std::sync::{Arc, OnceLock};

use serde::Deserialize;
use vpsie_lb_waf::config::{Mode, Oversize, Policy};
use vpsie_lb_waf::engine::{DEFAULT_CRS_DIR, DEFAULT_CRS_SETUP, Engine, MAX_BODY_BYTES, Verdict};
use vpsie_lb_waf::msc::RuleSet;
use vpsie_lb_waf::request::{Seen, describe};

use crate::abi::Envoy;

/// Where the verdict goes in the stream's dynamic metadata, for the
/// access log (`waf_action`, `waf_rules`).
pub const METADATA_NAMESPACE: &str = "vpsie_lb.waf";

/// The answer's body when the firewall refuses a request.
const REFUSED: &str = "request refused by the web application firewall\n";

/// The engine, one per Envoy process: the Core Rule Set is compiled once
/// (from Debian's `modsecurity-crs`) and shared by every load balancer.
fn engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| Engine::new(DEFAULT_CRS_DIR.as_ref(), DEFAULT_CRS_SETUP.as_ref()))
}

/// The listener's settings.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListenerSettings {
    /// The load balancer's id, for the log.
    lb: String,
    /// Let requests through when no verdict can be had.
    fail_open: bool,
}

/// One load balancer's filter: who it is and what a missing verdict means.
pub struct FilterConfig {
    lb: String,
    fail_open: bool,
}

impl FilterConfig {
    /// Reads the listener's settings.
    pub fn parse(text: &[u8]) -> Result<Self, String> {
        let s: ListenerSettings =
            serde_json::from_slice(text).map_err(|e| format!("filter config: {e}"))?;
        Ok(Self {
            lb: s.lb,
            fail_open: s.fail_open,
        })
    }
}

/// A route's settings.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RouteSettings {
    policy: Policy,
}

/// A route's policy, its rules compiled. The set lives as long as the
/// route configurations that hold it (Envoy drops one it replaced), so
/// Envoy never keeps a policy no route uses any more.
pub struct RouteConfig {
    policy: Policy,
    rules: Arc<RuleSet>,
}

impl RouteConfig {
    /// Reads the route's settings and compiles the policy's rules, so
    /// that no request pays for a compile and a bad policy fails the route
    /// configuration (Envoy keeps the last good one). The agent's
    /// pre-flight (`envoy --mode validate`) compiles too: the Core Rule
    /// Set takes about 60 ms, and a rule set that does not load is then
    /// refused before Envoy is handed it.
    pub fn parse(text: &[u8]) -> Result<Self, String> {
        let s: RouteSettings =
            serde_json::from_slice(text).map_err(|e| format!("route config: {e}"))?;
        let rules = Arc::new(engine().compile(&s.policy)?);
        Ok(Self {
            policy: s.policy,
            rules,
        })
    }
}

/// What a hook tells Envoy.
pub enum Next {
    /// Pass the request on.
    Go,
    /// Hold it: the body is still coming.
    Wait,
    /// Answer it here with this reply. The hook sends it last: sending
    /// may end the stream and free its state at once.
    Refuse(Reply),
}

/// A reply the filter gives instead of the backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reply {
    /// The status.
    pub status: u16,
    /// The body.
    pub body: &'static str,
    /// Envoy's response code details (in the access log).
    pub details: &'static str,
}

/// What a request gets when no verdict could be had and `fail_open` is
/// false: what a blocked one gets.
pub const CLOSED: Reply = Reply {
    status: 403,
    body: REFUSED,
    details: "waf_unavailable",
};

/// One request's state between hooks.
pub struct Stream {
    filter: Arc<FilterConfig>,
    route: Option<Arc<RouteConfig>>,
    seen: Seen,
    /// A verdict was given: what follows passes as it comes.
    decided: bool,
}

impl Stream {
    fn new(filter: Arc<FilterConfig>) -> Self {
        Self {
            filter,
            route: None,
            seen: Seen::default(),
            decided: false,
        }
    }

    /// Request headers: inspect now when there is no body, else wait.
    fn on_headers(&mut self, envoy: &Envoy, end_of_stream: bool) -> Next {
        self.route = envoy.route();
        let Some(route) = &self.route else {
            // Every route of a load balancer with a WAF carries its policy,
            // so this is a bug; never a silent pass.
            self.decided = true;
            envoy.set_metadata(METADATA_NAMESPACE, "waf_action", "error");
            return self.failed();
        };
        if route.policy.mode == Mode::Off {
            self.decided = true;
            return Next::Go;
        }
        self.seen = seen(envoy);
        if end_of_stream {
            self.decide(envoy)
        } else {
            Next::Wait
        }
    }

    /// A body frame: hold frames until the last, or until the inspection
    /// limit, then inspect what was held.
    fn on_body(&mut self, envoy: &Envoy, end_of_stream: bool) -> Next {
        if self.decided {
            return Next::Go;
        }
        if envoy.body_size() > MAX_BODY_BYTES {
            return self.past_the_limit(envoy);
        }
        if !end_of_stream {
            return Next::Wait;
        }
        self.seen.body = envoy.request_body(MAX_BODY_BYTES);
        self.decide(envoy)
    }

    /// Trailers end a request whose last body frame did not.
    fn on_trailers(&mut self, envoy: &Envoy) -> Next {
        if self.decided {
            return Next::Go;
        }
        self.seen.body = envoy.request_body(MAX_BODY_BYTES);
        self.decide(envoy)
    }

    /// The body outgrew what is inspected: a refusing policy in `block`
    /// answers 413 (as Envoy does for the ext_authz path); otherwise the
    /// start is inspected and the rest passes as it comes.
    fn past_the_limit(&mut self, envoy: &Envoy) -> Next {
        let Some(policy) = self.route.as_ref().map(|r| &r.policy) else {
            return Next::Go;
        };
        if policy.mode == Mode::Block && policy.oversize_body == Oversize::Refuse {
            self.decided = true;
            envoy.set_metadata(METADATA_NAMESPACE, "waf_action", "block");
            return Next::Refuse(Reply {
                status: 413,
                body: "request body past the inspection limit\n",
                details: "waf_body_too_large",
            });
        }
        self.seen.body = envoy.request_body(MAX_BODY_BYTES);
        self.seen.partial = true;
        self.decide(envoy)
    }

    /// Inspects what was seen and answers for it.
    fn decide(&mut self, envoy: &Envoy) -> Next {
        self.decided = true;
        let Some(route) = self.route.clone() else {
            return self.failed();
        };
        let request = describe(std::mem::take(&mut self.seen));
        let note = |action: &str, rules: &[u32]| {
            envoy.set_metadata(METADATA_NAMESPACE, "waf_action", action);
            let ids: Vec<String> = rules.iter().map(ToString::to_string).collect();
            envoy.set_metadata(METADATA_NAMESPACE, "waf_rules", &ids.join(","));
            // As the service logs a match: who, what, which rules; never
            // a body.
            abi::warn(|| {
                let what = if action == "block" {
                    "waf refused the request"
                } else {
                    "waf rules matched; passed"
                };
                let line: String = format!("{} {}", request.method, request.uri)
                    .chars()
                    .take(200)
                    .collect();
                // JSON after the message, so a request line can hold anything.
                let fields = serde_json::json!({
                    "lb_id": self.filter.lb,
                    "client": request.client.0,
                    "request": line,
                    "rules": rules,
                    "action": action,
                });
                format!("vpsie-lb-waf-filter: {what} {fields}")
            });
        };
        match engine().inspect_with(&route.policy, || Ok(route.rules.clone()), &request) {
            Ok(Verdict::Pass) => Next::Go,
            Ok(Verdict::Detected(rules)) => {
                note("detect", &rules);
                Next::Go
            }
            Ok(Verdict::Blocked { status, rules }) => {
                note("block", &rules);
                Next::Refuse(Reply {
                    status,
                    body: REFUSED,
                    details: "waf_blocked",
                })
            }
            Err(e) => {
                abi::error(|| {
                    format!(
                        "vpsie-lb-waf-filter: inspection failed: lb_id={}: {e}",
                        self.filter.lb
                    )
                });
                envoy.set_metadata(METADATA_NAMESPACE, "waf_action", "error");
                self.failed()
            }
        }
    }

    /// No verdict could be had: the load balancer's `fail_open` decides,
    /// and a closed one refuses as a blocked request would (403).
    fn failed(&self) -> Next {
        if self.filter.fail_open {
            Next::Go
        } else {
            Next::Refuse(CLOSED)
        }
    }
}

/// The request as Envoy holds it at its headers.
fn seen(envoy: &Envoy) -> Seen {
    let headers = envoy.request_headers();
    let pseudo = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    let client = envoy
        .source()
        .and_then(|s| split_address(&s))
        .unwrap_or_else(|| ("0.0.0.0".into(), 0));
    Seen {
        client,
        method: pseudo(":method"),
        path: pseudo(":path"),
        protocol: envoy.protocol().unwrap_or_default(),
        headers,
        body: Vec::new(),
        partial: false,
    }
}

/// `ip:port` or `[ip6]:port` into its parts.
fn split_address(s: &str) -> Option<(String, u16)> {
    let (ip, port) = s.rsplit_once(':')?;
    let ip = ip.trim_start_matches('[').trim_end_matches(']');
    Some((ip.to_owned(), port.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_split_into_ip_and_port() {
        let cases: &[(&str, Option<(&str, u16)>)] = &[
            ("127.0.0.1:40000", Some(("127.0.0.1", 40000))),
            ("[::1]:8080", Some(("::1", 8080))),
            ("[2001:db8::7]:1", Some(("2001:db8::7", 1))),
            ("127.0.0.1", None),
            ("127.0.0.1:port", None),
        ];
        for (text, want) in cases {
            let want = want.map(|(ip, port)| (ip.to_owned(), port));
            assert_eq!(split_address(text), want, "{text}");
        }
    }

    #[test]
    fn a_policy_no_route_uses_is_forgotten() {
        let text = br#"{"policy": {"mode": "block", "paranoia_level": 3, "exclusions": [941100]}}"#;
        let (one, two) = (
            RouteConfig::parse(text).expect("valid"),
            RouteConfig::parse(text).expect("valid"),
        );
        let sets = [Arc::downgrade(&one.rules), Arc::downgrade(&two.rules)];
        drop(one);
        assert!(
            sets[0].upgrade().is_none(),
            "nothing else keeps a route's set"
        );
        assert!(
            sets[1].upgrade().is_some(),
            "the other route still uses its own"
        );
        drop(two);
        assert!(sets[1].upgrade().is_none());
    }

    #[test]
    fn settings_refuse_unknown_and_missing_fields() {
        assert!(FilterConfig::parse(br#"{"lb": "shop", "fail_open": true}"#).is_ok());
        for bad in [
            &br#"{"lb": "shop"}"#[..],
            br#"{"lb": "shop", "fail_open": true, "extra": 1}"#,
            b"not json",
        ] {
            let err = FilterConfig::parse(bad).err();
            assert!(
                err.is_some_and(|e| e.starts_with("filter config: ")),
                "{bad:?}"
            );
        }
        let err = RouteConfig::parse(br#"{"policy": {"mode": "loud", "paranoia_level": 1}}"#).err();
        assert!(err.is_some_and(|e| e.starts_with("route config: unknown variant `loud`")));
    }
}

//! One domain of an http rule: its host name, its pool and its route.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

use super::read::{ApiObj, Builder, Problems};
use crate::problem::{FieldPath, Problem};

/// HAProxy's defaults, which VPSie's load balancers run on: a check every
/// 2 s, 2 passes to rise, 3 failures to fall.
pub(crate) const DEFAULT_CHECK_MS: i64 = 2000;
const DEFAULT_RISE: i64 = 2;
const DEFAULT_FALL: i64 = 3;
/// Shortest interval in the API's milliseconds, the model's floor.
const MIN_CHECK_MS: i64 = crate::limits::MIN_HC_MS as i64;
/// Longest interval, an hour.
const MAX_CHECK_MS: i64 = crate::limits::MAX_HC_INTERVAL as i64 * 1000;

/// The host name a domain serves (documented in docs/vpsie-api-mapping.md):
/// `domainName` when it has a dot; a single label (or `@`, or nothing) is
/// completed with the DNS zone `domainId` names; a `subdomain` goes in
/// front unless the name already starts with it. Lowercase, no final dot.
pub fn host_name(
    domain_name: Option<&str>,
    subdomain: Option<&str>,
    domain_id: Option<&str>,
    zones: &BTreeMap<String, String>,
) -> Result<String, String> {
    let clean = |s: &str| s.trim().trim_end_matches('.').to_ascii_lowercase();
    let name = domain_name.map(clean).unwrap_or_default();
    let sub = subdomain.map(clean).filter(|s| !s.is_empty());
    let zone = domain_id.and_then(|id| zones.get(id)).map(|z| clean(z));
    let base = if name.contains('.') {
        name
    } else {
        let Some(zone) = zone else {
            let what = match name.as_str() {
                "" | "@" => "is empty".to_owned(),
                label => format!("{label:?} is a single label"),
            };
            return Err(match domain_id {
                Some(id) => format!(
                    "{what} and domainId {id:?} names no dns zone of this account, so the host name is unknown"
                ),
                None => format!(
                    "{what} and no domainId names its dns zone, so the host name is unknown"
                ),
            });
        };
        match name.as_str() {
            "" | "@" => zone,
            label => format!("{label}.{zone}"),
        }
    };
    Ok(match sub {
        Some(s) if base == s || base.starts_with(&format!("{s}.")) => base,
        Some(s) => format!("{s}.{base}"),
        None => base,
    })
}

/// A pool id for `host`: dots become `_` and a leading `*` becomes `_`,
/// so two host names never share one (host names hold no `_`).
pub(crate) fn pool_id(host: &str) -> String {
    let id: String = host
        .chars()
        .map(|c| if c == '.' || c == '*' { '_' } else { c })
        .collect();
    if crate::is_valid_id(&id) {
        id
    } else {
        format!("h{:016x}", super::fnv1a(host.as_bytes()))
    }
}

/// What one domain becomes.
pub(crate) struct MappedDomain {
    pub(crate) host: String,
    pub(crate) pool: Value,
    pub(crate) redirect: bool,
}

impl Builder<'_> {
    /// Maps domain `j` of an http rule into pool `pools[j]` and route `routes[j]`.
    pub(crate) fn domain(&mut self, d: ApiObj<'_>, j: usize) -> Option<MappedDomain> {
        let out = &mut self.problems;
        let host = host_name(
            d.text("domainName", out).as_deref(),
            d.text("subdomain", out).as_deref(),
            d.text("domainId", out).as_deref(),
            &self.env.zones,
        );
        let host = match host {
            Ok(h) => h,
            Err(why) => {
                out.push(Problem::new(&d.at("domainName"), why));
                return None;
            }
        };
        let pool_at = FieldPath::root().key("pools").index(j);
        let route_at = FieldPath::root().key("routes").index(j);
        self.paths.add(&pool_at, d.path());
        self.paths
            .add(&route_at.key("hosts").index(0), &d.at("domainName"));
        let scheme = d.text("backendScheme", out);
        if let Some(s) = scheme
            .as_deref()
            .filter(|s| !s.eq_ignore_ascii_case("http"))
        {
            out.push(Problem::new(
                &d.at("backendScheme"),
                format!("only http backends are supported (got {s:?})"),
            ));
        }
        let port = d.port("backPort", out);
        let algorithm = algorithm(&d, out);
        let backends = self.backends(&d, port, &pool_at);
        let health = self.health_check(&d, &host, &pool_at);
        let sticky = self.sticky(&d, &pool_at);
        let redirect = d.flag("redirectHTTP", &mut self.problems);
        let mut pool = Map::new();
        pool.insert("id".into(), json!(pool_id(&host)));
        pool.insert("algorithm".into(), json!(algorithm?));
        pool.insert("backends".into(), backends?);
        pool.insert("health_check".into(), health?);
        if let Some(name) = sticky? {
            pool.insert("sticky_sessions".into(), json!({ "cookie_name": name }));
        }
        Some(MappedDomain {
            host,
            pool: Value::Object(pool),
            redirect,
        })
    }

    /// The sticky cookie's name, `Some(None)` for none, `None` when wrong.
    fn sticky(&mut self, d: &ApiObj<'_>, pool_at: &FieldPath) -> Option<Option<String>> {
        let out = &mut self.problems;
        if !d.flag("cookieCheck", out) {
            return Some(None);
        }
        self.paths.add(
            &pool_at.key("sticky_sessions").key("cookie_name"),
            &d.at("cookieName"),
        );
        match d.text("cookieName", out) {
            Some(name) => Some(Some(name)),
            None => {
                out.push(Problem::new(
                    &d.at("cookieName"),
                    "is required when cookieCheck is on",
                ));
                None
            }
        }
    }

    /// The health check of a domain (http when it has a path, else tcp),
    /// or of a tcp rule (`d` is then the rule, which has no check fields).
    pub(crate) fn health_check(
        &mut self,
        d: &ApiObj<'_>,
        host: &str,
        pool_at: &FieldPath,
    ) -> Option<Value> {
        let out = &mut self.problems;
        let hc_at = pool_at.key("health_check");
        let interval = millis(d, "checkInterval", out).map(|ms| ms.unwrap_or(DEFAULT_CHECK_MS));
        let fast = millis(d, "fastInterval", out);
        let rise = d
            .int("rise", out)
            .filter(|n| *n != 0)
            .unwrap_or(DEFAULT_RISE);
        let fall = d
            .int("fall", out)
            .filter(|n| *n != 0)
            .unwrap_or(DEFAULT_FALL);
        let mut hc = Map::new();
        match d.text("healthCheckPath", out) {
            Some(path) => {
                hc.insert("type".into(), json!("http"));
                hc.insert("path".into(), json!(path));
                // Backends that serve several sites need the site's name.
                if !host.is_empty() && !host.starts_with('*') {
                    hc.insert("headers".into(), json!({ "Host": host }));
                }
            }
            None => {
                hc.insert("type".into(), json!("tcp"));
            }
        }
        hc.insert("interval".into(), seconds(interval.ok()?));
        if let Some(ms) = fast.ok()? {
            hc.insert("unhealthy_interval".into(), seconds(ms));
        }
        hc.insert("healthy_threshold".into(), json!(rise));
        hc.insert("unhealthy_threshold".into(), json!(fall));
        for (ours, theirs) in [
            ("path", "healthCheckPath"),
            ("interval", "checkInterval"),
            ("timeout", "checkInterval"),
            ("unhealthy_interval", "fastInterval"),
            ("healthy_threshold", "rise"),
            ("unhealthy_threshold", "fall"),
        ] {
            self.paths.add(&hc_at.key(ours), &d.at(theirs));
        }
        Some(Value::Object(hc))
    }

    /// The backends of a domain or tcp rule, all on `port`.
    pub(crate) fn backends(
        &mut self,
        d: &ApiObj<'_>,
        port: Option<u16>,
        pool_at: &FieldPath,
    ) -> Option<Value> {
        let mut list = Vec::new();
        let mut complete = true;
        for (k, (v, at)) in d
            .list("backends", &mut self.problems)
            .into_iter()
            .enumerate()
        {
            let Some(b) = ApiObj::new(v, &at, &mut self.problems) else {
                complete = false;
                continue;
            };
            let doc_at = pool_at.key("backends").index(k);
            self.paths.add(&doc_at, &at);
            self.paths.add(&doc_at.key("id"), &at.key("identifier"));
            self.paths.add(&doc_at.key("address"), &at.key("ip"));
            self.paths.add(&doc_at.key("port"), &d.at("backPort"));
            let id = b.text("identifier", &mut self.problems);
            let ip = b.text("ip", &mut self.problems);
            for (value, key) in [(&id, "identifier"), (&ip, "ip")] {
                if value.is_none() {
                    self.problems
                        .push(Problem::new(&at.key(key), "is required"));
                }
            }
            match (id, ip, port) {
                (Some(id), Some(ip), Some(port)) => {
                    list.push(json!({ "id": id, "address": ip, "port": port }));
                }
                _ => complete = false,
            }
        }
        complete.then_some(Value::Array(list))
    }
}

/// `roundrobin` (the default) or `leastconn`, in Envoy's terms.
pub(crate) fn algorithm(d: &ApiObj<'_>, out: &mut Problems) -> Option<&'static str> {
    match d.text("algorithm", out).as_deref() {
        None | Some("roundrobin" | "round_robin") => Some("round_robin"),
        Some("leastconn" | "least_connections") => Some("least_request"),
        Some(other) => {
            out.push(Problem::new(
                &d.at("algorithm"),
                format!("must be roundrobin or leastconn (got {other:?})"),
            ));
            None
        }
    }
}

/// An interval in the API's milliseconds: `Ok(None)` when absent or 0,
/// `Err` (with a problem) when no check could run that often or that rarely.
fn millis(d: &ApiObj<'_>, key: &str, out: &mut Problems) -> Result<Option<i64>, ()> {
    if d.get(key).is_none() {
        return Ok(None);
    }
    let ms = d.int(key, out).ok_or(())?;
    if ms == 0 {
        return Ok(None);
    }
    if (MIN_CHECK_MS..=MAX_CHECK_MS).contains(&ms) {
        return Ok(Some(ms));
    }
    let hint = if (1..MIN_CHECK_MS).contains(&ms) {
        format!(
            "; the api counts milliseconds, so {ms} s would be {}",
            ms * 1000
        )
    } else {
        String::new()
    };
    out.push(Problem::new(
        &d.at(key),
        format!("must be {MIN_CHECK_MS}..={MAX_CHECK_MS} milliseconds (got {ms}){hint}"),
    ));
    Err(())
}

/// Milliseconds as a document's seconds: whole when they are.
fn seconds(ms: i64) -> Value {
    if ms % 1000 == 0 {
        json!(ms / 1000)
    } else {
        json!(ms as f64 / 1000.0)
    }
}

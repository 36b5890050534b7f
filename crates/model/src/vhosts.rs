//! Which routes each virtual host of a load balancer holds, and what that
//! costs once translated. Envoy picks one virtual host per request (the
//! most specific host pattern) and the first matching route in it, so every
//! virtual host must hold, in document order, each route that can match
//! its hosts: a route without hosts is repeated in every one. That repetition
//! is where a small document becomes a large configuration, so the size is
//! worked out here, from the same plan the translation follows, and capped
//! by validation before anything is rendered.

use crate::model::{HeaderValueMatch, LoadBalancer, PathMatch, Route, RouteAction, limits};

/// One virtual host: the host pattern it serves (`None`: every other
/// host) and the indexes of its routes, in document order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VirtualHostPlan<'a> {
    /// An exact name or `*.suffix`; `None` for the catch-all.
    pub domain: Option<&'a str>,
    /// Indexes into the load balancer's `routes`.
    pub routes: Vec<usize>,
}

/// The virtual hosts of `lb`'s route configuration: one per distinct host
/// pattern, in first-seen order, then the catch-all.
pub fn virtual_hosts(lb: &LoadBalancer) -> Vec<VirtualHostPlan<'_>> {
    plans(lb).collect()
}

/// [`virtual_hosts`], one at a time, so a measure can stop early.
fn plans(lb: &LoadBalancer) -> impl Iterator<Item = VirtualHostPlan<'_>> {
    let mut seen = std::collections::BTreeSet::new();
    let domains: Vec<&str> = (lb.routes.iter().flat_map(|r| &r.hosts))
        .map(String::as_str)
        .filter(|h| seen.insert(*h))
        .collect();
    domains
        .into_iter()
        .map(Some)
        .chain([None])
        .map(|domain| VirtualHostPlan {
            domain,
            routes: routes_for(lb, domain),
        })
}

/// The routes of the virtual host for `domain`, in document order.
fn routes_for(lb: &LoadBalancer, domain: Option<&str>) -> Vec<usize> {
    lb.routes
        .iter()
        .enumerate()
        .filter(|(_, r)| {
            r.hosts.is_empty() || domain.is_some_and(|d| r.hosts.iter().any(|p| covers(p, d)))
        })
        .map(|(i, _)| i)
        .collect()
}

/// Whether `pattern` (an exact name or `*.suffix`) matches every host that
/// Envoy would route to the virtual host of `domain`.
pub fn covers(pattern: &str, domain: &str) -> bool {
    match pattern.strip_prefix('*') {
        // `*.example.org` covers `a.example.org` and `*.a.example.org`.
        Some(suffix) => domain.ends_with(suffix) && domain.len() > suffix.len(),
        None => pattern == domain,
    }
}

/// What a load balancer's route configuration holds once translated.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TranslatedSize {
    /// Virtual hosts.
    pub virtual_hosts: usize,
    /// Routes, each copy counted (the default route of each virtual host too).
    pub routes: usize,
    /// Regular expressions Envoy compiles, each copy counted.
    pub regexes: usize,
    /// An estimate of the route configuration's bytes: what each route
    /// carries (paths, header values, redirect targets, bodies) plus a
    /// fixed share for its structure, each copy counted.
    pub bytes: usize,
}

impl TranslatedSize {
    /// The sum of two sizes.
    pub fn plus(self, other: TranslatedSize) -> TranslatedSize {
        TranslatedSize {
            virtual_hosts: self.virtual_hosts + other.virtual_hosts,
            routes: self.routes + other.routes,
            regexes: self.regexes + other.regexes,
            bytes: self.bytes + other.bytes,
        }
    }
}

/// Bytes counted for a route's structure besides its strings: its match,
/// action and names as JSON. Calibrated against rendered configurations in
/// `crates/envoy/tests/translated_size.rs`, which pins that the estimate is
/// never below what rendering gives.
const ROUTE_OVERHEAD_BYTES: usize = 300;
/// Bytes of a route configuration besides its virtual hosts: names, and the
/// load balancer's own access list and rate limit.
const CONFIG_OVERHEAD_BYTES: usize = 2048;
/// Bytes of a virtual host besides its routes and its name.
const VHOST_OVERHEAD_BYTES: usize = 100;

/// The estimated bytes of an access list's per-filter settings.
fn access_bytes(access: Option<&crate::model::Access>) -> usize {
    access.map_or(0, |a| 300 + 80 * (a.allow.len() + a.deny.len()))
}

/// The translated size of `lb`'s routes. Counting stops adding once the
/// routes pass `stop` (the caller's cap), so a hostile document costs no
/// more to measure than a refused one.
pub fn translated_size(lb: &LoadBalancer, stop: usize) -> TranslatedSize {
    let per_route: Vec<(usize, usize)> = lb.routes.iter().map(|r| (regexes(r), bytes(r))).collect();
    let mut size = TranslatedSize {
        bytes: CONFIG_OVERHEAD_BYTES + access_bytes(lb.access.as_ref()),
        ..Default::default()
    };
    for vh in plans(lb) {
        size.virtual_hosts += 1;
        size.bytes += VHOST_OVERHEAD_BYTES + 2 * vh.domain.map_or(1, str::len);
        // The default route of every virtual host.
        size.routes += 1;
        size.bytes += ROUTE_OVERHEAD_BYTES;
        for i in vh.routes {
            let (re, b) = per_route[i];
            size.routes += 1;
            size.regexes += re;
            size.bytes += b;
        }
        if size.routes > stop {
            break;
        }
    }
    size
}

/// The regular expressions Envoy compiles for one copy of `r`.
fn regexes(r: &Route) -> usize {
    let path = usize::from(matches!(r.path, Some(PathMatch::Regex(_))));
    let headers = r
        .headers
        .iter()
        .filter(|h| matches!(h.value, HeaderValueMatch::Regex(_)))
        .count();
    // The methods are one alternation.
    path + headers + usize::from(!r.methods.is_empty())
}

/// The estimated bytes of one copy of `r`.
fn bytes(r: &Route) -> usize {
    let path = match &r.path {
        Some(PathMatch::Prefix(p) | PathMatch::Exact(p) | PathMatch::Regex(p)) => p.len(),
        None => 0,
    };
    let headers: usize = r
        .headers
        .iter()
        .map(|h| {
            // `{"name":…,"stringMatch":{"safeRegex":{"regex":…}}}`.
            60 + h.name.len()
                + match &h.value {
                    HeaderValueMatch::Present => 0,
                    HeaderValueMatch::Exact(v)
                    | HeaderValueMatch::Prefix(v)
                    | HeaderValueMatch::Regex(v) => v.len(),
                }
        })
        .sum();
    let action = match &r.action {
        RouteAction::Forward(pools) => pools.iter().map(|p| p.pool.len() + 40).sum(),
        RouteAction::Redirect(rd) => {
            rd.host.as_ref().map_or(0, String::len) + rd.path.as_ref().map_or(0, String::len)
        }
        RouteAction::Respond(rs) => rs.body.len(),
    };
    let methods: usize = r.methods.iter().map(|m| m.len() + 1).sum();
    // A route's own limit or access list is per-filter settings of its own.
    let protect = r.rate_limit.map_or(0, |_| 800) + access_bytes(r.access.as_ref());
    ROUTE_OVERHEAD_BYTES + 2 * r.id.len() + path + 2 * headers + methods + action + protect
}

/// Why `size` (one load balancer's) is over a cap, if it is.
pub fn over_cap(size: &TranslatedSize) -> Option<String> {
    let checks = [
        (size.routes, limits::MAX_TRANSLATED_ROUTES, "envoy routes"),
        (
            size.regexes,
            limits::MAX_TRANSLATED_REGEXES,
            "regular expressions",
        ),
        (
            size.bytes,
            limits::MAX_TRANSLATED_BYTES,
            "bytes of route configuration",
        ),
    ];
    // Counting stops past the route cap: the other numbers are then at least what they say.
    let at_least = if size.routes > limits::MAX_TRANSLATED_ROUTES {
        "at least "
    } else {
        ""
    };
    let (n, max, what) = checks.iter().find(|(n, max, _)| n > max)?;
    Some(format!(
        "translates to {at_least}{n} {what} over {} virtual hosts, more than the {max} a load \
         balancer may have: each route without hosts is repeated for every host name the \
         routes name; give those routes hosts, or name fewer hosts",
        size.virtual_hosts
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validate::validate;
    use serde_json::json;

    #[test]
    fn a_pattern_covers_the_virtual_hosts_it_matches_every_name_of() {
        for (pattern, domain, want) in [
            ("api.example.com", "api.example.com", true),
            ("api.example.com", "www.example.com", false),
            ("*.example.org", "a.example.org", true),
            ("*.example.org", "*.a.example.org", true),
            ("*.example.org", "*.example.org", true),
            ("*.example.org", "example.org", false),
            ("*.a.example.org", "*.example.org", false),
            ("*.example.org", "aexample.org", false),
        ] {
            assert_eq!(covers(pattern, domain), want, "{pattern} over {domain}");
        }
    }

    /// A load balancer of `hosted` routes with `hosts` names each (all
    /// distinct) and `hostless` routes without hosts, each of those with
    /// `regex_headers` header regexes, a path regex and methods (none of
    /// them when `None`).
    fn spread(
        hosted: usize,
        hosts: usize,
        hostless: usize,
        regex_headers: Option<usize>,
    ) -> serde_json::Value {
        let mut routes = Vec::new();
        for r in 0..hosted {
            let names: Vec<String> = (0..hosts)
                .map(|h| format!("h{r}-{h}.example.com"))
                .collect();
            routes.push(json!({"id": format!("hosted{r}"), "hosts": names, "forward": [{"pool": "default"}]}));
        }
        for r in 0..hostless {
            let mut route = json!({"id": format!("any{r}"), "forward": [{"pool": "default"}]});
            if let Some(n) = regex_headers {
                let headers: Vec<serde_json::Value> = (0..n)
                    .map(|h| json!({"name": format!("x-h{h}"), "regex": "[a-z]+[0-9]*"}))
                    .collect();
                route["headers"] = json!(headers);
                route["path_regex"] = json!("/[a-z]+");
                route["methods"] = json!(["GET", "POST"]);
            }
            routes.push(route);
        }
        json!({"id": "big", "name": "big", "protocol": "http", "port": 80,
               "backends": [{"id": "a", "address": "10.0.0.1", "port": 80}], "routes": routes})
    }

    #[test]
    fn regression_a_51_kb_document_translated_to_22021_routes_and_killed_the_agent() {
        let doc = spread(20, 50, 20, Some(16));
        assert!(serde_json::to_vec(&doc).expect("json").len() < 60_000);
        // The numbers, counted without a stop.
        let mut lax = doc.clone();
        lax["routes"].as_array_mut().expect("routes").truncate(20);
        let Ok(hosted) = validate(&lax, &Default::default()) else {
            panic!("the hosted half alone is valid");
        };
        let one = &hosted.config.load_balancers[0];
        assert_eq!(translated_size(one, usize::MAX).virtual_hosts, 1001);
        let rej = validate(&doc, &Default::default()).expect_err("refused");
        let lines: Vec<String> = rej.errors.iter().map(ToString::to_string).collect();
        assert_eq!(lines.len(), 1, "{lines:#?}");
        assert!(
            lines[0].starts_with("routes: translates to at least 10"),
            "{}",
            lines[0]
        );
        assert!(lines[0].contains("envoy routes over"), "{}", lines[0]);
    }

    #[test]
    fn the_size_counts_every_copy_of_a_route_without_hosts() {
        let doc = spread(2, 3, 2, Some(1));
        let v = validate(&doc, &Default::default()).expect("valid");
        let size = translated_size(&v.config.load_balancers[0], usize::MAX);
        // 6 host names and the catch-all: each holds both host-less routes
        // and its default; each host name also its own hosted route.
        assert_eq!(size.virtual_hosts, 7);
        assert_eq!(size.routes, 7 * 3 + 6);
        // Per host-less copy: a path regex, a header regex, the methods.
        assert_eq!(size.regexes, 7 * 2 * 3);
        let plan = virtual_hosts(&v.config.load_balancers[0]);
        assert_eq!(plan[0].domain, Some("h0-0.example.com"));
        assert_eq!(plan[0].routes, [0, 2, 3]);
        assert_eq!(
            plan[6],
            VirtualHostPlan {
                domain: None,
                routes: vec![2, 3]
            }
        );
    }

    #[test]
    fn a_document_over_its_total_refuses_the_load_balancers_that_pass_it_and_serves_the_rest() {
        // Each under the per-load-balancer caps (about 3 MB of routes), 14 together over them.
        let lbs: Vec<serde_json::Value> = (0..14)
            .map(|i| {
                let mut lb = spread(10, 30, 28, None);
                lb["id"] = json!(format!("lb{i}"));
                lb["port"] = json!(1000 + i);
                lb
            })
            .collect();
        if let Err(e) = validate(&lbs[0], &Default::default()) {
            panic!("{e}");
        }
        let rej = validate(&json!(lbs), &Default::default()).expect_err("over the total");
        let refused: Vec<String> = rej.errors.iter().map(|p| p.path.to_string()).collect();
        assert!(!refused.is_empty() && refused.len() < 14, "{refused:?}");
        let first: usize = 14 - refused.len();
        let want: Vec<String> = (first..14).map(|i| format!("[{i}].routes")).collect();
        assert_eq!(refused, want);
        assert!(
            rej.errors[0]
                .to_string()
                .contains("would bring the document to")
        );
    }
}

//! Pools: the default one the top-level fields describe, and the others.

use std::collections::{HashMap, HashSet};

use crate::model::{Algorithm, DEFAULT_POOL, Pool, Protocol, StickySessions, limits};
use crate::network::IpNet;
use crate::problem::FieldPath;

use super::backend::{backends, health_check};
use super::obj::{Ctx, IdList, Need, Obj, is_token_byte};

const POOL_KEYS: &[&str] = &[
    "id",
    "algorithm",
    "backends",
    "health_check",
    "sticky_sessions",
    "slow_start",
];
/// Why a pool may not be called `default`.
const RESERVED_POOL: &str = "is the pool the top-level backends describe; choose another id";
const STICKY_KEYS: &[&str] = &["cookie_name", "ttl"];
/// The default pool (from `lb`'s top-level fields) and the others, each
/// `None` after a problem, and what routes need to know about them.
pub(super) fn every_pool(
    lb: &Obj<'_>,
    protocol: Option<Protocol>,
    allowed: &[IpNet],
    cx: &mut Ctx,
) -> (Option<Pool>, Option<Vec<Pool>>, PoolIndex) {
    let default_pool = pool_body(lb, Some(DEFAULT_POOL.to_owned()), protocol, allowed, cx);
    let mut declared = HashSet::from([DEFAULT_POOL.to_owned()]);
    let pools = pools(lb, protocol, allowed, cx, &mut declared);
    if let (Some(d), Some(more)) = (&default_pool, &pools) {
        let mut all = vec![(lb.path.clone(), d)];
        all.extend(more.iter().map(|(p, pool)| (p.clone(), pool)));
        unique_backend_ids(&all, cx);
    }
    let index = PoolIndex {
        declared,
        sticky: default_pool
            .iter()
            .chain(pools.iter().flatten().map(|(_, p)| p))
            .filter(|p| p.sticky_sessions.is_some())
            .map(|p| p.id.clone())
            .collect(),
    };
    let pools = pools.map(|list| list.into_iter().map(|(_, p)| p).collect());
    (default_pool, pools, index)
}

/// The pool fields of `obj`, which is the load balancer itself for the
/// default pool or one item of `pools`. `None` after reporting a problem.
fn pool_body(
    obj: &Obj<'_>,
    id: Option<String>,
    protocol: Option<Protocol>,
    allowed: &[IpNet],
    cx: &mut Ctx,
) -> Option<Pool> {
    let before = cx.errors.len();
    let algorithm = algorithm(obj, cx);
    let backends = backends(obj, allowed, cx);
    let health_check = obj
        .object(cx, "health_check")
        .and_then(|hc| health_check(&hc, cx));
    let sticky_sessions = obj
        .object(cx, "sticky_sessions")
        .and_then(|s| sticky(&s, protocol, cx));
    let slow_start = obj
        .int_in(
            cx,
            "slow_start",
            1..=i64::from(limits::MAX_SLOW_START),
            Need::Optional,
        )
        .map(|s| s as u32);
    if let (Some(_), Some(algo @ (Algorithm::Random | Algorithm::RingHash))) =
        (slow_start, algorithm)
    {
        cx.error(
            &obj.path.key("slow_start"),
            format!(
                "needs algorithm round_robin or least_request (got {})",
                algorithm_name(algo)
            ),
        );
    }
    // Envoy starts the ramp at a backend's first passed active check; with
    // none it applies no ramp at all, which must not pass silently.
    if slow_start.is_some() && obj.get("health_check").is_none() {
        cx.error(
            &obj.path.key("slow_start"),
            "needs a health_check: the ramp starts when a new backend first passes it",
        );
    }
    if cx.errors.len() != before {
        return None;
    }
    Some(Pool {
        id: id?,
        algorithm: algorithm?,
        backends: backends?,
        health_check,
        sticky_sessions,
        slow_start,
        draining: vec![],
    })
}

const ALGORITHMS: &[(&str, Algorithm)] = &[
    ("round_robin", Algorithm::RoundRobin),
    ("least_request", Algorithm::LeastRequest),
    ("random", Algorithm::Random),
    ("ring_hash", Algorithm::RingHash),
];

fn algorithm_name(a: Algorithm) -> &'static str {
    ALGORITHMS
        .iter()
        .find(|(_, v)| *v == a)
        .map_or("?", |(n, _)| n)
}

/// `algorithm`, round robin when absent; `None` only after an error.
fn algorithm(obj: &Obj<'_>, cx: &mut Ctx) -> Option<Algorithm> {
    if obj.get("algorithm").is_none() {
        return Some(Algorithm::RoundRobin);
    }
    obj.enumeration(cx, "algorithm", ALGORITHMS, Need::Required)
}

fn sticky(obj: &Obj<'_>, protocol: Option<Protocol>, cx: &mut Ctx) -> Option<StickySessions> {
    obj.check_keys(STICKY_KEYS, cx);
    if protocol.is_some_and(|p| !p.is_http()) {
        cx.error(&obj.path, "needs protocol http or https");
        return None;
    }
    let name = obj.string(cx, "cookie_name", Need::Required).and_then(|n| {
        if (1..=64).contains(&n.len()) && n.bytes().all(is_token_byte) {
            Some(n.to_owned())
        } else {
            cx.error(
                &obj.path.key("cookie_name"),
                format!("must be 1..=64 characters of an HTTP token (got {n:?})"),
            );
            None
        }
    });
    let ttl = match obj.get("ttl") {
        None => Some(0),
        Some(_) => obj
            .int_in(
                cx,
                "ttl",
                0..=i64::from(limits::MAX_STICKY_TTL),
                Need::Required,
            )
            .map(|t| t as u32),
    };
    Some(StickySessions {
        cookie_name: name?,
        ttl: ttl?,
    })
}

/// The pools under `pools`, beside the default one. Ids of pools that
/// failed are still returned in `declared`, so routes naming them are not
/// reported a second time.
fn pools(
    obj: &Obj<'_>,
    protocol: Option<Protocol>,
    allowed: &[IpNet],
    cx: &mut Ctx,
    declared: &mut HashSet<String>,
) -> Option<Vec<(FieldPath, Pool)>> {
    let Some(items) = obj.array(cx, "pools", Need::Optional) else {
        return Some(vec![]);
    };
    let list = obj.path.key("pools");
    if protocol.is_some_and(|p| !p.has_routes()) {
        cx.error(&list, "needs protocol http, https or tls_passthrough");
        return None;
    }
    if items.len() + 1 > limits::MAX_POOLS {
        cx.error(
            &list,
            format!(
                "has {} pools, more than the {} a load balancer may have besides the default one",
                items.len(),
                limits::MAX_POOLS - 1
            ),
        );
        return None;
    }
    let before = cx.errors.len();
    let mut out = Vec::new();
    let mut reader = IdList::new(
        &list,
        "pool",
        POOL_KEYS,
        Some((DEFAULT_POOL, RESERVED_POOL)),
    );
    for (i, item) in items.iter().enumerate() {
        let Some((path, p, id)) = reader.read(i, item, cx) else {
            continue;
        };
        if let Some(id) = &id {
            declared.insert(id.clone());
        }
        let id = id.filter(|id| id != DEFAULT_POOL);
        if let Some(pool) = pool_body(&p, id, protocol, allowed, cx) {
            out.push((path, pool));
        }
    }
    (cx.errors.len() == before).then_some(out)
}

/// Backend ids are unique across every pool, so health reports, metrics
/// and `/status` can name a backend by its id alone.
fn unique_backend_ids(pools: &[(FieldPath, &Pool)], cx: &mut Ctx) {
    let mut seen: HashMap<&str, FieldPath> = HashMap::new();
    for (path, pool) in pools {
        for (i, b) in pool.backends.iter().enumerate() {
            let at = path.key("backends").index(i);
            match seen.get(b.id.as_str()) {
                Some(first) => cx.error(
                    &at.key("id"),
                    format!("id {:?} is already used by {first}", b.id),
                ),
                None => {
                    seen.insert(&b.id, at);
                }
            }
        }
    }
}

/// What routes need to know about the pools: which ids exist, and which
/// ask for sticky sessions.
pub(super) struct PoolIndex {
    /// Every declared pool id, `default` included.
    pub declared: HashSet<String>,
    /// Ids of pools with sticky sessions.
    pub sticky: HashSet<String>,
}

//! Deregistration delay: a backend that a new document removes or disables
//! keeps its in-flight connections for the load balancer's delay, taking no
//! new ones, and is then dropped.
//!
//! The state across passes is the config last served: its pools carry the
//! backends still draining and when each one ends. [`overlay`] works out the
//! next one from it, the new document and the time, so the agent keeps no
//! other record and every step is a pure function of its inputs.

use std::collections::BTreeSet;
use std::net::IpAddr;

use crate::model::{Address, Backend, Config, Draining, LoadBalancer, Pool};

/// Where a backend is, as Envoy tells hosts apart.
type Endpoint = (Address, u16);

fn endpoint(b: &Backend) -> Endpoint {
    (b.address.clone(), b.port)
}

/// `next` as it should be served at `now_ms`, given what was served before.
///
/// For each load balancer with a delay, each pool it still has gains as
/// draining: the backends the served pool had enabled that `next` does
/// not, until now plus the delay; and those already draining whose time has
/// not come, at most the (possibly shortened) delay from now. A backend that
/// is enabled again is simply active. Host-name backends and pools that
/// resolve names are not drained (Envoy takes health states from EDS, which
/// carries addresses only); a whole pool or load balancer that goes away is
/// removed at once.
pub fn overlay(served: Option<&Config>, mut next: Config, now_ms: u64) -> Config {
    let Some(served) = served.filter(|_| may_drain(&next)) else {
        return next;
    };
    for lb in &mut next.load_balancers {
        if lb.deregistration_delay == 0 {
            continue;
        }
        let Some(old) = served.load_balancers.iter().find(|o| o.id == lb.id) else {
            continue;
        };
        let until = now_ms.saturating_add(u64::from(lb.deregistration_delay) * 1000);
        for pool in pools_mut(lb) {
            if let Some(old_pool) = old.pool(&pool.id) {
                pool.draining = draining(old_pool, pool, now_ms, until);
            }
        }
    }
    next
}

/// The draining list of `pool`, which replaces `old` in the served config.
fn draining(old: &Pool, pool: &Pool, now_ms: u64, until: u64) -> Vec<Draining> {
    let still = old
        .draining
        .iter()
        .filter(|d| d.until_ms > now_ms)
        .map(|d| (&d.backend, d.until_ms.min(until)));
    let newly = old.enabled_backends().map(|b| (b, until));
    may_drain_in(pool, still.chain(newly))
}

/// Of `candidates` (a backend and the end of its drain), those that may
/// drain in `pool`: given by IP, one per endpoint, none that the pool
/// serves; none at all when the pool resolves names.
fn may_drain_in<'a>(
    pool: &Pool,
    candidates: impl Iterator<Item = (&'a Backend, u64)>,
) -> Vec<Draining> {
    if resolves_names(pool) {
        return vec![];
    }
    let mut taken: BTreeSet<Endpoint> = pool.enabled_backends().map(endpoint).collect();
    candidates
        .filter(|(b, _)| matches!(b.address, Address::Ip(_)) && taken.insert(endpoint(b)))
        .map(|(b, until_ms)| Draining {
            backend: b.clone(),
            until_ms,
        })
        .collect()
}

/// Whether Envoy resolves `pool`'s backends itself (a host name among
/// them): its health states then come from DNS, not EDS, so nothing drains.
fn resolves_names(pool: &Pool) -> bool {
    pool.enabled_backends()
        .any(|b| matches!(b.address, Address::Hostname(_)))
}

fn pools_mut(lb: &mut LoadBalancer) -> impl Iterator<Item = &mut Pool> {
    std::iter::once(&mut lb.default_pool).chain(lb.pools.iter_mut())
}

/// Whether any load balancer of `config` has a deregistration delay: when
/// none has, [`overlay`] gives `next` back unchanged, whatever was served.
pub fn may_drain(config: &Config) -> bool {
    config
        .load_balancers
        .iter()
        .any(|lb| lb.deregistration_delay > 0)
}

/// When the next draining backend of `config` ends, if any drains.
pub fn next_deadline(config: &Config) -> Option<u64> {
    pools(config)
        .flat_map(|(_, p)| &p.draining)
        .map(|d| d.until_ms)
        .min()
}

/// Backends whose drain `before` was serving and `after` ends, with the id
/// of their load balancer, one per endpoint: draining there, and in no pool
/// of any load balancer of `after`, active or draining. Their remaining
/// connections are the ones to close; an endpoint another pool still uses
/// is left alone, since a connection does not say which pool opened it.
pub fn ended(before: &Config, after: &Config) -> Vec<(String, Backend)> {
    // Every pass asks; most have nothing draining, and then `after` is not read.
    if pools(before).all(|(_, p)| p.draining.is_empty()) {
        return vec![];
    }
    let mut kept: BTreeSet<Endpoint> = pools(after)
        .flat_map(|(_, p)| {
            p.enabled_backends()
                .chain(p.draining.iter().map(|d| &d.backend))
        })
        .map(endpoint)
        .collect();
    pools(before)
        .flat_map(|(lb, p)| p.draining.iter().map(move |d| (lb, &d.backend)))
        // Inserting marks it taken, so an endpoint is reported once.
        .filter(|(_, b)| kept.insert(endpoint(b)))
        .map(|(lb, b)| (lb.to_owned(), b.clone()))
        .collect()
}

/// Every pool of `c`, with its load balancer's id.
fn pools(c: &Config) -> impl Iterator<Item = (&str, &Pool)> {
    c.load_balancers
        .iter()
        .flat_map(|lb| lb.all_pools().map(move |p| (lb.id.as_str(), p)))
}

/// A running drain as plain values: what the agent saves so that a restart
/// resumes it instead of dropping the backend at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SavedDrain {
    /// The load balancer's id.
    pub lb: String,
    /// The pool's id (`default` for the top-level backends).
    pub pool: String,
    /// The backend's id.
    pub id: String,
    /// Its address: only backends given by IP drain.
    pub ip: IpAddr,
    /// Its port.
    pub port: u16,
    /// Its weight as last served.
    pub weight: u32,
    /// When its connections are closed, in milliseconds since the Unix epoch.
    pub until_ms: u64,
}

impl SavedDrain {
    /// The backend as it was served while draining.
    fn backend(&self) -> Backend {
        Backend {
            id: self.id.clone(),
            address: Address::Ip(self.ip),
            port: self.port,
            weight: self.weight,
            enabled: true,
        }
    }
}

/// The drains `config` runs, to save.
pub fn saved(config: &Config) -> Vec<SavedDrain> {
    pools(config)
        .flat_map(|(lb, p)| p.draining.iter().map(move |d| (lb, p, d)))
        .filter_map(|(lb, p, d)| {
            let Address::Ip(ip) = d.backend.address else {
                return None;
            };
            Some(SavedDrain {
                lb: lb.to_owned(),
                pool: p.id.clone(),
                id: d.backend.id.clone(),
                ip,
                port: d.backend.port,
                weight: d.backend.weight,
                until_ms: d.until_ms,
            })
        })
        .collect()
}

/// What Envoy served before a restart, as far as drains go: `config` (the
/// restored last-known-good, nothing draining) with the `saved` drains back
/// in their pools, each ending no later than its load balancer's delay from
/// `now_ms`. Left out: drains whose load balancer or pool is gone, whose
/// pool resolves host names, or whose endpoint the pool serves again; and
/// drains of an address validation refuses as a backend (`allowed` being
/// the operator's trusted networks): the file is state, not a document,
/// and closing connections to the VM's own services is not its to ask.
/// Drains that ended while the agent was away are kept: [`overlay`] then
/// ends them and [`ended`] names them, so their connections are closed as
/// after any drain.
pub fn resume(
    mut config: Config,
    saved: &[SavedDrain],
    allowed: &[crate::IpNet],
    now_ms: u64,
) -> Config {
    for lb in &mut config.load_balancers {
        let cap = now_ms.saturating_add(u64::from(lb.deregistration_delay) * 1000);
        let id = lb.id.clone();
        for pool in pools_mut(lb) {
            let mine: Vec<(Backend, u64)> = saved
                .iter()
                .filter(|s| s.lb == id && s.pool == pool.id)
                .filter(|s| crate::network::refused_class(s.ip, allowed).is_none())
                .map(|s| (s.backend(), s.until_ms.min(cap)))
                .collect();
            pool.draining = may_drain_in(pool, mine.iter().map(|(b, until)| (b, *until)));
        }
    }
    config
}

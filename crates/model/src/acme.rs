//! Certificates the agent obtains over ACME: which load balancers want one,
//! the config with those already issued filled in, and when one is due for
//! renewal. Pure: the agent keeps the store and the clock.

use std::collections::BTreeMap;

use crate::model::{Acme, Config};

/// Where an issued certificate and its key are, as absolute paths.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issued {
    /// The PEM certificate chain.
    pub certificate_path: String,
    /// The PEM private key.
    pub private_key_path: String,
}

/// Seconds before expiry when renewal starts for long-lived certificates
/// (30 days, as Let's Encrypt advises for its 90-day ones).
pub const RENEW_BEFORE_SECS: i64 = 30 * 86_400;

/// The ACME certificate each load balancer wants, by load-balancer id.
pub fn wanted(config: &Config) -> BTreeMap<String, Acme> {
    config
        .load_balancers
        .iter()
        .filter_map(|lb| {
            let acme = lb.tls.as_ref()?.acme.as_ref()?;
            Some((lb.id.clone(), acme.clone()))
        })
        .collect()
}

/// `config` with each ACME load balancer that has an issued certificate
/// pointing at it. The others keep empty paths: they wait for theirs, and
/// translation leaves their https listener out. A certificate issued for
/// other names than the document now lists is still served until its
/// replacement comes: it covers the names it had.
pub fn overlay(mut config: Config, issued: &BTreeMap<String, Issued>) -> Config {
    for lb in &mut config.load_balancers {
        let Some(tls) = lb.tls.as_mut().filter(|t| t.acme.is_some()) else {
            continue;
        };
        let (cert, key) = match issued.get(&lb.id) {
            Some(i) => (i.certificate_path.clone(), i.private_key_path.clone()),
            None => (String::new(), String::new()),
        };
        tls.certificate_path = cert;
        tls.private_key_path = key;
    }
    config
}

/// When to start renewing a certificate valid from `not_before` to
/// `not_after` (Unix seconds): 30 days before it expires, or when a third of
/// its lifetime is left if that comes later (short-lived certificates).
pub fn renew_at(not_before: i64, not_after: i64) -> i64 {
    let lifetime = not_after.saturating_sub(not_before).max(0);
    let before = RENEW_BEFORE_SECS.min(lifetime / 3);
    not_after.saturating_sub(before)
}

//! What one fetch of the desired state returned, from any source: a raw
//! document per load balancer, or why not. The sources live in the agent;
//! choosing what to serve from this is pure ([`crate::choose`]).

use std::collections::BTreeMap;

use serde_json::Value;

/// Fetching one load balancer (or the whole file) failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum FetchError {
    /// Network trouble, 5xx, 429, a bad body: retrying may help.
    #[error("{0}")]
    Transient(String),
    /// The API refused our key: retrying soon will not help.
    #[error("{0}")]
    Unauthorized(String),
    /// The source says this load balancer does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The API refused the request itself (a 4xx other than a rejected
    /// key, a missing load balancer or 429): asking again soon gets the
    /// same answer.
    #[error("{0}")]
    Denied(String),
    /// The source answered, but what it said cannot become a document
    /// (the public API's rule that cannot be mapped): refused like an
    /// invalid document, with problems in the source's own terms.
    #[error("{} problem(s) in what the api sent", problems.len())]
    Refused {
        /// What the source sent, so the same refusal is reported once.
        raw: Value,
        /// Why.
        problems: Vec<vpsie_lb_model::Problem>,
    },
}

/// What one fetch returned: a raw document per load-balancer id, or why not.
#[derive(Debug, Default)]
pub struct Fetched {
    /// By load-balancer id.
    pub items: BTreeMap<String, Result<Value, FetchError>>,
    /// Problems that belong to no single load balancer (an unreadable file,
    /// an item without a usable id).
    pub unattributed: Vec<String>,
    /// Whether the whole source failed (keep every cached copy).
    pub failed: Option<FetchError>,
    /// The longest wait a server asked for (Retry-After).
    pub retry_after: Option<std::time::Duration>,
    /// For remote sources: whether the API answered at all this time.
    pub reachable: Option<bool>,
    /// Groups of load balancers that could not be fetched, by the prefix
    /// of their ids: every last good one with such an id keeps serving
    /// (the public API gives several per fetch, and which ones is known
    /// only from an answer).
    pub failed_groups: Vec<(String, FetchError)>,
    /// How each document's paths lead back to the source's own, for
    /// documents the source made from something else.
    pub paths: BTreeMap<String, vpsie_lb_model::public::PathMap>,
}

impl Fetched {
    /// Adds a failed item for each id in `known` that a failed group
    /// covers and the fetch did not return, so it keeps its good version.
    pub fn expand_failed_groups<'a>(&mut self, known: impl Iterator<Item = &'a String>) {
        for id in known {
            if let Some((_, e)) = self
                .failed_groups
                .iter()
                .find(|(prefix, _)| id.starts_with(prefix.as_str()))
                && !self.items.contains_key(id)
            {
                self.items.insert(id.clone(), Err(e.clone()));
            }
        }
    }
}

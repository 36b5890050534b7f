//! Where desired state comes from: a local file, or the VPSie API.

use std::collections::BTreeMap;
use std::path::PathBuf;

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

/// Runs `call` for every id, at most [`FETCH_CONCURRENCY`] at once, so one
/// slow answer (up to the 10 s timeout) does not hold back every other.
pub(crate) fn fetch_parallel<T: Send>(
    ids: &[String],
    call: impl Fn(&str) -> Result<T, crate::api::ApiError> + Sync,
) -> Vec<(String, Result<T, crate::api::ApiError>)> {
    let call = &call;
    let mut results = Vec::new();
    for chunk in ids.chunks(FETCH_CONCURRENCY) {
        std::thread::scope(|scope| {
            let handles: Vec<_> = chunk
                .iter()
                .map(|id| (id.clone(), scope.spawn(move || call(id))))
                .collect();
            for (id, h) in handles {
                let r = h.join().unwrap_or_else(|_| {
                    Err(crate::api::ApiError::Body {
                        what: format!("fetching {id}"),
                        reason: "the fetch thread panicked".into(),
                    })
                });
                results.push((id, r));
            }
        });
    }
    results
}

/// The fetch error an API error stands for, noting a Retry-After and
/// whether the API answered at all.
pub(crate) fn classify(
    e: crate::api::ApiError,
    out: &mut Fetched,
    answered: &mut bool,
) -> FetchError {
    if let Some(d) = e.retry_after() {
        out.retry_after = Some(out.retry_after.map_or(d, |o| o.max(d)));
    }
    // Anything but a network failure means the API is there.
    *answered |= !matches!(e, crate::api::ApiError::Network { .. });
    match e {
        crate::api::ApiError::Unauthorized { .. } => FetchError::Unauthorized(e.to_string()),
        e if e.is_not_found() => FetchError::NotFound(e.to_string()),
        e => FetchError::Transient(e.to_string()),
    }
}

/// A source of desired state.
pub trait Source {
    /// Fetches every load balancer this VM should serve.
    fn fetch(&mut self) -> Fetched;
    /// Whether the source changed since the last fetch, so a pass should run
    /// now instead of at the next interval. Sources that cannot tell say no.
    fn changed(&mut self) -> bool {
        false
    }
}

/// Reads desired state from a file in the load-balancer document format.
pub struct FileSource {
    path: PathBuf,
    /// Modification time and size at the last fetch.
    seen: Option<(std::time::SystemTime, u64)>,
}

impl FileSource {
    /// A source reading `path` on every pass.
    pub fn new(path: PathBuf) -> Self {
        Self { path, seen: None }
    }
}

impl FileSource {
    fn stamp(&self) -> Option<(std::time::SystemTime, u64)> {
        let m = std::fs::metadata(&self.path).ok()?;
        Some((m.modified().ok()?, m.len()))
    }
}

impl Source for FileSource {
    fn changed(&mut self) -> bool {
        self.stamp() != self.seen
    }

    fn fetch(&mut self) -> Fetched {
        self.seen = self.stamp();
        let mut out = Fetched::default();
        let text = match std::fs::read(&self.path) {
            Ok(bytes) if bytes.len() > vpsie_lb_model::MAX_DOCUMENT_BYTES => {
                out.failed = Some(FetchError::Transient(format!(
                    "{}: larger than 10 MiB",
                    self.path.display()
                )));
                return out;
            }
            Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            Err(e) => {
                out.failed = Some(FetchError::Transient(format!(
                    "{}: {e}",
                    self.path.display()
                )));
                return out;
            }
        };
        let doc = match vpsie_lb_model::parse_document(&text) {
            Ok(d) => d,
            Err(rej) => {
                out.failed = Some(FetchError::Transient(format!(
                    "{}: {}",
                    self.path.display(),
                    rej.errors[0]
                )));
                return out;
            }
        };
        let items = match doc {
            Value::Array(items) => items,
            other => vec![other],
        };
        for (i, item) in items.into_iter().enumerate() {
            match item
                .get("id")
                .and_then(Value::as_str)
                .filter(|id| vpsie_lb_model::is_valid_id(id))
            {
                Some(id) if !out.items.contains_key(id) => {
                    out.items.insert(id.to_owned(), Ok(item.clone()));
                }
                Some(id) => out
                    .unattributed
                    .push(format!("[{i}].id: id {id:?} is used twice in the file")),
                None => out.unattributed.push(format!(
                    "[{i}].id: missing or invalid, so this item cannot be applied"
                )),
            }
        }
        out
    }
}

/// Reads each configured load balancer from the VPSie API.
pub struct VpsieSource {
    client: crate::api::ApiClient,
    ids: Vec<String>,
}

impl VpsieSource {
    /// A source for `ids` through `client`.
    pub fn new(client: crate::api::ApiClient, ids: Vec<String>) -> Self {
        Self { client, ids }
    }
}

/// Most API calls in flight at once during a fetch.
const FETCH_CONCURRENCY: usize = 8;

impl Source for VpsieSource {
    fn fetch(&mut self) -> Fetched {
        let client = &self.client;
        let results = fetch_parallel(&self.ids, |id| client.get_loadbalancer(id));
        let mut out = Fetched::default();
        let mut answered = false;
        for (id, result) in results {
            let result = result.map_err(|e| classify(e, &mut out, &mut answered));
            answered |= result.is_ok();
            out.items.insert(id, result);
        }
        out.reachable = Some(answered);
        out
    }
}

//! Where desired state comes from: a local file, or the VPSie API.

use std::path::PathBuf;

use serde_json::Value;

use vpsie_lb_core::class::Class;
pub use vpsie_lb_core::fetched::{FetchError, Fetched};

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
        e if e.class() == Class::Refused => FetchError::Denied(e.to_string()),
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
            // Owned, so the item moves into the result: a copy of 1,000
            // documents is 7 MB at the pass's peak.
            let id = item
                .get("id")
                .and_then(Value::as_str)
                .filter(|id| vpsie_lb_model::is_valid_id(id))
                .map(str::to_owned);
            match id {
                Some(id) if !out.items.contains_key(&id) => {
                    out.items.insert(id, Ok(item));
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::ApiError;

    fn status(status: u16) -> ApiError {
        ApiError::Status {
            what: "GET /lb".into(),
            status,
            body: String::new(),
            retry_after: None,
        }
    }

    #[test]
    fn regression_a_400_on_fetch_was_classified_as_transient() {
        let classified = |e: ApiError| {
            let mut answered = false;
            let out = classify(e, &mut Fetched::default(), &mut answered);
            assert!(answered, "the api answered");
            out
        };
        assert!(matches!(classified(status(400)), FetchError::Denied(_)));
        assert!(matches!(classified(status(422)), FetchError::Denied(_)));
        assert!(matches!(classified(status(404)), FetchError::NotFound(_)));
        assert!(matches!(classified(status(429)), FetchError::Transient(_)));
        assert!(matches!(classified(status(503)), FetchError::Transient(_)));
        let key = ApiError::Unauthorized {
            what: "GET /lb".into(),
            status: 401,
            body: String::new(),
        };
        assert!(matches!(classified(key), FetchError::Unauthorized(_)));
    }
}

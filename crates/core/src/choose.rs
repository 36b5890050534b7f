//! Choosing what to serve from one fetch: per load balancer the fetched
//! document if it is valid, else its last good one; then conflicts between
//! load balancers (the same port) are resolved against the side that
//! changed. Pure: the reconciler reports what comes out.

use std::collections::BTreeMap;

use serde_json::Value;
use vpsie_lb_model::{Problem, ValidateOptions, validate};

use crate::fetched::FetchError;

/// What one fetch leads to.
#[derive(Debug, Default, PartialEq)]
pub struct Choice {
    /// The documents to serve, by load-balancer id.
    pub candidate: BTreeMap<String, Value>,
    /// Load balancers whose fetched document was valid on its own.
    pub valid: Vec<String>,
    /// Documents refused, each with its id and why: invalid on its own, or
    /// losing a conflict with another load balancer.
    pub refused: Vec<(String, Value, Vec<Problem>)>,
    /// Load balancers that could not be fetched, with why; each keeps its
    /// last good version.
    pub unfetched: Vec<(String, String)>,
    /// The candidate, validated as a whole (the last check of the conflict
    /// rounds), so the pass need not validate it a third time.
    pub config: Option<vpsie_lb_model::Config>,
}

/// Chooses from `items` (fetched per id) against `good` (the last good
/// document per id).
pub fn choose(
    items: BTreeMap<String, Result<Value, FetchError>>,
    good: &BTreeMap<String, Value>,
    opts: &ValidateOptions,
) -> Choice {
    let mut out = Choice::default();
    for (id, item) in items {
        match item {
            Ok(doc) => match validate(&doc, opts) {
                Ok(_) => {
                    out.valid.push(id.clone());
                    out.candidate.insert(id, doc);
                }
                Err(rej) => {
                    if let Some(g) = good.get(&id) {
                        out.candidate.insert(id.clone(), g.clone());
                    }
                    out.refused.push((id, doc, rej.errors));
                }
            },
            Err(e) => {
                if let Some(g) = good.get(&id) {
                    out.candidate.insert(id.clone(), g.clone());
                }
                match e {
                    FetchError::Refused { raw, problems } => out.refused.push((id, raw, problems)),
                    e => out.unfetched.push((id, e.to_string())),
                }
            }
        }
    }
    resolve_conflicts(&mut out, good, opts);
    out
}

/// The changed side of each conflict goes back to its last good version
/// (or out, without one), one round per conflict.
fn resolve_conflicts(out: &mut Choice, good: &BTreeMap<String, Value>, opts: &ValidateOptions) {
    for _ in 0..=out.candidate.len() {
        // Unchanged load balancers first: the validator blames the later
        // of two conflicting items, and the one that changed must lose.
        let mut ids: Vec<String> = out.candidate.keys().cloned().collect();
        ids.sort_by_key(|id| good.get(id) != out.candidate.get(id));
        let doc = Value::Array(ids.iter().map(|id| out.candidate[id].clone()).collect());
        let rej = match validate(&doc, opts) {
            Ok(v) => {
                out.config = Some(v.config);
                return;
            }
            Err(rej) => rej,
        };
        let mut culprits: BTreeMap<String, Vec<Problem>> = BTreeMap::new();
        for p in rej.errors {
            if let Some(id) = p.path.top_index().and_then(|i| ids.get(i)) {
                culprits.entry(id.clone()).or_default().push(p);
            }
        }
        if culprits.is_empty() {
            return;
        }
        for (id, problems) in culprits {
            let Some(doc) = out.candidate.get(&id).cloned() else {
                continue;
            };
            match good.get(&id) {
                Some(g) if *g != doc => {
                    out.candidate.insert(id.clone(), g.clone());
                }
                _ => {
                    out.candidate.remove(&id);
                }
            }
            out.valid.retain(|v| *v != id);
            out.refused.push((id, doc, problems));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn lb(id: &str, port: u16, backend_port: i64) -> Value {
        json!({"id": id, "name": id, "protocol": "http", "port": port, "algorithm": "round_robin",
               "backends": [{"id": "b", "address": "10.0.0.1", "port": backend_port}]})
    }

    fn docs(items: &[(&str, Value)]) -> BTreeMap<String, Value> {
        items
            .iter()
            .map(|(id, v)| ((*id).to_owned(), v.clone()))
            .collect()
    }

    fn fetched(
        items: &[(&str, Result<Value, FetchError>)],
    ) -> BTreeMap<String, Result<Value, FetchError>> {
        items
            .iter()
            .map(|(id, r)| ((*id).to_owned(), r.clone()))
            .collect()
    }

    /// (what was fetched, what was good) -> (served, refused ids, unfetched ids).
    fn check(
        items: &[(&str, Result<Value, FetchError>)],
        good: &[(&str, Value)],
        served: &[(&str, Value)],
        refused: &[&str],
        unfetched: &[&str],
    ) {
        let c = choose(fetched(items), &docs(good), &ValidateOptions::default());
        assert_eq!(c.candidate, docs(served), "served");
        let got: Vec<&str> = c.refused.iter().map(|(id, _, _)| id.as_str()).collect();
        assert_eq!(got, refused, "refused");
        let got: Vec<&str> = c.unfetched.iter().map(|(id, _)| id.as_str()).collect();
        assert_eq!(got, unfetched, "unfetched");
    }

    #[test]
    fn valid_documents_are_served() {
        check(
            &[("a", Ok(lb("a", 80, 1)))],
            &[],
            &[("a", lb("a", 80, 1))],
            &[],
            &[],
        );
    }

    #[test]
    fn an_invalid_document_falls_back_to_its_good_version_or_is_not_served() {
        check(
            &[
                ("a", Ok(lb("a", 80, 70_000))),
                ("b", Ok(lb("b", 81, 70_000))),
            ],
            &[("a", lb("a", 80, 1))],
            &[("a", lb("a", 80, 1))],
            &["a", "b"],
            &[],
        );
    }

    #[test]
    fn a_failed_fetch_keeps_the_good_version() {
        let down = Err(FetchError::Transient("timeout".into()));
        check(
            &[("a", down.clone()), ("b", down)],
            &[("a", lb("a", 80, 1))],
            &[("a", lb("a", 80, 1))],
            &[],
            &["a", "b"],
        );
    }

    #[test]
    fn in_a_port_conflict_the_side_that_changed_loses() {
        // b moves onto a's port: b keeps its old version, a is untouched.
        check(
            &[("a", Ok(lb("a", 80, 1))), ("b", Ok(lb("b", 80, 2)))],
            &[("a", lb("a", 80, 1)), ("b", lb("b", 81, 2))],
            &[("a", lb("a", 80, 1)), ("b", lb("b", 81, 2))],
            &["b"],
            &[],
        );
        // A new load balancer on a taken port is not served at all.
        check(
            &[("a", Ok(lb("a", 80, 1))), ("c", Ok(lb("c", 80, 3)))],
            &[("a", lb("a", 80, 1))],
            &[("a", lb("a", 80, 1))],
            &["c"],
            &[],
        );
    }

    #[test]
    fn a_conflict_loser_is_not_listed_as_valid() {
        let c = choose(
            fetched(&[("a", Ok(lb("a", 80, 1))), ("c", Ok(lb("c", 80, 3)))]),
            &docs(&[("a", lb("a", 80, 1))]),
            &ValidateOptions::default(),
        );
        assert_eq!(c.valid, vec!["a"]);
        assert!(
            c.refused[0].2[0]
                .message
                .contains("port 80 is already used"),
            "{:?}",
            c.refused
        );
    }
}

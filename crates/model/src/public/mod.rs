//! VPSie's public load-balancer API (`GET /api/v1/lb/{identifier}`) mapped
//! onto load-balancer documents: one document per rule (listener), each
//! domain of an http rule a host route to its own pool. Pure, like the rest
//! of this crate: the caller fetches the answer, the DNS zones and checks
//! the certificate files; docs/vpsie-api-mapping.md has the table.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::problem::{FieldPath, Problem};

mod domain;
mod read;
mod rule;

pub use domain::host_name;

/// What the mapping needs besides the answer.
#[derive(Debug, Clone)]
pub struct MapEnv {
    /// DNS zones of the account, by their identifier (`domainId`), from
    /// `GET /apps/v2/domains`: used when a domain's name is a single label.
    pub zones: BTreeMap<String, String>,
    /// Where certificates live: `<dir>/<host>/fullchain.pem` and `privkey.pem`.
    pub certificate_dir: String,
    /// The plain-HTTP port `redirectHTTP` redirects from (80).
    pub redirect_port: u16,
}

impl Default for MapEnv {
    fn default() -> Self {
        Self {
            zones: BTreeMap::new(),
            certificate_dir: "/etc/vpsie-lb/certs".into(),
            redirect_port: 80,
        }
    }
}

/// One load balancer of the API, mapped.
#[derive(Debug, Clone, Default)]
pub struct MappedLb {
    /// One entry per rule that has an id.
    pub rules: Vec<MappedRule>,
    /// Problems that belong to no rule (the answer's shape, a rule without
    /// a `ruleId`); paths in the API's terms.
    pub problems: Vec<Problem>,
}

/// One rule (listener), mapped onto a load-balancer document.
#[derive(Debug, Clone)]
pub struct MappedRule {
    /// The document's id, from the identifier and the rule id.
    pub id: String,
    /// The rule as the API sent it.
    pub raw: Value,
    /// The document, or every problem that kept it from being made.
    pub doc: Result<Value, Vec<Problem>>,
    /// Certificate files the document refers to; the caller checks them.
    pub certificates: Vec<NeededCertificate>,
    /// How the document's paths lead back to the API's.
    pub paths: PathMap,
}

/// A certificate a rule needs, in the certbot layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NeededCertificate {
    /// The host name it is for.
    pub host: String,
    /// `<dir>/<host>/fullchain.pem`.
    pub certificate_path: String,
    /// `<dir>/<host>/privkey.pem`.
    pub private_key_path: String,
    /// The domain that asks for it, in the API's terms.
    pub at: FieldPath,
}

/// Maps the `data` of `GET /api/v1/lb/{identifier}`.
pub fn map_load_balancer(identifier: &str, data: &Value, env: &MapEnv) -> MappedLb {
    rule::map_all(identifier, data, env)
}

/// Whether any domain of the answer names its host by a single label, so
/// the DNS zones must be fetched to build its name.
pub fn needs_zones(data: &Value) -> bool {
    let Some(rules) = data.get("rules").and_then(Value::as_array) else {
        return false;
    };
    rules
        .iter()
        .filter_map(|r| r.get("domains").and_then(Value::as_array))
        .flatten()
        .any(|d| {
            let name = d.get("domainName").and_then(Value::as_str).unwrap_or("");
            !name.trim().trim_end_matches('.').contains('.')
        })
}

/// Longest identifier or rule id used as it is in a document id; longer
/// ones (or ones with other characters) are replaced by a hash.
const MAX_IDENTIFIER_TAG: usize = 36;
const MAX_RULE_TAG: usize = 27;

/// The id of the document for rule `rule_id` of load balancer
/// `identifier`: `<identifier>_<ruleId>` when both are short and plain,
/// else with a hash standing in for the long part. Always a valid id, and
/// stable for the same pair.
pub fn rule_document_id(identifier: &str, rule_id: &str) -> String {
    format!("{}{}", group_prefix(identifier), tag(rule_id, MAX_RULE_TAG))
}

/// What every document id of load balancer `identifier` starts with, and
/// no document id of another identifier does (tags never contain `_`).
pub fn group_prefix(identifier: &str) -> String {
    format!("{}_", tag(identifier, MAX_IDENTIFIER_TAG))
}

fn tag(s: &str, max: usize) -> String {
    let plain = s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if plain && !s.is_empty() && s.len() <= max {
        s.to_owned()
    } else {
        format!("h{:016x}", fnv1a(s.as_bytes()))
    }
}

/// FNV-1a, 64 bits: stable across builds and platforms, unlike std's hasher.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Leads a path of a mapped document back to the API field it came from,
/// so an operator can find the problem in the VPSie console.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PathMap {
    /// The rule, for paths no entry covers.
    rule: FieldPath,
    /// (document path, API path), longest document path first.
    entries: Vec<(String, FieldPath)>,
}

impl PathMap {
    fn new(rule: &FieldPath) -> Self {
        Self {
            rule: rule.clone(),
            entries: Vec::new(),
        }
    }

    fn add(&mut self, doc: &FieldPath, api: &FieldPath) {
        self.entries.push((doc.as_str().to_owned(), api.clone()));
    }

    fn sort(&mut self) {
        self.entries.sort_by_key(|e| std::cmp::Reverse(e.0.len()));
    }

    /// `p` with its path in the API's terms. A problem found when the
    /// document sat in an array (`[3].port`) is taken without the index.
    pub fn translate(&self, p: &Problem) -> Problem {
        let path = p.path.as_str();
        let path = match path.strip_prefix('[').and_then(|r| r.split_once(']')) {
            Some((i, rest)) if i.parse::<usize>().is_ok() => rest.trim_start_matches('.'),
            _ => path,
        };
        let found = self.entries.iter().find(|(doc, _)| {
            path.strip_prefix(doc.as_str())
                .is_some_and(|rest| rest.is_empty() || rest.starts_with(['.', '[']))
        });
        match found {
            Some((doc, api)) => Problem {
                path: api.join_raw(&path[doc.len()..]),
                message: p.message.clone(),
            },
            None => Problem::new(
                &self.rule,
                format!("in the mapped document at {path}: {}", p.message),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn document_ids_are_stable_valid_and_grouped_by_identifier() {
        let uuid = "8152952c-87ca-11eb-9353-0242ac110004";
        let id = rule_document_id(uuid, "r1");
        assert_eq!(id, format!("{uuid}_r1"));
        let long = rule_document_id(uuid, uuid);
        assert!(crate::is_valid_id(&long) && long.len() <= 64, "{long}");
        assert_eq!(long, rule_document_id(uuid, uuid), "stable");
        assert!(long.starts_with(&group_prefix(uuid)));
        assert_ne!(
            long,
            rule_document_id(uuid, "8152952c-87ca-11eb-9353-0242ac110005")
        );
        let odd = rule_document_id("lb/1 x", "rule_1");
        assert!(crate::is_valid_id(&odd), "{odd}");
        assert!(!odd.starts_with(&group_prefix("lb")));
        // No identifier's prefix is a prefix of another's ids.
        assert!(!rule_document_id("ab", "x").starts_with(&group_prefix("a")));
    }
}

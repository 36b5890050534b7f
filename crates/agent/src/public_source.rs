//! Desired state from VPSie's public load-balancer API: each configured
//! identifier is fetched, and each of its rules mapped (purely, in the
//! model crate) onto a document. Only the IO lives here: the HTTP calls,
//! the DNS zones when a domain needs one, and the certificate files.

use std::path::{Path, PathBuf};

use serde_json::Value;
use vpsie_lb_model::Problem;
use vpsie_lb_model::public::{self, MapEnv, MappedRule};

use crate::api::ApiClient;
use crate::source::{FetchError, Fetched, Source, classify, fetch_parallel};

/// Reads each configured load balancer from the public API.
pub struct PublicSource {
    client: ApiClient,
    identifiers: Vec<String>,
    certificate_dir: PathBuf,
    redirect_port: u16,
}

impl PublicSource {
    /// A source for `identifiers` through `client`, with certificates
    /// under `certificate_dir` and `redirectHTTP` answered on `redirect_port`.
    pub fn new(
        client: ApiClient,
        identifiers: Vec<String>,
        certificate_dir: PathBuf,
        redirect_port: u16,
    ) -> Self {
        Self {
            client,
            identifiers,
            certificate_dir,
            redirect_port,
        }
    }

    /// The zones, when some answer names a host by a single label; a
    /// failure leaves them empty, and those domains say why.
    fn zones(&self, answers: &[(String, Result<Value, crate::api::ApiError>)]) -> MapEnv {
        let mut env = MapEnv {
            certificate_dir: self.certificate_dir.display().to_string(),
            redirect_port: self.redirect_port,
            ..MapEnv::default()
        };
        let needed = answers
            .iter()
            .any(|(_, r)| r.as_ref().is_ok_and(public::needs_zones));
        if needed {
            match self.client.get_zones() {
                Ok(zones) => env.zones = zones,
                Err(e) => {
                    tracing::warn!(error = %e, "could not read the dns zones; domains named by a single label cannot be mapped")
                }
            }
        }
        env
    }
}

impl Source for PublicSource {
    fn fetch(&mut self) -> Fetched {
        let client = &self.client;
        let answers = fetch_parallel(&self.identifiers, |id| client.get_public_lb(id));
        let env = self.zones(&answers);
        let mut out = Fetched::default();
        let mut answered = false;
        for (identifier, answer) in answers {
            let prefix = public::group_prefix(&identifier);
            let data = match answer {
                Ok(data) => data,
                Err(e) => {
                    let e = classify(e, &mut out, &mut answered);
                    out.failed_groups.push((prefix, e));
                    continue;
                }
            };
            answered = true;
            let mapped = public::map_load_balancer(&identifier, &data, &env);
            let whole: Vec<String> = mapped
                .problems
                .iter()
                .map(|p| format!("load balancer {identifier}: {p}"))
                .collect();
            if mapped.rules.is_empty() && !whole.is_empty() {
                // Nothing usable came: keep what this identifier served.
                out.failed_groups
                    .push((prefix, FetchError::Transient(whole.join("; "))));
                continue;
            }
            out.unattributed.extend(whole);
            for rule in mapped.rules {
                let (id, paths) = (rule.id.clone(), rule.paths.clone());
                let doc = rule_document(rule);
                // Refusals made here already speak the api's terms; only
                // the validator's, on a mapped document, need leading back.
                if doc.is_ok() {
                    out.paths.insert(id.clone(), paths);
                }
                out.items.insert(id, doc);
            }
        }
        out.reachable = Some(answered);
        out
    }
}

/// The rule's document, or every problem with it, the missing
/// certificate files included.
fn rule_document(rule: MappedRule) -> Result<Value, FetchError> {
    let mut problems = match rule.doc {
        Ok(_) => Vec::new(),
        Err(ref p) => p.clone(),
    };
    for c in &rule.certificates {
        for path in [&c.certificate_path, &c.private_key_path] {
            if let Err(why) = readable(Path::new(path)) {
                problems.push(Problem::new(
                    &c.at,
                    format!("no certificate for {}: {path}: {why}", c.host),
                ));
            }
        }
    }
    match rule.doc {
        Ok(doc) if problems.is_empty() => Ok(doc),
        _ => Err(FetchError::Refused {
            raw: rule.raw,
            problems,
        }),
    }
}

/// Whether the agent can read `path` (Envoy reads it as a member of the
/// same group, which the packaging arranges).
fn readable(path: &Path) -> Result<(), String> {
    std::fs::File::open(path)
        .map(|_| ())
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => "not found".to_owned(),
            _ => e.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn https_rule(dir: &Path) -> MappedRule {
        let data = json!({"identifier": "lb-1", "rules": [{"ruleId": "r1", "scheme": "https", "frontPort": 443,
            "domains": [{"domainName": "www.example.com", "backPort": 8080,
                         "backends": [{"ip": "10.0.0.1", "identifier": "b1"}]}]}]});
        let env = MapEnv {
            certificate_dir: dir.display().to_string(),
            ..MapEnv::default()
        };
        public::map_load_balancer("lb-1", &data, &env)
            .rules
            .remove(0)
    }

    #[test]
    fn a_host_without_certificate_files_refuses_its_rule_by_its_api_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let Err(FetchError::Refused { problems, .. }) = rule_document(https_rule(dir.path()))
        else {
            panic!("refused without its certificate");
        };
        let lines: Vec<String> = problems.iter().map(ToString::to_string).collect();
        let at = dir.path().join("www.example.com");
        assert_eq!(
            lines,
            [
                format!(
                    "rules[0].domains[0]: no certificate for www.example.com: {}/fullchain.pem: not found",
                    at.display()
                ),
                format!(
                    "rules[0].domains[0]: no certificate for www.example.com: {}/privkey.pem: not found",
                    at.display()
                ),
            ]
        );
        std::fs::create_dir_all(&at).expect("dir");
        std::fs::write(at.join("fullchain.pem"), "x").expect("cert");
        std::fs::write(at.join("privkey.pem"), "x").expect("key");
        let doc = rule_document(https_rule(dir.path())).expect("served once both files exist");
        assert_eq!(
            doc["tls_config"]["certificate_path"],
            json!(format!("{}/fullchain.pem", at.display()))
        );
    }

    #[test]
    fn a_failed_identifier_keeps_every_rule_it_served() {
        let mut fetched = Fetched::default();
        let prefix = public::group_prefix("lb-1");
        fetched
            .failed_groups
            .push((prefix.clone(), FetchError::Transient("down".into())));
        fetched.items.insert(format!("{prefix}new"), Ok(json!({})));
        let good = [
            format!("{prefix}r1"),
            format!("{prefix}new"),
            "lb-10_r1".to_owned(),
        ];
        fetched.expand_failed_groups(good.iter());
        let failed: Vec<&String> = fetched
            .items
            .iter()
            .filter(|(_, r)| r.is_err())
            .map(|(id, _)| id)
            .collect();
        assert_eq!(
            failed,
            [&format!("{prefix}r1")],
            "only lb-1's, and not one it just fetched"
        );
    }
}

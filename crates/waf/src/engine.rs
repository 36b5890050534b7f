//! ModSecurity with the OWASP Core Rule Set: one compiled rule set per
//! distinct policy (mode, paranoia level, exclusions), shared by every load
//! balancer that has it, and one transaction per request.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use modsecurity::{ModSecurity, Rules};

use crate::config::{Mode, Policy};

/// Where Debian's `modsecurity-crs` puts the rules.
pub const DEFAULT_CRS_DIR: &str = "/usr/share/modsecurity-crs";
/// Where Debian puts the rule set's setup (default actions, anomaly scoring).
pub const DEFAULT_CRS_SETUP: &str = "/etc/modsecurity/crs/crs-setup.conf";
/// Most request body bytes inspected; Envoy sends no more (ext_authz's
/// `max_request_bytes`), and a longer body is inspected up to here.
pub const MAX_BODY_BYTES: usize = 128 * 1024;

/// What the service adds to the Core Rule Set, in ModSecurity's local-use
/// id range (1-99,999), before the CRS loads:
/// - HTTP/3 is an allowed version, as HTTP/2 is (Envoy serves it, and our
///   own `alt-svc` moves browsers to it); the CRS's list stops at HTTP/2.
/// - JSON and XML bodies go through ModSecurity's own parsers, so the rules
///   see each value as an argument, as they see a form's. Without these,
///   an attack in a JSON or XML body was never looked at.
/// - A JSON or XML body that does not parse is refused (in `block`;
///   reported in `detect`): an attacker must not choose to be unparsed.
///   That includes one cut at the inspection limit, so padding cannot hide
///   what follows it. Multipart is not held to this: an upload past the
///   limit is inspected up to it, as before.
const OUR_RULES: &str = "\
SecAction \"id:10001,phase:1,nolog,pass,t:none,setvar:'tx.allowed_http_versions=HTTP/1.0 HTTP/1.1 HTTP/2 HTTP/2.0 HTTP/3 HTTP/3.0'\"
SecRule REQUEST_HEADERS:Content-Type \"@rx ^application/(?:[a-z0-9.+-]+\\+)?json(?:;|\\s|$)\" \"id:10002,phase:1,nolog,pass,t:none,t:lowercase,ctl:requestBodyProcessor=JSON\"
SecRule REQUEST_HEADERS:Content-Type \"@rx ^(?:application|text)/(?:[a-z0-9.+-]+\\+)?xml(?:;|\\s|$)\" \"id:10003,phase:1,nolog,pass,t:none,t:lowercase,ctl:requestBodyProcessor=XML\"
SecRule REQBODY_PROCESSOR \"@rx ^(?:JSON|XML)$\" \"id:10004,phase:2,log,deny,status:400,t:none,msg:'the request body does not parse as its content type says',chain\"
SecRule REQBODY_ERROR \"!@eq 0\" \"t:none\"
";

/// One request as Envoy describes it.
#[derive(Debug, Clone, Default)]
pub struct Request {
    /// The client's address and port (the TCP peer).
    pub client: (String, u16),
    /// `GET`, `POST`, ...
    pub method: String,
    /// The path with its query string.
    pub uri: String,
    /// `1.1`, `2`.
    pub http_version: String,
    /// Header names and values, as received.
    pub headers: Vec<(String, String)>,
    /// The body, at most [`MAX_BODY_BYTES`].
    pub body: Vec<u8>,
}

/// What the rule set says of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing matched.
    Pass,
    /// Rules matched, and the policy lets the request through (detect).
    Detected(Vec<u32>),
    /// The request must be refused with `status`; the rules that matched.
    Blocked {
        /// What ModSecurity asked for (403 with the CRS).
        status: u16,
        /// Every rule id that matched, sorted.
        rules: Vec<u32>,
    },
}

/// The engine: one ModSecurity instance and the compiled rule sets.
pub struct Engine {
    ms: ModSecurity,
    crs_dir: PathBuf,
    crs_setup: PathBuf,
    sets: Mutex<HashMap<Policy, Arc<Rules>>>,
}

impl Engine {
    /// An engine loading the rule set from `crs_dir` with `crs_setup`.
    pub fn new(crs_dir: &Path, crs_setup: &Path) -> Self {
        Self {
            ms: ModSecurity::builder().with_log_callbacks().build(),
            crs_dir: crs_dir.to_owned(),
            crs_setup: crs_setup.to_owned(),
            sets: Mutex::new(HashMap::new()),
        }
    }

    /// The rule set text for `policy`.
    pub fn rules_text(&self, policy: &Policy) -> String {
        let engine = match policy.mode {
            Mode::Block => "On",
            Mode::Detect => "DetectionOnly",
            Mode::Off => "Off",
        };
        let mut text = format!(
            "SecRuleEngine {engine}\n\
             SecRequestBodyAccess On\n\
             SecRequestBodyLimit {MAX_BODY_BYTES}\n\
             SecRequestBodyNoFilesLimit {MAX_BODY_BYTES}\n\
             SecRequestBodyLimitAction ProcessPartial\n\
             SecResponseBodyAccess Off\n\
             SecAuditEngine Off\n\
             Include {setup}\n\
             SecAction \"id:900000,phase:1,nolog,pass,t:none,setvar:tx.paranoia_level={pl}\"\n\
             {ours}\
             Include {crs}/rules/*.conf\n",
            setup = self.crs_setup.display(),
            pl = policy.paranoia_level,
            ours = OUR_RULES,
            crs = self.crs_dir.display(),
        );
        for id in &policy.exclusions {
            text.push_str(&format!("SecRuleRemoveById {id}\n"));
        }
        text
    }

    /// The compiled rule set of `policy`, compiled on first use.
    pub fn rules(&self, policy: &Policy) -> Result<Arc<Rules>, String> {
        let mut sets = self.sets.lock().map_err(|_| "rule sets poisoned")?;
        if let Some(r) = sets.get(policy) {
            return Ok(r.clone());
        }
        let mut rules = Rules::new();
        rules
            .add_plain(&self.rules_text(policy))
            .map_err(|e| format!("loading the core rule set: {e}"))?;
        let rules = Arc::new(rules);
        sets.insert(policy.clone(), rules.clone());
        Ok(rules)
    }

    /// Forgets compiled rule sets no policy in `keep` uses.
    pub fn retain(&self, keep: &[&Policy]) {
        if let Ok(mut sets) = self.sets.lock() {
            sets.retain(|p, _| keep.contains(&p));
        }
    }

    /// Inspects `req` under `policy`.
    pub fn inspect(&self, policy: &Policy, req: &Request) -> Result<Verdict, String> {
        if policy.mode == Mode::Off {
            return Ok(Verdict::Pass);
        }
        let rules = self.rules(policy)?;
        let matched: Arc<Mutex<BTreeSet<u32>>> = Arc::default();
        let sink = matched.clone();
        let mut tx = self
            .ms
            .transaction_builder()
            .with_rules(&rules)
            .with_logging(move |msg| {
                if let (Some(msg), Ok(mut ids)) = (msg, sink.lock()) {
                    ids.extend(rule_ids(msg));
                }
            })
            .build()
            .map_err(|e| format!("transaction: {e}"))?;
        let fail = |what: &str, e: modsecurity::ModSecurityError| format!("{what}: {e}");
        let (client, port) = (&req.client.0, i32::from(req.client.1));
        tx.process_connection(client, port, "127.0.0.1", 80)
            .map_err(|e| fail("connection", e))?;
        tx.process_uri(&req.uri, &req.method, &req.http_version)
            .map_err(|e| fail("uri", e))?;
        for (k, v) in &req.headers {
            tx.add_request_header(k, v).map_err(|e| fail("header", e))?;
        }
        tx.process_request_headers()
            .map_err(|e| fail("request headers", e))?;
        let mut stop = tx.intervention().filter(|i| i.disruptive());
        if stop.is_none() {
            let body = &req.body[..req.body.len().min(MAX_BODY_BYTES)];
            if !body.is_empty() {
                tx.append_request_body(body).map_err(|e| fail("body", e))?;
            }
            tx.process_request_body()
                .map_err(|e| fail("request body", e))?;
            stop = tx.intervention().filter(|i| i.disruptive());
        }
        // The disruptive rule speaks in the intervention, not the callback.
        let status = stop.map(|i| {
            if let (Some(log), Ok(mut ids)) = (i.log(), matched.lock()) {
                ids.extend(rule_ids(log));
            }
            i.status()
        });
        let _ = tx.process_logging();
        drop(tx);
        let rules: Vec<u32> = matched
            .lock()
            .map(|ids| ids.iter().copied().collect())
            .unwrap_or_default();
        Ok(match status {
            Some(s) => Verdict::Blocked {
                status: u16::try_from(s).ok().filter(|s| *s >= 400).unwrap_or(403),
                rules,
            },
            None if rules.is_empty() => Verdict::Pass,
            None => Verdict::Detected(rules),
        })
    }
}

/// The rule ids a ModSecurity log line names (`[id "942100"]`).
pub fn rule_ids(msg: &str) -> Vec<u32> {
    msg.split("[id \"")
        .skip(1)
        .filter_map(|rest| rest.split('"').next()?.parse().ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rule_ids_are_read_from_log_lines() {
        let line = r#"ModSecurity: Warning. detected SQLi [file "x.conf"] [line "1"] [id "942100"] [msg "SQL Injection"] [id "949110"]"#;
        assert_eq!(rule_ids(line), [942100, 949110]);
        assert!(rule_ids("no ids here [id \"x\"]").is_empty());
    }
}

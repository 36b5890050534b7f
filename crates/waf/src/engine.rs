//! ModSecurity with the OWASP Core Rule Set: the CRS compiled once, a
//! small set of its own per distinct policy (mode, paranoia level,
//! exclusions) merged in front of it, and one transaction per request.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::config::{Mode, Oversize, Policy};
use crate::limits;
use crate::msc::{Intervention, ModSecurity, RuleSet, StepFailed, Transaction};
use crate::multipart;

pub use crate::inspected::{MAX_ARGS, MAX_BODY_BYTES, MAX_PARSED_BODY_BYTES};
pub use crate::msc::rule_ids;

/// Where Debian's `modsecurity-crs` puts the rules.
pub const DEFAULT_CRS_DIR: &str = "/usr/share/modsecurity-crs";
/// Where Debian puts the rule set's setup (default actions, anomaly scoring).
pub const DEFAULT_CRS_SETUP: &str = "/etc/modsecurity/crs/crs-setup.conf";

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
///   what follows it.
/// - A multipart body that does not parse, or that a backend could read
///   otherwise than ModSecurity does, is refused the same way (10007):
///   data before the first part or after the last (other than line ends,
///   which the service drops), folded or unfinished part headers, a
///   `Content-Type` without its `;`, line ends that mix CRLF and LF. The
///   service refuses under the same id what ModSecurity does not see
///   (`multipart.rs`). Not refused, though ModSecurity's own strict check
///   counts them: a quoted boundary (RFC 2046 allows it, .NET's client
///   sends it), apostrophes inside an unquoted value (.NET's
///   `filename*=utf-8''name`),
///   and a line that looks like a delimiter but is not (file contents do
///   that). An upload cut at a limit still parses: the service closes it
///   again (`multipart::fit`).
const OUR_RULES: &str = "\
SecAction \"id:10001,phase:1,nolog,pass,t:none,setvar:'tx.allowed_http_versions=HTTP/1.0 HTTP/1.1 HTTP/2 HTTP/2.0 HTTP/3 HTTP/3.0'\"
SecRule REQUEST_HEADERS:Content-Type \"@rx ^application/(?:[a-z0-9.+-]+\\+)?json(?:;|\\s|$)\" \"id:10002,phase:1,nolog,pass,t:none,t:lowercase,ctl:requestBodyProcessor=JSON\"
SecRule REQUEST_HEADERS:Content-Type \"@rx ^(?:application|text)/(?:[a-z0-9.+-]+\\+)?xml(?:;|\\s|$)\" \"id:10003,phase:1,nolog,pass,t:none,t:lowercase,ctl:requestBodyProcessor=XML\"
SecRule REQBODY_PROCESSOR \"@rx ^(?:JSON|XML)$\" \"id:10004,phase:2,log,deny,status:400,t:none,msg:'the request body does not parse as its content type says',chain\"
SecRule REQBODY_ERROR \"!@eq 0\" \"t:none\"
SecRule REQBODY_PROCESSOR \"@streq MULTIPART\" \"id:10007,phase:2,log,deny,status:400,t:none,msg:'the multipart body does not parse or is ambiguous',chain\"
SecRule REQBODY_ERROR|MULTIPART_DATA_BEFORE|MULTIPART_DATA_AFTER|MULTIPART_HEADER_FOLDING|MULTIPART_INVALID_HEADER_FOLDING|MULTIPART_INVALID_PART|MULTIPART_MISSING_SEMICOLON|MULTIPART_CRLF_LF_LINES \"!@eq 0\" \"t:none\"
";

/// A policy's `oversize_body: refuse`: a body past a limit, or more
/// arguments than are inspected, is refused (413) before the CRS's body
/// rules run, so nothing hides past what is inspected. The limit on the
/// whole body Envoy enforces itself; these are the service's own.
fn oversize_refused() -> String {
    format!(
        "SecRule INBOUND_DATA_ERROR \"@eq 1\" \"id:10005,phase:2,log,deny,status:413,t:none,msg:'the request body is past the inspection limit'\"\n\
         SecRule &ARGS \"@gt {MAX_ARGS}\" \"id:10006,phase:2,log,deny,status:413,t:none,msg:'the request has more arguments than are inspected'\"\n"
    )
}

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
    /// Envoy sent only the start of the body (it was past its limit).
    pub partial: bool,
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

/// The engine: one ModSecurity instance, the Core Rule Set compiled once,
/// and per policy a small set merged in front of it.
pub struct Engine {
    ms: ModSecurity,
    crs_dir: PathBuf,
    crs_setup: PathBuf,
    /// The shared rules, compiled on first use.
    crs: Mutex<Option<Arc<RuleSet>>>,
    sets: Mutex<HashMap<Policy, Arc<RuleSet>>>,
    /// The next transaction's id.
    next_id: AtomicU64,
}

impl Engine {
    /// An engine loading the rule set from `crs_dir` with `crs_setup`.
    pub fn new(crs_dir: &Path, crs_setup: &Path) -> Self {
        Self {
            ms: ModSecurity::new(),
            crs_dir: crs_dir.to_owned(),
            crs_setup: crs_setup.to_owned(),
            crs: Mutex::new(None),
            sets: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
        }
    }

    /// What every policy shares: the engine's settings, the CRS's setup,
    /// our rules and the CRS. Nothing in it depends on a policy, so it is
    /// compiled once (about 16 MB) however many load balancers there are.
    fn shared_text(&self) -> String {
        format!(
            "SecRequestBodyAccess On\n\
             SecRequestBodyLimit {MAX_BODY_BYTES}\n\
             SecRequestBodyNoFilesLimit {MAX_PARSED_BODY_BYTES}\n\
             SecRequestBodyLimitAction ProcessPartial\n\
             SecArgumentsLimit {args}\n\
             SecResponseBodyAccess Off\n\
             SecAuditEngine Off\n\
             Include {setup}\n\
             {ours}\
             Include {crs}/rules/*.conf\n",
            setup = self.crs_setup.display(),
            ours = OUR_RULES,
            crs = self.crs_dir.display(),
            // One more than we inspect, so that "too many" can be seen.
            args = MAX_ARGS + 1,
        )
    }

    /// What is `policy`'s own: the engine's mode, the paranoia level (set
    /// before the CRS's first rule reads it) and the removed rules, which
    /// ModSecurity checks as each rule is about to run, not as it loads.
    fn policy_text(policy: &Policy) -> String {
        let engine = match policy.mode {
            Mode::Block => "On",
            Mode::Detect => "DetectionOnly",
            Mode::Off => "Off",
        };
        let mut text = format!(
            "SecRuleEngine {engine}\n\
             SecAction \"id:900000,phase:1,nolog,pass,t:none,setvar:tx.paranoia_level={pl}\"\n",
            pl = policy.paranoia_level,
        );
        if policy.oversize_body == Oversize::Refuse {
            text.push_str(&oversize_refused());
        }
        for id in &policy.exclusions {
            text.push_str(&format!("SecRuleRemoveById {id}\n"));
        }
        text
    }

    /// The whole rule set of `policy` as one file, as a connector that
    /// cannot merge sets (nginx's) would load it.
    pub fn rules_text(&self, policy: &Policy) -> String {
        Self::policy_text(policy) + &self.shared_text()
    }

    /// The shared rules, compiled on first use.
    fn crs(&self) -> Result<Arc<RuleSet>, String> {
        let mut crs = self.crs.lock().map_err(|_| "rule set poisoned")?;
        if let Some(r) = crs.as_ref() {
            return Ok(r.clone());
        }
        let rules = RuleSet::parse(&self.shared_text())
            .map_err(|e| format!("loading the core rule set: {e}"))?;
        Ok(crs.insert(Arc::new(rules)).clone())
    }

    /// The rule set of `policy`, built on first use and kept for the next
    /// (the service's policies come from one file, so they are few).
    pub fn rules(&self, policy: &Policy) -> Result<Arc<RuleSet>, String> {
        if let Some(r) = self
            .sets
            .lock()
            .map_err(|_| "rule sets poisoned")?
            .get(policy)
        {
            return Ok(r.clone());
        }
        let rules = Arc::new(self.compile(policy)?);
        let mut sets = self.sets.lock().map_err(|_| "rule sets poisoned")?;
        Ok(sets.entry(policy.clone()).or_insert(rules).clone())
    }

    /// A rule set of `policy`, not kept: its own part, then the shared
    /// rules (referenced, not copied). Whoever holds it decides how long
    /// it lives (the Envoy filter: as long as a route uses it).
    pub fn compile(&self, policy: &Policy) -> Result<RuleSet, String> {
        let crs = self.crs()?;
        let own = RuleSet::parse(&Self::policy_text(policy))
            .map_err(|e| format!("loading the policy's rules: {e}"))?;
        RuleSet::merge(&[&own, &crs])
    }

    /// Forgets rule sets no policy in `keep` uses.
    pub fn retain(&self, keep: &[&Policy]) {
        if let Ok(mut sets) = self.sets.lock() {
            sets.retain(|p, _| keep.contains(&p));
        }
    }

    /// Inspects `req` under `policy`, with the rule set this engine keeps
    /// for it.
    pub fn inspect(&self, policy: &Policy, req: &Request) -> Result<Verdict, String> {
        self.inspect_with(policy, || self.rules(policy), req)
    }

    /// Inspects `req` under `policy` with the rule set `rules` gives, asked
    /// for only when a rule is to run (a policy that is off, or a body
    /// refused for its size, needs none).
    pub fn inspect_with(
        &self,
        policy: &Policy,
        rules: impl FnOnce() -> Result<Arc<RuleSet>, String>,
        req: &Request,
    ) -> Result<Verdict, String> {
        if policy.mode == Mode::Off {
            return Ok(Verdict::Pass);
        }
        let content_type = req
            .headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("content-type"))
            .map(|(_, v)| v.as_str());
        // Past a limit, a refusing policy refuses before any rule runs (and
        // a detecting one says so); otherwise the start within the limits
        // is what is inspected. A multipart body a backend could read
        // otherwise is refused (400) whatever the limits.
        let judged = limits::judge(content_type, &req.body, req.partial);
        let refused = judged
            .excess
            .filter(|_| policy.oversize_body == Oversize::Refuse)
            .map(limits::Excess::rule);
        let ambiguous = judged.ambiguous.then_some(multipart::AMBIGUOUS);
        if policy.mode == Mode::Block {
            for (rule, status) in [(refused, 413), (ambiguous, 400)] {
                if let Some(rule) = rule {
                    return Ok(Verdict::Blocked {
                        status,
                        rules: vec![rule],
                    });
                }
            }
        }
        let body = judged.body;
        let rules = rules()?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed).to_string();
        let mut tx = Transaction::new(&self.ms, &rules, &id).map_err(|e| e.to_string())?;
        let stop = run(&mut tx, req, &body).map_err(|e| e.to_string())?;
        let _ = tx.process_logging();
        // The disruptive rule speaks in the intervention, not the callback.
        let mut rules: Vec<u32> = tx.matched().to_vec();
        rules.extend(refused);
        rules.extend(ambiguous);
        if let Some(log) = stop.as_ref().and_then(|i| i.log.as_deref()) {
            rules.extend(rule_ids(log));
        }
        rules.sort_unstable();
        rules.dedup();
        Ok(match stop {
            Some(i) => Verdict::Blocked {
                status: u16::try_from(i.status)
                    .ok()
                    .filter(|s| *s >= 400)
                    .unwrap_or(403),
                rules,
            },
            None if rules.is_empty() => Verdict::Pass,
            None => Verdict::Detected(rules),
        })
    }
}

/// Feeds `req` through the request phases; the disruptive action, if a
/// rule took one (the body is not read after the headers were refused).
fn run(
    tx: &mut Transaction<'_>,
    req: &Request,
    body: &[u8],
) -> Result<Option<Intervention>, StepFailed> {
    tx.connection(&req.client.0, req.client.1, "127.0.0.1", 80)?;
    tx.uri(&req.uri, &req.method, &req.http_version)?;
    for (k, v) in &req.headers {
        tx.header(k.as_bytes(), v.as_bytes())?;
    }
    tx.process_headers()?;
    if let Some(stop) = tx.intervention() {
        return Ok(Some(stop));
    }
    let body = &body[..body.len().min(MAX_BODY_BYTES)];
    if !body.is_empty() {
        tx.body(body)?;
    }
    tx.process_body()?;
    Ok(tx.intervention())
}

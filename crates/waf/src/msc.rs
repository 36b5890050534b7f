//! A small binding to libmodsecurity's C API (through `modsecurity-sys`):
//! only what the engine uses, plus `msc_rules_merge`, which the
//! `modsecurity` crate does not offer and which lets every policy share one
//! compiled Core Rule Set. Nothing here panics: text from the library is
//! read as bytes and decoded lossily, since its log lines carry what
//! clients sent.
#![allow(unsafe_code)]

use std::ffi::{CStr, CString, c_char, c_int, c_void};
use std::marker::PhantomData;
use std::ptr;

use modsecurity_sys as sys;

unsafe extern "C" {
    /// The C allocator's `free`: libmodsecurity hands out `strdup` copies.
    fn free(p: *mut c_void);
}

/// Takes a string the library allocated, and frees it.
///
/// # Safety
/// `p` is null or a NUL-terminated string from `malloc`, not used again.
unsafe fn take(p: *const c_char) -> Option<String> {
    if p.is_null() {
        return None;
    }
    // SAFETY: the caller promises a live, NUL-terminated string.
    let s = unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned();
    // SAFETY: allocated by the library with malloc, and ours alone now.
    unsafe { free(p as *mut c_void) };
    Some(s)
}

/// A C string for the library: an interior NUL ends the text there, as it
/// would on the C side anyway.
fn c(text: &str) -> CString {
    let bytes = text.as_bytes();
    let end = bytes.iter().position(|b| *b == 0).unwrap_or(bytes.len());
    CString::new(&bytes[..end]).unwrap_or_default()
}

/// The library's instance: its log callback and connector name.
pub struct ModSecurity(*mut sys::ModSecurity);

// SAFETY: the instance is configured once, then only read by transactions,
// which libmodsecurity allows from any thread.
unsafe impl Send for ModSecurity {}
// SAFETY: as above.
unsafe impl Sync for ModSecurity {}

impl ModSecurity {
    /// A new instance whose rule matches reach [`Transaction::matched`].
    pub fn new() -> Self {
        // SAFETY: plain constructors; the callback is a static function.
        unsafe {
            let ms = sys::msc_init();
            sys::msc_set_connector_info(ms, c"vpsie-lb-waf".as_ptr());
            sys::msc_set_log_cb(ms, Some(on_log));
            Self(ms)
        }
    }
}

impl Default for ModSecurity {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for ModSecurity {
    fn drop(&mut self) {
        // SAFETY: ours, and no transaction outlives it (they borrow it).
        unsafe { sys::msc_cleanup(self.0) }
    }
}

/// Called by the library for each rule that logs, with the transaction's
/// match list as `data` and the log line as `msg`.
unsafe extern "C" fn on_log(data: *mut c_void, msg: *const c_void) {
    if data.is_null() || msg.is_null() {
        return;
    }
    // SAFETY: `msg` is the NUL-terminated text of a rule message (the
    // library's default text log property).
    let line = unsafe { CStr::from_ptr(msg as *const c_char) }.to_string_lossy();
    // SAFETY: `data` is the `Vec` a live `Transaction` owns, and the library
    // calls back on the thread that is inside one of its calls.
    let matched = unsafe { &mut *(data as *mut Vec<u32>) };
    matched.extend(rule_ids(&line));
}

/// Held while the library parses or merges rules: its SecLang scanner
/// keeps state in globals, so two parses at once may corrupt each other
/// (once seen as "syntax error, unexpected end of file" on valid policies
/// compiled by parallel tests; not reproduced since). Process-wide
/// because the globals are.
static PARSER: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A compiled rule set, shared by the transactions that use it.
pub struct RuleSet(*mut sys::RulesSet);

// SAFETY: a rule set is not changed once built; libmodsecurity evaluates
// one set from many threads' transactions.
unsafe impl Send for RuleSet {}
// SAFETY: as above.
unsafe impl Sync for RuleSet {}

impl RuleSet {
    /// Compiles `text` (rules and directives, with `Include`s).
    pub fn parse(text: &str) -> Result<Self, String> {
        let set = Self::empty();
        let text = c(text);
        let _parsing = PARSER
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut err: *const c_char = ptr::null();
        // SAFETY: live set and string; the error, if any, is ours to free.
        let n = unsafe { sys::msc_rules_add(set.0, text.as_ptr(), &mut err) };
        // SAFETY: null or the library's strdup.
        let err = unsafe { take(err) };
        if n < 0 {
            return Err(err.unwrap_or_else(|| "rules do not parse".into()));
        }
        Ok(set)
    }

    /// One set with the rules of each of `parts` in order, sharing them
    /// (the library copies pointers, not rules). Settings come from the
    /// first part that has each one, so a small policy part put first
    /// decides the engine's mode over the shared rules.
    pub fn merge(parts: &[&RuleSet]) -> Result<Self, String> {
        let set = Self::empty();
        let _parsing = PARSER
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for part in parts {
            let mut err: *const c_char = ptr::null();
            // SAFETY: both sets are live; `part` is only read.
            let n = unsafe { sys::msc_rules_merge(set.0, part.0, &mut err) };
            // SAFETY: null or the library's strdup.
            let err = unsafe { take(err) };
            if n < 0 {
                return Err(err.unwrap_or_else(|| "rule sets do not merge".into()));
            }
        }
        Ok(set)
    }

    fn empty() -> Self {
        // SAFETY: a plain constructor.
        Self(unsafe { sys::msc_create_rules_set() })
    }
}

impl Drop for RuleSet {
    fn drop(&mut self) {
        // SAFETY: ours; transactions borrow the set, so none is running.
        // Merged sets hold their own references to shared rules.
        unsafe { sys::msc_rules_cleanup(self.0) };
    }
}

/// What a transaction's disruptive rule asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Intervention {
    /// The HTTP status to answer with.
    pub status: i32,
    /// The rule's log line.
    pub log: Option<String>,
}

/// One request's inspection.
pub struct Transaction<'a> {
    raw: *mut sys::Transaction,
    /// Rule ids the log callback reported, in order; owned through a raw
    /// pointer because the library writes to it during our calls.
    matched: *mut Vec<u32>,
    _borrows: PhantomData<(&'a ModSecurity, &'a RuleSet)>,
}

/// A call into the transaction failed; names the step.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("modsecurity refused the {0}")]
pub struct StepFailed(pub &'static str);

fn step(rc: c_int, what: &'static str) -> Result<(), StepFailed> {
    if rc == 1 {
        Ok(())
    } else {
        Err(StepFailed(what))
    }
}

impl<'a> Transaction<'a> {
    /// A transaction of `ms` under `rules`, known as `id` (`UNIQUE_ID`).
    /// Naming it ourselves saves the library seeding a random generator
    /// for every request (`std::random_device` alone was 2.5 % of an
    /// inspection's profile; 497 to 470 us per GET, near the noise).
    pub fn new(ms: &'a ModSecurity, rules: &'a RuleSet, id: &str) -> Result<Self, StepFailed> {
        let matched = Box::into_raw(Box::<Vec<u32>>::default());
        let id = c(id);
        // SAFETY: live instance, set and id (copied by the library, which
        // takes it as `char *` but does not write to it); `matched` stays
        // valid until drop.
        let raw = unsafe {
            sys::msc_new_transaction_with_id(
                ms.0,
                rules.0,
                id.as_ptr() as *mut c_char,
                matched as *mut c_void,
            )
        };
        if raw.is_null() {
            // SAFETY: from Box::into_raw above, never shared.
            drop(unsafe { Box::from_raw(matched) });
            return Err(StepFailed("transaction"));
        }
        Ok(Self {
            raw,
            matched,
            _borrows: PhantomData,
        })
    }

    /// The connection's two ends.
    pub fn connection(
        &mut self,
        client: &str,
        port: u16,
        server: &str,
        sport: u16,
    ) -> Result<(), StepFailed> {
        let (client, server) = (c(client), c(server));
        // SAFETY: live transaction and strings (copied by the library).
        let rc = unsafe {
            sys::msc_process_connection(
                self.raw,
                client.as_ptr(),
                c_int::from(port),
                server.as_ptr(),
                c_int::from(sport),
            )
        };
        step(rc, "connection")
    }

    /// The request line.
    pub fn uri(&mut self, uri: &str, method: &str, version: &str) -> Result<(), StepFailed> {
        let (uri, method, version) = (c(uri), c(method), c(version));
        // SAFETY: live transaction and strings (copied by the library).
        let rc = unsafe {
            sys::msc_process_uri(self.raw, uri.as_ptr(), method.as_ptr(), version.as_ptr())
        };
        step(rc, "uri")
    }

    /// One request header, bytes as received.
    pub fn header(&mut self, name: &[u8], value: &[u8]) -> Result<(), StepFailed> {
        // SAFETY: pointers with their lengths; the library copies them.
        let rc = unsafe {
            sys::msc_add_n_request_header(
                self.raw,
                name.as_ptr(),
                name.len(),
                value.as_ptr(),
                value.len(),
            )
        };
        step(rc, "header")
    }

    /// Runs the header phase (1).
    pub fn process_headers(&mut self) -> Result<(), StepFailed> {
        // SAFETY: live transaction.
        step(
            unsafe { sys::msc_process_request_headers(self.raw) },
            "request headers",
        )
    }

    /// Appends body bytes.
    pub fn body(&mut self, bytes: &[u8]) -> Result<(), StepFailed> {
        // SAFETY: pointer with its length; the library copies it.
        let rc = unsafe { sys::msc_append_request_body(self.raw, bytes.as_ptr(), bytes.len()) };
        step(rc, "body")
    }

    /// Runs the body phase (2).
    pub fn process_body(&mut self) -> Result<(), StepFailed> {
        // SAFETY: live transaction.
        step(
            unsafe { sys::msc_process_request_body(self.raw) },
            "request body",
        )
    }

    /// Runs the logging phase (5).
    pub fn process_logging(&mut self) -> Result<(), StepFailed> {
        // SAFETY: live transaction.
        step(unsafe { sys::msc_process_logging(self.raw) }, "logging")
    }

    /// The disruptive action a rule took, if any.
    pub fn intervention(&mut self) -> Option<Intervention> {
        let mut it = sys::ModSecurityIntervention {
            status: 200,
            pause: 0,
            url: ptr::null_mut(),
            log: ptr::null_mut(),
            disruptive: 0,
        };
        // SAFETY: live transaction; `url` and `log` come back as strdup
        // copies (or null), which `take` frees.
        let rc = unsafe { sys::msc_intervention(self.raw, &mut it) };
        let (_, log) = unsafe { (take(it.url), take(it.log)) };
        (rc != 0 && it.disruptive != 0).then_some(Intervention {
            status: it.status,
            log,
        })
    }

    /// The rule ids reported so far.
    pub fn matched(&self) -> &[u32] {
        // SAFETY: the library writes only during our `&mut self` calls.
        unsafe { &*self.matched }
    }
}

impl Drop for Transaction<'_> {
    fn drop(&mut self) {
        // SAFETY: ours; after cleanup the library calls back no more, so
        // the match list can go.
        unsafe {
            sys::msc_transaction_cleanup(self.raw);
            drop(Box::from_raw(self.matched));
        }
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

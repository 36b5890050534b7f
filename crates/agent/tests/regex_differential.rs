//! Our regular-expression check against Envoy's own RE2: every pattern
//! `check` accepts must be accepted by `envoy --mode validate` (invariant
//! 24). The kept corpus (`regex_corpus.txt`: the forms found to differ, and
//! their neighbours) and a sample of generated patterns are judged by both;
//! the accepted ones go to Envoy in batches, and a refused batch is halved
//! until the pattern Envoy refuses is found.
//!
//! `REGEX_FUZZ_COUNT` (default 4000) and `REGEX_FUZZ_SEED` run a longer or
//! another sample; a pattern found to differ belongs in the corpus.

mod common;

use serde_json::{Value, json};
use vpsie_lb_model::{ValidateOptions, validate};

/// The corpus: one JSON string a line; `#` starts a comment.
fn corpus() -> Vec<String> {
    let text = include_str!("regex_corpus.txt");
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| serde_json::from_str::<String>(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect()
}

/// A small deterministic generator (xorshift64).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[(self.next() % items.len() as u64) as usize]
    }
}

const ATOMS: &[&str] = &[
    "a",
    "/",
    "-",
    ".",
    "x",
    r"\d",
    r"\w",
    r"\s",
    r"\D",
    r"\b",
    r"\B",
    r"\A",
    r"\z",
    r"\_",
    r"\%",
    r"\-",
    r"\/",
    r"\.",
    r"\x41",
    r"\x{41}",
    r"\x{FF}",
    r"\x{100}",
    r"\u0041",
    r"\t",
    r"\n",
    "[a-z]",
    "[^0-9]",
    "[[:alpha:]]",
    "[[:^word:]]",
    r"[\d\s]",
    r"[a\-z]",
    r"\pL",
    r"\p{Greek}",
    r"\p{Lowercase}",
    r"\p{Garay}",
    r"\P{Lu}",
    r"\p{sc=Latin}",
    r"\p{greek}",
    r"\pN",
    r"\p{Any}",
    r"[\p{Nd}x]",
    r"\p{L&}",
    "^",
    "$",
    r"\Q",
    r"\e",
    r"\C",
    r"\pC",
    r"\p{Zs}",
    r"[\x00-\x{FF}]",
    r"[\x{41}-\x{7A}]",
    r"\0",
    r"\1",
    "[]a]",
    "[^]a]",
    r"\v",
];
const REPEATS: &[&str] = &[
    "", "", "", "*", "+", "?", "{2}", "{1,3}", "{2,}", "*?", "+?", "{,3}", "{0}", "??",
];
const GROUPS: &[&str] = &[
    "(", "(?:", "(?i)(?:", "(?i:", "(?P<n>", "(?<m>", "(?s:", "(?U:", "(?m:",
];

/// One generated pattern, `depth` levels of groups at most.
fn pattern(rng: &mut Rng, depth: u32) -> String {
    let mut out = String::new();
    for _ in 0..(1 + rng.next() % 4) {
        let piece = if depth > 0 && rng.next().is_multiple_of(3) {
            let inner = pattern(rng, depth - 1);
            let alt = if rng.next().is_multiple_of(3) {
                format!("|{}", pattern(rng, 0))
            } else {
                String::new()
            };
            format!("{}{inner}{alt})", rng.pick(GROUPS))
        } else {
            rng.pick(ATOMS).to_owned()
        };
        out.push_str(&piece);
        out.push_str(rng.pick(REPEATS));
        // Now and then a second operator straight after the first.
        if rng.next().is_multiple_of(8) {
            out.push_str(rng.pick(REPEATS));
        }
    }
    out
}

/// A load balancer `i` whose routes match `patterns`.
fn lb(i: usize, patterns: &[String]) -> Value {
    let routes: Vec<Value> = patterns
        .iter()
        .enumerate()
        .map(|(r, p)| json!({"id": format!("r{r}"), "path_regex": p, "forward": [{"pool": "default"}]}))
        .collect();
    json!({"id": format!("lb{i}"), "name": "re", "protocol": "http", "port": 10_000 + i,
           "backends": [{"id": "a", "address": "10.0.0.1", "port": 80}], "routes": routes})
}

/// Whether our validation accepts `pattern` as a route's path regex.
fn ours(pattern: &str) -> bool {
    validate(&lb(0, &[pattern.to_owned()]), &ValidateOptions::default()).is_ok()
}

/// Whether Envoy accepts every pattern of `batch` (100 routes a load balancer).
fn envoys(dir: &std::path::Path, batch: &[String]) -> bool {
    let doc = Value::Array(
        batch
            .chunks(100)
            .enumerate()
            .map(|(i, c)| lb(i, c))
            .collect(),
    );
    let input = dir.join("batch.json");
    std::fs::write(&input, serde_json::to_vec(&doc).expect("json")).expect("write batch");
    let out = common::agent(&["check", "--input", input.to_str().expect("utf-8")]);
    match out.status.code() {
        Some(0) => true,
        Some(2) if String::from_utf8_lossy(&out.stdout).contains("envoy rejected") => false,
        other => panic!(
            "check exited {other:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

/// The patterns of `batch` Envoy refuses, found by halving.
fn refused(dir: &std::path::Path, batch: &[String], out: &mut Vec<String>) {
    if batch.is_empty() || envoys(dir, batch) {
        return;
    }
    if let [one] = batch {
        out.push(one.clone());
        return;
    }
    let (a, b) = batch.split_at(batch.len() / 2);
    refused(dir, a, out);
    refused(dir, b, out);
}

#[test]
fn every_pattern_check_accepts_is_accepted_by_envoys_re2() {
    let count: usize = std::env::var("REGEX_FUZZ_COUNT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4000);
    let seed: u64 = std::env::var("REGEX_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x5eed_2026);
    let mut rng = Rng(seed | 1);
    let mut all = corpus();
    let kept = all.len();
    all.extend((0..count).map(|_| pattern(&mut rng, 2)));
    all.sort();
    all.dedup();
    let accepted: Vec<String> = all.iter().filter(|p| ours(p)).cloned().collect();
    eprintln!(
        "{} patterns ({kept} kept, the rest generated from seed {seed:#x}): {} accepted by check",
        all.len(),
        accepted.len()
    );
    // Both verdicts must occur, or the sample says nothing.
    assert!(
        accepted.len() > 100 && accepted.len() < all.len(),
        "{} of {}",
        accepted.len(),
        all.len()
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let mut differ = Vec::new();
    for batch in accepted.chunks(1000) {
        refused(dir.path(), batch, &mut differ);
    }
    assert!(
        differ.is_empty(),
        "check accepts what envoy refuses (add them to regex_corpus.txt once fixed):\n{}",
        differ
            .iter()
            .map(|p| serde_json::to_string(p).expect("json"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

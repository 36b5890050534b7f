//! Replays every saved fuzz input (`fuzz/corpus/<target>/`) through the same
//! entry points the fuzz targets call, on stable: what once crashed a target
//! stays fixed, and `cargo test` stays fast.

use vpsie_lb_agent::fuzzing;

fn replay(target: &str, run: fn(&[u8])) {
    let dir = vpsie_lb_testkit::workspace_root()
        .join("fuzz/corpus")
        .join(target);
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.expect("entry").path();
        run(&std::fs::read(&path).expect("read input"));
        n += 1;
    }
    assert!(n > 0, "{target}: an empty corpus replays nothing");
}

#[test]
fn the_document_corpus_never_panics() {
    replay("document", fuzzing::document);
}

#[test]
fn the_agent_config_corpus_never_panics() {
    replay("agent_config", fuzzing::agent_config);
}

#[test]
fn the_api_response_corpus_never_panics() {
    replay("api_response", fuzzing::api_response);
}

#[test]
fn the_endpoint_request_corpus_never_panics() {
    replay("endpoint_request", fuzzing::endpoint_request);
}

#[test]
fn the_drains_corpus_never_panics() {
    replay("drains", fuzzing::drains);
}

#[test]
fn the_acme_store_corpus_never_panics() {
    replay("acme_store", fuzzing::acme_store);
}

#[test]
fn the_ha_config_corpus_never_panics() {
    replay("ha_config", fuzzing::ha_config);
}

#[test]
fn the_public_answer_corpus_never_panics() {
    replay("public_answer", fuzzing::public_answer);
}

/// The seeds of the newer targets are inputs the parsers accept, so the
/// fuzzer starts from the paths that matter rather than from errors.
#[test]
fn the_seeds_of_the_newer_targets_are_accepted() {
    let seed = |target: &str, name: &str| {
        let path = vpsie_lb_testkit::workspace_root()
            .join("fuzz/corpus")
            .join(target)
            .join(name);
        std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    };
    let drains = vpsie_lb_agent::drain::parse(&seed("drains", "seed-two")).expect("drains");
    assert_eq!(drains.len(), 2);
    for name in ["seed-passive", "seed-active"] {
        let text = fuzzing::ha_config_text(&seed("ha_config", name));
        let config = vpsie_lb_agent::config::Config::parse(&text, name).expect("ha config");
        assert!(config.ha.is_some(), "{name}");
    }
}

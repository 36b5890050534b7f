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

//! Fuzz target `acme_store`: see vpsie_lb_agent::fuzzing::acme_store.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    vpsie_lb_agent::fuzzing::acme_store(data);
});

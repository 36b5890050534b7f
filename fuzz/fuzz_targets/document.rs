//! Fuzz target `document`: see vpsie_lb_agent::fuzzing::document.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    vpsie_lb_agent::fuzzing::document(data);
});

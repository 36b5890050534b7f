//! Fuzz target `drains`: see vpsie_lb_agent::fuzzing::drains.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    vpsie_lb_agent::fuzzing::drains(data);
});

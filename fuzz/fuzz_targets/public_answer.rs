//! Fuzz target `public_answer`: see vpsie_lb_agent::fuzzing::public_answer.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    vpsie_lb_agent::fuzzing::public_answer(data);
});

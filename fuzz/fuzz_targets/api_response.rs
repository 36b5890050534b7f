//! Fuzz target `api_response`: see vpsie_lb_agent::fuzzing::api_response.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    vpsie_lb_agent::fuzzing::api_response(data);
});

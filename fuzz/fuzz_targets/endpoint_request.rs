//! Fuzz target `endpoint_request`: see vpsie_lb_agent::fuzzing::endpoint_request.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    vpsie_lb_agent::fuzzing::endpoint_request(data);
});

//! Fuzz target `ha_config`: see vpsie_lb_agent::fuzzing::ha_config.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    vpsie_lb_agent::fuzzing::ha_config(data);
});

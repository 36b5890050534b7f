//! Fuzz target `agent_config`: see vpsie_lb_agent::fuzzing::agent_config.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    vpsie_lb_agent::fuzzing::agent_config(data);
});

//! The status of the load balancers and of the agent, as `/status`, the
//! table and the reports show it: built in the pure core
//! ([`vpsie_lb_core::status`]) and re-exported here under its old paths.

pub use vpsie_lb_core::status::*;

// What the status tests, written when this module held the code, take from it.
#[cfg(test)]
use std::collections::BTreeMap;

#[cfg(test)]
#[path = "status_tests.rs"]
mod tests;

//! The IO side of vpsie-lb: the command line, the reconcile loop, file
//! writes, the xDS server and the Envoy pre-flight. Everything that touches
//! the world lives in this crate; the model and the translation it calls
//! are pure.

pub mod apply;
pub mod backoff;
pub mod choose;
pub mod commands;
pub mod config;
pub mod controller;
pub mod delivery;
pub mod drain;
pub mod endpoints;
pub mod envoy_admin;
pub mod envoy_files;
pub mod fuzzing;
pub mod ha;
pub mod listen;
pub mod metrics;
pub mod notify;
pub mod pass;
#[cfg(test)]
mod pass_ports_tests;
#[cfg(test)]
mod pass_tests;
pub mod preflight;
pub mod public_source;
pub mod reconcile;
pub mod report;
pub mod run;
pub mod source;
pub mod state;
pub mod status;
pub mod supervisor;
pub mod waf;
pub mod xds;

/// ACME certificates, a crate of its own; here under its old path.
pub use vpsie_lb_acme as acme;
/// The VPSie API client, a crate of its own; here under its old paths.
pub use vpsie_lb_api as api;
/// Where the API may be, and where it may redirect us.
pub use vpsie_lb_api::origin;
/// The local plumbing, a crate of its own; here under its old paths.
pub use vpsie_lb_host::{fsutil, local_http, local_server, trigger};
/// The kernel's per-client bounds on udp load balancers, a crate of its own.
pub use vpsie_lb_udp_guard as udp_guard;

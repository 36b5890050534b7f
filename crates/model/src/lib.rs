//! The VPSie load-balancer model: the wire document, its validation, and the
//! trusted model that translation consumes.
//!
//! This crate does no IO, reads no clock and no environment: the same bytes
//! always give the same result. `Cargo.toml` keeps it that way by depending on
//! nothing that could.

pub mod acme;
pub mod drain;
mod gozero;
mod model;
mod network;
mod problem;
pub mod public;
mod validate;
pub mod vhosts;

pub use model::*;
pub use network::{IpNet, forbidden_class, is_localhost_name};
pub use problem::{FieldPath, Problem, Rejected};
pub use validate::{
    MAX_DOCUMENT_BYTES, ReservedPort, ValidateOptions, Validated, is_valid_id, parse_document,
    validate, validate_str,
};

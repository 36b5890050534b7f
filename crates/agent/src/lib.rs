//! The IO side of vpsie-lb: the command line, file writes and the Envoy
//! pre-flight. Everything that touches the world lives in this crate; the
//! model and the translation it calls are pure.

pub mod commands;
pub mod fsutil;
pub mod preflight;

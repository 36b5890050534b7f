//! The agent's plumbing on its own machine: files written so no crash
//! leaves half of them, HTTP over local sockets (client and server), the
//! controller's wake-up inbox, and the config-file values every section
//! shares. No capability logic lives here; the agent, ACME and HA use it.

pub mod clock;
pub mod config_text;
pub mod fsutil;
pub mod local_http;
pub mod local_server;
pub mod trigger;

//! The agent's pure core: the decisions a reconcile pass makes, with no IO,
//! no clock and no randomness, so they are deterministic and tested as
//! data. The agent crate does the IO around them.
//!
//! - [`change`]: the one change planner over resource sets: the
//!   make-before-break phases and the kind of a change;
//! - [`file_steps`]: the files delivery's steps, make before break;
//! - [`choose`]: what to serve from one fetch ([`fetched`]), per load
//!   balancer, falling back to the last good document;
//! - [`preview`]: the `plan` command's description of a change;
//! - [`class`]: the one error taxonomy every retry decision reads;
//! - [`backoff`]: the waits after failures in a row;
//! - [`pass`]: how a pass ended and how long its phases took;
//! - [`status`]: the status of every load balancer, from what is served,
//!   what was fetched and Envoy's hosts ([`health`]), with its
//!   [`version`]s and [`time`]s;
//! - [`report`]: the `Reporter` trait every capability reports through.

pub mod backoff;
pub mod change;
pub mod choose;
pub mod class;
pub mod fetched;
pub mod file_steps;
pub mod health;
pub mod pass;
pub mod preview;
pub mod report;
pub mod status;
pub mod time;
pub mod version;

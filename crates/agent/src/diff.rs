//! The `plan` command's preview, moved to the pure core:
//! [`vpsie_lb_core::preview`].

pub use vpsie_lb_core::preview::*;

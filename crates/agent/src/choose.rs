//! Moved to the pure core: [`vpsie_lb_core::choose`].

pub use vpsie_lb_core::choose::*;

//! Moved to the pure core: [`vpsie_lb_core::backoff`].

pub use vpsie_lb_core::backoff::*;

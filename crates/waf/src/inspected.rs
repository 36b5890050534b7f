//! How much of a request the engine inspects: the bounds that the engine,
//! the body checks and the multipart reader all obey. A leaf, so each of
//! them reads the same numbers without depending on another.

/// Most request body bytes inspected; Envoy sends no more (ext_authz's
/// `max_request_bytes`), and a longer body is inspected up to here.
pub const MAX_BODY_BYTES: usize = 2 * 1024 * 1024;
/// Most bytes of a body that is not a multipart upload (a form, JSON, XML)
/// parsed into arguments: each argument runs through hundreds of rules, so
/// these cost far more per byte than a file's.
pub const MAX_PARSED_BODY_BYTES: usize = 128 * 1024;
/// Most arguments (query and body together) inspected; past this
/// ModSecurity skips the rest.
pub const MAX_ARGS: usize = 255;

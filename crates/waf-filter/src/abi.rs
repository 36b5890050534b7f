//! The C ABI between Envoy 1.40 and a dynamic module's HTTP filter: the
//! hooks Envoy calls (exported here) and the few callbacks we call back
//! (exported by Envoy's binary). Every pointer Envoy hands over is valid
//! only during the hook it came with; nothing here keeps one.
//!
//! The declarations follow Envoy's `abi.h` for the pinned build, checked
//! against the binary: on x86-64 a `{ptr, length}` buffer passed by value
//! travels in two registers, exactly like a pointer and a length.
#![allow(unsafe_code)]

use std::ffi::{c_char, c_void};
use std::sync::Arc;

use crate::{CLOSED, FilterConfig, Next, Reply, RouteConfig, Stream};

/// A borrowed byte range (`envoy_dynamic_module_type_{envoy,module}_buffer`).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Buf {
    ptr: *const u8,
    len: usize,
}

impl Buf {
    const EMPTY: Buf = Buf {
        ptr: std::ptr::null(),
        len: 0,
    };

    fn of(bytes: &[u8]) -> Self {
        Buf {
            ptr: bytes.as_ptr(),
            len: bytes.len(),
        }
    }

    /// The bytes, empty for a null pointer.
    ///
    /// # Safety
    /// `ptr` must point at `len` readable bytes for the caller's lifetime.
    unsafe fn bytes<'a>(self) -> &'a [u8] {
        if self.ptr.is_null() || self.len == 0 {
            return &[];
        }
        // SAFETY: the caller's promise.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

/// One header (`envoy_dynamic_module_type_envoy_http_header`).
#[repr(C)]
#[derive(Clone, Copy)]
struct Header {
    key: Buf,
    value: Buf,
}

/// `envoy_dynamic_module_type_http_header_type_RequestHeader`.
const REQUEST_HEADERS: u32 = 0;
/// `..._http_body_type_ReceivedRequestBody`: the frame this hook brings.
const RECEIVED_BODY: u32 = 0;
/// `..._http_body_type_BufferedRequestBody`: the frames held so far.
const BUFFERED_BODY: u32 = 1;
/// `..._attribute_id_RequestProtocol` (`HTTP/1.1`, `HTTP/2`, `HTTP/3`).
const ATTR_PROTOCOL: u32 = 10;
/// `..._attribute_id_SourceAddress` (`ip:port` of the TCP peer).
const ATTR_SOURCE: u32 = 24;

/// Filter statuses: `Continue` for headers, body and trailers alike.
const CONTINUE: u32 = 0;
/// Headers: `StopIteration` (wait for the body); trailers: the same.
const STOP: u32 = 1;
/// Body: `StopIterationAndWatermark`: hold this frame and wait for the
/// next, and past the stream's buffer limit slow the client down rather
/// than answer 413 (`StopIterationAndBuffer` does): when the filter lets
/// the held start and the frame that crossed 2 MiB through together, they
/// may pass the listener's limit, and under load reads are large. As
/// ext_authz holds a body it may send in part.
const STOP_AND_HOLD: u32 = 2;
/// Body: `StopIterationNoBuffer` (refused: nothing more goes upstream).
const STOP_NO_BUFFER: u32 = 3;

unsafe extern "C" {
    fn envoy_dynamic_module_callback_log(level: u32, message: Buf);
    fn envoy_dynamic_module_callback_log_enabled(level: u32) -> bool;
    fn envoy_dynamic_module_callback_http_get_headers_size(f: *mut c_void, kind: u32) -> usize;
    fn envoy_dynamic_module_callback_http_get_headers(
        f: *mut c_void,
        kind: u32,
        out: *mut Header,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_get_body_chunks_size(f: *mut c_void, kind: u32) -> usize;
    fn envoy_dynamic_module_callback_http_get_body_chunks(
        f: *mut c_void,
        kind: u32,
        out: *mut Buf,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_send_response(
        f: *mut c_void,
        status: u32,
        headers: *mut Header,
        headers_len: usize,
        body: Buf,
        details: Buf,
    );
    fn envoy_dynamic_module_callback_http_get_body_size(f: *mut c_void, kind: u32) -> usize;
    fn envoy_dynamic_module_callback_get_most_specific_route_config(
        f: *mut c_void,
    ) -> *const c_void;
    fn envoy_dynamic_module_callback_http_set_dynamic_metadata_string(
        f: *mut c_void,
        namespace: Buf,
        key: Buf,
        value: Buf,
    );
    fn envoy_dynamic_module_callback_http_filter_get_attribute_string(
        f: *mut c_void,
        id: u32,
        out: *mut Buf,
    ) -> bool;
}

/// `envoy_dynamic_module_type_log_level_Warn`.
const WARN: u32 = 3;
/// `envoy_dynamic_module_type_log_level_Error`.
const ERROR: u32 = 4;

/// Writes `message()` to Envoy's log at `level`, formatting it only when
/// that level is on.
fn log(level: u32, message: impl FnOnce() -> String) {
    // SAFETY: plain calls; the buffer outlives the second, which copies it.
    unsafe {
        if envoy_dynamic_module_callback_log_enabled(level) {
            let text = message();
            envoy_dynamic_module_callback_log(level, Buf::of(text.as_bytes()));
        }
    }
}

/// A match, at warning level (the agent runs Envoy at that level).
pub fn warn(message: impl FnOnce() -> String) {
    log(WARN, message);
}

/// A failure, at error level (the pre-flight runs Envoy at that level,
/// so a config it refuses says why).
pub fn error(message: impl FnOnce() -> String) {
    log(ERROR, message);
}

/// The stream Envoy is calling about, for the duration of one hook.
pub struct Envoy(*mut c_void);

impl Envoy {
    /// The request's headers, pseudo-headers included, as received.
    pub fn request_headers(&self) -> Vec<(String, String)> {
        // SAFETY: `self.0` is the live filter of the current hook; the
        // array is sized by Envoy's own count, and the views it fills are
        // copied before the hook returns.
        unsafe {
            let n = envoy_dynamic_module_callback_http_get_headers_size(self.0, REQUEST_HEADERS);
            let mut out = vec![
                Header {
                    key: Buf::EMPTY,
                    value: Buf::EMPTY
                };
                n
            ];
            if n == 0
                || !envoy_dynamic_module_callback_http_get_headers(
                    self.0,
                    REQUEST_HEADERS,
                    out.as_mut_ptr(),
                )
            {
                return Vec::new();
            }
            out.iter()
                .map(|h| {
                    (
                        String::from_utf8_lossy(h.key.bytes()).into_owned(),
                        String::from_utf8_lossy(h.value.bytes()).into_owned(),
                    )
                })
                .collect()
        }
    }

    /// Appends the request body Envoy holds (`buffered`) or just brought.
    /// Stops at `limit` bytes in all: past it nothing is inspected, so
    /// nothing past it is copied.
    fn append_body(&self, kind: u32, to: &mut Vec<u8>, limit: usize) {
        // SAFETY: as for the headers: sized by Envoy, copied at once.
        unsafe {
            let n = envoy_dynamic_module_callback_http_get_body_chunks_size(self.0, kind);
            let mut out = vec![Buf::EMPTY; n];
            if n == 0
                || !envoy_dynamic_module_callback_http_get_body_chunks(
                    self.0,
                    kind,
                    out.as_mut_ptr(),
                )
            {
                return;
            }
            for chunk in out {
                let room = limit.saturating_sub(to.len());
                let bytes = chunk.bytes();
                to.extend_from_slice(&bytes[..bytes.len().min(room)]);
            }
        }
    }

    /// Bytes of request body so far: what Envoy holds and this frame.
    pub fn body_size(&self) -> usize {
        // SAFETY: `self.0` is the live filter of the current hook.
        unsafe {
            envoy_dynamic_module_callback_http_get_body_size(self.0, BUFFERED_BODY)
                + envoy_dynamic_module_callback_http_get_body_size(self.0, RECEIVED_BODY)
        }
    }

    /// The route's policy (its per-route config), if the route has one.
    pub fn route(&self) -> Option<Arc<RouteConfig>> {
        // SAFETY: a non-null answer is the pointer our per-route hook
        // made with `Arc::into_raw`, which the route keeps alive for this
        // stream; we take a count of our own.
        unsafe {
            let p = envoy_dynamic_module_callback_get_most_specific_route_config(self.0)
                .cast::<RouteConfig>();
            if p.is_null() {
                return None;
            }
            Arc::increment_strong_count(p);
            Some(Arc::from_raw(p))
        }
    }

    /// Sets `key` in this stream's dynamic metadata under `namespace`
    /// (the access log reads it).
    pub fn set_metadata(&self, namespace: &str, key: &str, value: &str) {
        // SAFETY: the buffers outlive the call; Envoy copies them.
        unsafe {
            envoy_dynamic_module_callback_http_set_dynamic_metadata_string(
                self.0,
                Buf::of(namespace.as_bytes()),
                Buf::of(key.as_bytes()),
                Buf::of(value.as_bytes()),
            );
        }
    }

    /// The request body, at most `limit` bytes of it: what Envoy
    /// buffered, then the last frame.
    pub fn request_body(&self, limit: usize) -> Vec<u8> {
        let mut body = Vec::new();
        self.append_body(BUFFERED_BODY, &mut body, limit);
        self.append_body(RECEIVED_BODY, &mut body, limit);
        body
    }

    fn attribute(&self, id: u32) -> Option<String> {
        let mut out = Buf::EMPTY;
        // SAFETY: Envoy fills `out` with a view valid during the hook.
        unsafe {
            envoy_dynamic_module_callback_http_filter_get_attribute_string(self.0, id, &mut out)
                .then(|| String::from_utf8_lossy(out.bytes()).into_owned())
        }
    }

    /// `HTTP/1.1`, `HTTP/2`, `HTTP/3`.
    pub fn protocol(&self) -> Option<String> {
        self.attribute(ATTR_PROTOCOL)
    }

    /// The TCP peer as `ip:port`.
    pub fn source(&self) -> Option<String> {
        self.attribute(ATTR_SOURCE)
    }

    /// Answers the request itself with `reply`. Envoy may end the stream
    /// inside this call, destroying our state for it: nothing of the
    /// stream may be touched after (see `hook`).
    fn refuse(&self, reply: &Reply) {
        // SAFETY: the buffers outlive the call; Envoy copies them.
        unsafe {
            envoy_dynamic_module_callback_http_send_response(
                self.0,
                u32::from(reply.status),
                std::ptr::null_mut(),
                0,
                Buf::of(reply.body.as_bytes()),
                Buf::of(reply.details.as_bytes()),
            );
        }
    }
}

/// What the module says its ABI is. Envoy only warns on a mismatch.
static ABI_VERSION: &[u8] = b"v0.2.0\0";

/// Runs `f` and turns a panic into `otherwise`: a panic must not unwind
/// into Envoy's C++ frames, which would abort the proxy.
fn guarded<T>(otherwise: T, f: impl FnOnce() -> T) -> T {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or(otherwise)
}

#[unsafe(no_mangle)]
extern "C" fn envoy_dynamic_module_on_program_init() -> *const c_char {
    ABI_VERSION.as_ptr().cast()
}

/// A config Envoy keeps: `parse` of the text in `config`, as the pointer
/// of an `Arc` (streams take counts of their own), or null when refused,
/// with the reason in Envoy's log.
fn config_new<T>(config: Buf, parse: fn(&[u8]) -> Result<T, String>) -> *const c_void {
    // SAFETY: Envoy's buffer is valid during this hook.
    let text = unsafe { config.bytes() };
    guarded(std::ptr::null(), || match parse(text) {
        Ok(c) => Arc::into_raw(Arc::new(c)).cast(),
        Err(e) => {
            error(|| format!("vpsie-lb-waf-filter: {e}"));
            std::ptr::null()
        }
    })
}

/// Envoy is done with a config from [`config_new`].
///
/// # Safety
/// `c` is null or came from `config_new::<T>`, and Envoy drops it once.
unsafe fn config_destroy<T>(c: *mut c_void) {
    if !c.is_null() {
        // SAFETY: the caller's promise.
        drop(unsafe { Arc::from_raw(c.cast_const().cast::<T>()) });
    }
}

#[unsafe(no_mangle)]
extern "C" fn envoy_dynamic_module_on_http_filter_config_new(
    _envoy: *mut c_void,
    _name: Buf,
    config: Buf,
) -> *const c_void {
    config_new(config, FilterConfig::parse)
}

#[unsafe(no_mangle)]
extern "C" fn envoy_dynamic_module_on_http_filter_config_destroy(c: *mut c_void) {
    // SAFETY: `c` is this filter's config, from `config_new`.
    unsafe { config_destroy::<FilterConfig>(c) }
}

#[unsafe(no_mangle)]
extern "C" fn envoy_dynamic_module_on_http_filter_per_route_config_new(
    _name: Buf,
    config: Buf,
) -> *const c_void {
    config_new(config, RouteConfig::parse)
}

#[unsafe(no_mangle)]
extern "C" fn envoy_dynamic_module_on_http_filter_per_route_config_destroy(c: *mut c_void) {
    // SAFETY: `c` is a route's config, from `per_route_config_new`.
    unsafe { config_destroy::<RouteConfig>(c) }
}

#[unsafe(no_mangle)]
extern "C" fn envoy_dynamic_module_on_http_filter_new(
    c: *mut c_void,
    _envoy: *mut c_void,
) -> *const c_void {
    if c.is_null() {
        return std::ptr::null();
    }
    let c = c.cast_const().cast::<FilterConfig>();
    // SAFETY: `c` is a live config from `config_new` (Envoy destroys it
    // only after creating its last stream); the stream takes a count.
    let config = unsafe {
        Arc::increment_strong_count(c);
        Arc::from_raw(c)
    };
    guarded(std::ptr::null(), || {
        Box::into_raw(Box::new(Stream::new(config)))
            .cast_const()
            .cast()
    })
}

/// Runs a request hook on stream `m`, then sends the reply it chose, if
/// any, as its very last step: sending may end the stream and have Envoy
/// destroy our state for it, so no borrow of it may live on. A panic must
/// not unwind into Envoy's C++ frames (that aborts the proxy): it ends the
/// stream's inspection as a failed one, which `fail_open` answers. A
/// stream without state (its creation failed) is refused, never passed.
fn hook(f: *mut c_void, m: *mut c_void, run: impl FnOnce(&mut Stream, &Envoy) -> Next) -> Next {
    let envoy = Envoy(f);
    let next = {
        // SAFETY: `m` comes from `filter_new` and is not yet destroyed;
        // Envoy calls a stream's hooks from one thread, one at a time.
        match unsafe { m.cast::<Stream>().as_mut() } {
            None => Next::Refuse(CLOSED),
            Some(s) => {
                match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(s, &envoy))) {
                    Ok(next) => next,
                    Err(_) => {
                        s.decided = true;
                        s.failed()
                    }
                }
            }
        }
    };
    if let Next::Refuse(reply) = &next {
        envoy.refuse(reply);
    }
    next
}

#[unsafe(no_mangle)]
extern "C" fn envoy_dynamic_module_on_http_filter_request_headers(
    f: *mut c_void,
    m: *mut c_void,
    end_of_stream: bool,
) -> u32 {
    match hook(f, m, |s, e| s.on_headers(e, end_of_stream)) {
        Next::Go => CONTINUE,
        Next::Wait | Next::Refuse(_) => STOP,
    }
}

#[unsafe(no_mangle)]
extern "C" fn envoy_dynamic_module_on_http_filter_request_body(
    f: *mut c_void,
    m: *mut c_void,
    end_of_stream: bool,
) -> u32 {
    match hook(f, m, |s, e| s.on_body(e, end_of_stream)) {
        Next::Go => CONTINUE,
        Next::Wait => STOP_AND_HOLD,
        Next::Refuse(_) => STOP_NO_BUFFER,
    }
}

#[unsafe(no_mangle)]
extern "C" fn envoy_dynamic_module_on_http_filter_request_trailers(
    f: *mut c_void,
    m: *mut c_void,
) -> u32 {
    match hook(f, m, Stream::on_trailers) {
        Next::Go => CONTINUE,
        Next::Wait | Next::Refuse(_) => STOP,
    }
}

#[unsafe(no_mangle)]
extern "C" fn envoy_dynamic_module_on_http_filter_destroy(m: *mut c_void) {
    if !m.is_null() {
        // SAFETY: `m` came from `Box::into_raw` in `filter_new`.
        drop(unsafe { Box::from_raw(m.cast::<Stream>()) });
    }
}

/// Hooks for what this filter does not take part in. Envoy resolves
/// every hook when it loads us. Responses pass on (status `Continue`)...
macro_rules! passing {
    ($($name:ident),* $(,)?) => {$(
        #[unsafe(no_mangle)]
        extern "C" fn $name() -> u32 {
            CONTINUE
        }
    )*};
}

/// ...and the other events are acknowledged (they return nothing). The
/// arguments are left undeclared: none is read.
macro_rules! ignoring {
    ($($name:ident),* $(,)?) => {$(
        #[unsafe(no_mangle)]
        extern "C" fn $name() {}
    )*};
}

passing!(
    envoy_dynamic_module_on_http_filter_response_headers,
    envoy_dynamic_module_on_http_filter_response_body,
    envoy_dynamic_module_on_http_filter_response_trailers,
    // Its `Continue`: the local reply is sent as it is.
    envoy_dynamic_module_on_http_filter_local_reply,
);

ignoring!(
    envoy_dynamic_module_on_http_filter_stream_complete,
    envoy_dynamic_module_on_http_filter_scheduled,
    envoy_dynamic_module_on_http_filter_http_callout_done,
    envoy_dynamic_module_on_http_filter_http_stream_headers,
    envoy_dynamic_module_on_http_filter_http_stream_data,
    envoy_dynamic_module_on_http_filter_http_stream_trailers,
    envoy_dynamic_module_on_http_filter_http_stream_complete,
    envoy_dynamic_module_on_http_filter_http_stream_reset,
    envoy_dynamic_module_on_http_filter_downstream_above_write_buffer_high_watermark,
    envoy_dynamic_module_on_http_filter_downstream_below_write_buffer_low_watermark,
    envoy_dynamic_module_on_http_filter_config_scheduled,
    envoy_dynamic_module_on_http_filter_config_http_callout_done,
    envoy_dynamic_module_on_http_filter_config_http_stream_headers,
    envoy_dynamic_module_on_http_filter_config_http_stream_data,
    envoy_dynamic_module_on_http_filter_config_http_stream_trailers,
    envoy_dynamic_module_on_http_filter_config_http_stream_complete,
    envoy_dynamic_module_on_http_filter_config_http_stream_reset,
);

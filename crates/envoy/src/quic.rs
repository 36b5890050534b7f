//! HTTP/3 for an https load balancer with `http3`: a QUIC listener on the
//! same port over UDP, with the same certificates (SNI chains included),
//! connection manager and route configuration as the TCP listener. The
//! `alt-svc` header that tells HTTP/1.1 and HTTP/2 clients it is there is
//! added by the route configuration (`routes::alt_svc`).

use envoy_types::pb::envoy::config::core::v3::{
    Http3ProtocolOptions, TransportSocket, transport_socket,
};
use envoy_types::pb::envoy::config::listener::v3::{
    Listener, QuicProtocolOptions, UdpListenerConfig,
};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager;
use envoy_types::pb::envoy::extensions::transport_sockets::quic::v3::QuicDownstreamTransport;
use vpsie_lb_model::LoadBalancer;

use crate::pb::{any, u32v};
use crate::{TranslateOptions, names, tls};

/// The QUIC listener. Its chains carry the connection limit and the
/// connection manager: the access list, rate limits and WAF live in the
/// manager (http filters and the route configuration), so they hold for
/// HTTP/3 too. `max_connections` counts QUIC connections apart from TCP
/// ones, per filter chain as on TCP. The new-connection rate is a TCP
/// listener filter and does not apply.
pub(crate) fn listener(lb: &LoadBalancer, opts: &TranslateOptions) -> Listener {
    let mut hcm = crate::listener::http_connection_manager(lb, opts);
    hcm.codec_type = http_connection_manager::CodecType::Http3 as i32;
    hcm.http3_protocol_options = Some(Http3ProtocolOptions::default());
    // Envoy runs a network filter's new-connection step on QUIC too, which
    // is all the connection limit needs.
    let mut filters = crate::listener::connection_limit(lb, &names::quic_listener(&lb.id));
    filters.push(crate::listener::typed_filter(
        "envoy.filters.network.http_connection_manager",
        any(&hcm),
    ));
    let filter_chains =
        crate::listener::certificate_chains(lb, &filters, |secret| quic_socket(lb, secret, opts));
    Listener {
        name: names::quic_listener(&lb.id),
        address: crate::pb::listen_on(
            opts.listen_address,
            lb.port,
            envoy_types::pb::envoy::config::core::v3::socket_address::Protocol::Udp,
        ),
        per_connection_buffer_limit_bytes: u32v(crate::listener::BUFFER_LIMIT_BYTES),
        udp_listener_config: Some(UdpListenerConfig {
            quic_options: Some(QuicProtocolOptions::default()),
            ..Default::default()
        }),
        filter_chains,
        ..Default::default()
    }
}

/// The TCP listener's TLS context, offering `h3` as QUIC requires.
fn quic_socket(
    lb: &LoadBalancer,
    secret: String,
    opts: &TranslateOptions,
) -> Option<TransportSocket> {
    let mut context = tls::downstream_context(lb, secret, opts)?;
    if let Some(common) = context.common_tls_context.as_mut() {
        common.alpn_protocols = vec!["h3".into()];
    }
    Some(TransportSocket {
        name: "envoy.transport_sockets.quic".into(),
        config_type: Some(transport_socket::ConfigType::TypedConfig(any(
            &QuicDownstreamTransport {
                downstream_tls_context: Some(context),
                ..Default::default()
            },
        ))),
    })
}

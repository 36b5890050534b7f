//! Short helpers for building protobuf values; they hide prost's wrapper types.

use envoy_types::pb::envoy::config::core::v3::{
    Address, AggregatedConfigSource, ApiVersion, ConfigSource, PathConfigSource, Pipe,
    SocketAddress, WatchedDirectory, address, config_source, socket_address,
};
use envoy_types::pb::google::protobuf::{Any, Duration, UInt32Value, UInt64Value};
use std::path::Path;

/// Packs a message into an `Any` with its type URL.
pub fn any<T: prost::Message + prost::Name>(msg: &T) -> Any {
    Any {
        type_url: T::type_url(),
        value: msg.encode_to_vec(),
    }
}

/// Whole seconds.
pub fn secs(s: u32) -> Option<Duration> {
    Some(Duration {
        seconds: i64::from(s),
        nanos: 0,
    })
}

/// Milliseconds.
pub fn millis(ms: u32) -> Option<Duration> {
    Some(Duration {
        seconds: i64::from(ms / 1000),
        nanos: ((ms % 1000) * 1_000_000) as i32,
    })
}

/// A `UInt32Value`.
pub fn u32v(v: u32) -> Option<UInt32Value> {
    Some(UInt32Value { value: v })
}

/// A `UInt64Value`.
pub fn u64v(v: u64) -> Option<UInt64Value> {
    Some(UInt64Value { value: v })
}

/// A TCP socket address.
pub fn socket(ip_or_host: &str, port: u16) -> Option<Address> {
    Some(Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: ip_or_host.to_owned(),
            port_specifier: Some(socket_address::PortSpecifier::PortValue(u32::from(port))),
            ..Default::default()
        })),
    })
}

/// Where a listener binds: `ip:port` over `protocol`. On `::` it takes
/// IPv4 too (`ipv4_compat`): Envoy binds IPv6 sockets IPv6-only, so `::`
/// alone would leave every IPv4 address of the VM (and an HA pair's IPv4
/// virtual IPs) unserved. Envoy then reports IPv4 clients as IPv4, so
/// access lists and rate limits by IPv4 network still match them.
pub fn listen_on(
    ip: std::net::IpAddr,
    port: u16,
    protocol: socket_address::Protocol,
) -> Option<Address> {
    Some(Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            protocol: protocol as i32,
            address: ip.to_string(),
            port_specifier: Some(socket_address::PortSpecifier::PortValue(u32::from(port))),
            ipv4_compat: ip == std::net::IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
            ..Default::default()
        })),
    })
}

/// An address on a Unix socket.
pub fn pipe(path: &Path, mode: u32) -> Option<Address> {
    Some(Address {
        address: Some(address::Address::Pipe(Pipe {
            path: path.display().to_string(),
            mode,
        })),
    })
}

/// A config source that reads `file` and reloads when something is renamed into `dir`.
pub fn file_source(file: &Path, dir: &Path) -> Option<ConfigSource> {
    Some(ConfigSource {
        resource_api_version: ApiVersion::V3 as i32,
        config_source_specifier: Some(config_source::ConfigSourceSpecifier::PathConfigSource(
            PathConfigSource {
                path: file.display().to_string(),
                watched_directory: Some(WatchedDirectory {
                    path: dir.display().to_string(),
                    ..Default::default()
                }),
                ..Default::default()
            },
        )),
        ..Default::default()
    })
}

/// A config source that is the bootstrap's aggregated xDS stream.
pub fn ads_source() -> Option<ConfigSource> {
    Some(ConfigSource {
        resource_api_version: ApiVersion::V3 as i32,
        config_source_specifier: Some(config_source::ConfigSourceSpecifier::Ads(
            AggregatedConfigSource {},
        )),
        ..Default::default()
    })
}

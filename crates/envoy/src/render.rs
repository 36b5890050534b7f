//! Serializes Envoy resources into the files Envoy reads.
//!
//! prost-reflect, driven by the descriptor set envoy-types was generated
//! from, gives canonical proto3 JSON (every nested `Any` expanded with its
//! `@type`), so the prost structs stay the only model of Envoy's schema.

use std::path::PathBuf;
use std::sync::LazyLock;

use envoy_types::pb::envoy::service::discovery::v3::DiscoveryResponse;
use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage, SerializeOptions};
use sha2::{Digest, Sha256};

/// The part of envoy-types' descriptor set that the messages we emit need,
/// vendored pre-pruned (the crate does not export the set). Decoding the
/// whole set at start-up left some 25 MB of heap behind in the agent; the
/// pruned set is a tenth of it. A test pins it to
/// `prune_descriptor_set(<the resolved crate's copy>)`.
static DESCRIPTORS: &[u8] = include_bytes!("../descriptor/envoy-types-pruned.bin");

static POOL: LazyLock<Result<DescriptorPool, String>> =
    LazyLock::new(|| DescriptorPool::decode(DESCRIPTORS).map_err(|e| e.to_string()));

/// Every message we emit, directly or packed in an `Any`. Rendering a type
/// missing here fails loudly (the golden tests cover every `Any` we pack).
fn emitted_types() -> Vec<String> {
    use envoy_types::pb::envoy::config::bootstrap::v3::Bootstrap;
    use envoy_types::pb::envoy::config::cluster::v3::Cluster;
    use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
    use envoy_types::pb::envoy::config::listener::v3::Listener;
    use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
    use envoy_types::pb::envoy::extensions::access_loggers::file::v3::FileAccessLog;
    use envoy_types::pb::envoy::extensions::access_loggers::stream::v3::{
        StderrAccessLog, StdoutAccessLog,
    };
    use envoy_types::pb::envoy::extensions::filters::http::dynamic_modules::v3::{
        DynamicModuleFilter, DynamicModuleFilterPerRoute,
    };
    use envoy_types::pb::envoy::extensions::filters::http::ext_authz::v3::{
        ExtAuthz, ExtAuthzPerRoute,
    };
    use envoy_types::pb::envoy::extensions::filters::http::local_ratelimit::v3::LocalRateLimit;
    use envoy_types::pb::envoy::extensions::filters::http::rbac::v3::{Rbac, RbacPerRoute};
    use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
    use envoy_types::pb::envoy::extensions::filters::http::stateful_session::v3::{
        StatefulSession, StatefulSessionPerRoute,
    };
    use envoy_types::pb::envoy::extensions::filters::listener::local_ratelimit::v3::LocalRateLimit as ConnectionRate;
    use envoy_types::pb::envoy::extensions::filters::listener::tls_inspector::v3::TlsInspector;
    use envoy_types::pb::envoy::extensions::filters::network::connection_limit::v3::ConnectionLimit;
    use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
    use envoy_types::pb::envoy::extensions::filters::network::rbac::v3::Rbac as NetworkRbac;
    use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::TcpProxy;
    use envoy_types::pb::envoy::extensions::filters::udp::udp_proxy::v3::{
        Route as UdpRoute, UdpProxyConfig,
    };
    use envoy_types::pb::envoy::extensions::http::stateful_session::cookie::v3::CookieBasedSessionState;
    use envoy_types::pb::envoy::extensions::resource_monitors::downstream_connections::v3::DownstreamConnectionsConfig;
    use envoy_types::pb::envoy::extensions::transport_sockets::proxy_protocol::v3::ProxyProtocolUpstreamTransport;
    use envoy_types::pb::envoy::extensions::transport_sockets::quic::v3::QuicDownstreamTransport;
    use envoy_types::pb::envoy::extensions::transport_sockets::raw_buffer::v3::RawBuffer;
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
        DownstreamTlsContext, Secret, UpstreamTlsContext,
    };
    use envoy_types::pb::envoy::extensions::upstreams::http::v3::HttpProtocolOptions;
    use prost::Name;
    vec![
        DiscoveryResponse::full_name(),
        Bootstrap::full_name(),
        Listener::full_name(),
        RouteConfiguration::full_name(),
        StatefulSession::full_name(),
        StatefulSessionPerRoute::full_name(),
        CookieBasedSessionState::full_name(),
        TlsInspector::full_name(),
        Rbac::full_name(),
        RbacPerRoute::full_name(),
        ExtAuthz::full_name(),
        ExtAuthzPerRoute::full_name(),
        DynamicModuleFilter::full_name(),
        DynamicModuleFilterPerRoute::full_name(),
        envoy_types::pb::google::protobuf::StringValue::full_name(),
        NetworkRbac::full_name(),
        LocalRateLimit::full_name(),
        ConnectionRate::full_name(),
        Cluster::full_name(),
        ClusterLoadAssignment::full_name(),
        Secret::full_name(),
        HttpConnectionManager::full_name(),
        Router::full_name(),
        TcpProxy::full_name(),
        ConnectionLimit::full_name(),
        FileAccessLog::full_name(),
        StdoutAccessLog::full_name(),
        StderrAccessLog::full_name(),
        DownstreamTlsContext::full_name(),
        UpstreamTlsContext::full_name(),
        HttpProtocolOptions::full_name(),
        DownstreamConnectionsConfig::full_name(),
        ProxyProtocolUpstreamTransport::full_name(),
        RawBuffer::full_name(),
        UdpProxyConfig::full_name(),
        UdpRoute::full_name(),
        QuicDownstreamTransport::full_name(),
    ]
}

/// Keeps, of the encoded descriptor set `full`, only the message and enum
/// types our messages reach through their fields, without options (only
/// `map_entry` and `allow_alias`, which change how JSON is read and written,
/// survive), encoded again. Deterministic: the vendored set is checked
/// against it.
pub fn prune_descriptor_set(full: &[u8]) -> Result<Vec<u8>, String> {
    use prost_reflect::prost_types::{DescriptorProto, FileDescriptorProto, FileDescriptorSet};
    use std::collections::{BTreeSet, HashMap};

    fn qualify(package: &str, name: &str) -> String {
        if package.is_empty() {
            name.to_owned()
        } else {
            format!("{package}.{name}")
        }
    }
    fn references(m: &DescriptorProto, out: &mut Vec<String>) {
        for f in &m.field {
            if let Some(t) = &f.type_name {
                out.push(t.trim_start_matches('.').to_owned());
            }
        }
        for n in &m.nested_type {
            references(n, out);
        }
    }

    let set = FileDescriptorSet::decode(full).map_err(|e| e.to_string())?;
    // Every top-level type: which file, message or enum, which index.
    let mut top: HashMap<String, (usize, bool, usize)> = HashMap::new();
    for (fi, f) in set.file.iter().enumerate() {
        for (i, m) in f.message_type.iter().enumerate() {
            top.insert(qualify(f.package(), m.name()), (fi, true, i));
        }
        for (i, e) in f.enum_type.iter().enumerate() {
            top.insert(qualify(f.package(), e.name()), (fi, false, i));
        }
    }
    // A nested type is kept by keeping the top-level type around it.
    let owner = |name: &str| -> Option<String> {
        let mut n = name;
        loop {
            if top.contains_key(n) {
                return Some(n.to_owned());
            }
            n = &n[..n.rfind('.')?];
        }
    };
    let mut keep: BTreeSet<String> = BTreeSet::new();
    let mut queue = emitted_types();
    while let Some(name) = queue.pop() {
        let outer = owner(&name).ok_or_else(|| format!("no file defines {name}"))?;
        if !keep.insert(outer.clone()) {
            continue;
        }
        let (fi, is_message, i) = top[&outer];
        if is_message {
            references(&set.file[fi].message_type[i], &mut queue);
        }
    }

    let mut files = Vec::new();
    for f in &set.file {
        let kept = |name: &str| keep.contains(&qualify(f.package(), name));
        let message_type: Vec<DescriptorProto> = f
            .message_type
            .iter()
            .filter(|m| kept(m.name()))
            .map(strip_message)
            .collect();
        let enum_type: Vec<_> = f
            .enum_type
            .iter()
            .filter(|e| kept(e.name()))
            .map(strip_enum)
            .collect();
        if message_type.is_empty() && enum_type.is_empty() {
            continue;
        }
        let mut refs = Vec::new();
        for m in &message_type {
            references(m, &mut refs);
        }
        let dependency: BTreeSet<String> = refs
            .iter()
            .filter_map(|r| owner(r))
            .map(|o| set.file[top[&o].0].name().to_owned())
            .filter(|d| d != f.name())
            .collect();
        files.push(FileDescriptorProto {
            name: f.name.clone(),
            package: f.package.clone(),
            dependency: dependency.into_iter().collect(),
            message_type,
            enum_type,
            syntax: f.syntax.clone(),
            ..Default::default()
        });
    }
    let pruned = FileDescriptorSet { file: files };
    // Fails here, at vendoring time, if a reference dangles.
    DescriptorPool::from_file_descriptor_set(pruned.clone()).map_err(|e| e.to_string())?;
    Ok(pruned.encode_to_vec())
}

/// `m` without options, except `map_entry`.
fn strip_message(
    m: &prost_reflect::prost_types::DescriptorProto,
) -> prost_reflect::prost_types::DescriptorProto {
    use prost_reflect::prost_types::{DescriptorProto, MessageOptions};
    let map_entry = m.options.as_ref().is_some_and(|o| o.map_entry());
    DescriptorProto {
        name: m.name.clone(),
        field: m
            .field
            .iter()
            .map(|f| {
                let mut f = f.clone();
                f.options = None;
                f
            })
            .collect(),
        nested_type: m.nested_type.iter().map(strip_message).collect(),
        enum_type: m.enum_type.iter().map(strip_enum).collect(),
        oneof_decl: m
            .oneof_decl
            .iter()
            .map(|o| {
                let mut o = o.clone();
                o.options = None;
                o
            })
            .collect(),
        options: map_entry.then(|| MessageOptions {
            map_entry: Some(true),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// `e` without options, except `allow_alias`.
fn strip_enum(
    e: &prost_reflect::prost_types::EnumDescriptorProto,
) -> prost_reflect::prost_types::EnumDescriptorProto {
    use prost_reflect::prost_types::{EnumDescriptorProto, EnumOptions};
    let alias = e.options.as_ref().is_some_and(|o| o.allow_alias());
    EnumDescriptorProto {
        name: e.name.clone(),
        value: e
            .value
            .iter()
            .map(|v| {
                let mut v = v.clone();
                v.options = None;
                v
            })
            .collect(),
        options: alias.then(|| EnumOptions {
            allow_alias: Some(true),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Rendering failed; this is a bug in this crate or a descriptor mismatch, never bad input.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// The descriptor set could not be loaded or lacks a message.
    #[error("envoy descriptor set: {0}")]
    Descriptor(String),
    /// A message could not be converted.
    #[error("render {message}: {reason}")]
    Convert {
        /// The message's full name.
        message: String,
        /// Why.
        reason: String,
    },
}

impl RenderError {
    /// Retrying cannot help: rendering is deterministic.
    pub fn is_retryable(&self) -> bool {
        false
    }
}

/// `msg` as a dynamic message of the pruned pool, ready to serialize.
fn dynamic<M: Message + prost::Name>(msg: &M) -> Result<DynamicMessage, RenderError> {
    let pool = POOL
        .as_ref()
        .map_err(|e| RenderError::Descriptor(e.clone()))?;
    let full_name = M::full_name();
    let desc = pool
        .get_message_by_name(&full_name)
        .ok_or_else(|| RenderError::Descriptor(format!("no message {full_name}")))?;
    DynamicMessage::decode(desc, msg.encode_to_vec().as_slice()).map_err(|e| RenderError::Convert {
        message: full_name,
        reason: e.to_string(),
    })
}

fn options() -> SerializeOptions {
    SerializeOptions::new().use_proto_field_name(true)
}

/// Canonical proto3 JSON of any Envoy message, with snake_case field names
/// and keys in sorted order.
pub fn to_json<M: Message + prost::Name>(msg: &M) -> Result<serde_json::Value, RenderError> {
    let value = dynamic(msg)?
        .serialize_with_options(serde_json::value::Serializer, &options())
        .map_err(|e| RenderError::Convert {
            message: M::full_name(),
            reason: e.to_string(),
        })?;
    Ok(sort_keys(value))
}

/// Writes `msg` as proto3 JSON to `out` without building it in memory
/// first, and without sorting keys: for large throwaway files (the
/// pre-flight bootstrap), where the canonical form buys nothing.
pub fn write_json<M: Message + prost::Name>(
    msg: &M,
    out: impl std::io::Write,
) -> Result<(), RenderError> {
    let mut ser = serde_json::Serializer::new(out);
    dynamic(msg)?
        .serialize_with_options(&mut ser, &options())
        .map_err(|e| RenderError::Convert {
            message: M::full_name(),
            reason: e.to_string(),
        })
}

/// Rebuilds every object with sorted keys, so output never depends on
/// protobuf map iteration order or on serde_json's features.
fn sort_keys(v: serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match v {
        Value::Object(map) => {
            let mut entries: Vec<(String, Value)> = map.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            Value::Object(
                entries
                    .into_iter()
                    .map(|(k, v)| (k, sort_keys(v)))
                    .collect(),
            )
        }
        Value::Array(items) => Value::Array(items.into_iter().map(sort_keys).collect()),
        other => other,
    }
}

/// YAML text of any Envoy message.
pub fn to_yaml<M: Message + prost::Name>(msg: &M) -> Result<String, RenderError> {
    let value = to_json(msg)?;
    serde_norway::to_string(&value).map_err(|e| RenderError::Convert {
        message: M::full_name(),
        reason: e.to_string(),
    })
}

/// One file to hand to Envoy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderedFile {
    /// Absolute destination.
    pub path: PathBuf,
    /// The whole file.
    pub contents: String,
    /// The `version_info` inside: a hash of the resources, so an unchanged
    /// file is byte-identical and need not be rewritten.
    pub version: String,
}

/// Wraps resources in a DiscoveryResponse whose version is their content hash.
pub(crate) fn discovery_file<M: Message + prost::Name>(
    path: PathBuf,
    items: &[M],
) -> Result<RenderedFile, RenderError> {
    let resources = items
        .iter()
        .map(|m| to_json(&crate::pb::any(m)))
        .collect::<Result<Vec<_>, RenderError>>()?;
    Ok(file_from_json(path, &M::type_url(), resources))
}

/// A DiscoveryResponse file of already-rendered resources (each a JSON object
/// with its `@type`). Its `version_info` is the hash of everything else in
/// it, so equal resources always give byte-equal files.
pub fn file_from_json(
    path: PathBuf,
    type_url: &str,
    resources: Vec<serde_json::Value>,
) -> RenderedFile {
    let mut doc = serde_json::json!({ "type_url": type_url, "resources": resources });
    let version = content_hash(doc.to_string().as_bytes());
    doc["version_info"] = serde_json::Value::String(version.clone());
    let contents = format!("{:#}\n", sort_keys(doc));
    RenderedFile {
        path,
        contents,
        version,
    }
}

/// First 16 hex digits of the SHA-256 of `bytes`.
pub(crate) fn content_hash(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

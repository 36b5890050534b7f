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

use crate::{EnvoyResources, XdsLayout};

/// The descriptor set envoy-types 0.7.7 ships (not exported by the crate, so
/// vendored; a test pins it to the resolved crate's copy).
static DESCRIPTORS: &[u8] = include_bytes!("../descriptor/envoy-types.bin");

static POOL: LazyLock<Result<DescriptorPool, String>> = LazyLock::new(pruned_pool);

/// Every message we emit, directly or packed in an `Any`. Rendering a type
/// missing here fails loudly (the golden tests cover every `Any` we pack).
fn emitted_types() -> Vec<String> {
    use envoy_types::pb::envoy::config::bootstrap::v3::Bootstrap;
    use envoy_types::pb::envoy::config::cluster::v3::Cluster;
    use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
    use envoy_types::pb::envoy::config::listener::v3::Listener;
    use envoy_types::pb::envoy::extensions::access_loggers::file::v3::FileAccessLog;
    use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
    use envoy_types::pb::envoy::extensions::filters::network::connection_limit::v3::ConnectionLimit;
    use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
    use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::TcpProxy;
    use envoy_types::pb::envoy::extensions::resource_monitors::downstream_connections::v3::DownstreamConnectionsConfig;
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
        DownstreamTlsContext, Secret, UpstreamTlsContext,
    };
    use envoy_types::pb::envoy::extensions::upstreams::http::v3::HttpProtocolOptions;
    use prost::Name;
    vec![
        DiscoveryResponse::full_name(),
        Bootstrap::full_name(),
        Listener::full_name(),
        Cluster::full_name(),
        ClusterLoadAssignment::full_name(),
        Secret::full_name(),
        HttpConnectionManager::full_name(),
        Router::full_name(),
        TcpProxy::full_name(),
        ConnectionLimit::full_name(),
        FileAccessLog::full_name(),
        DownstreamTlsContext::full_name(),
        UpstreamTlsContext::full_name(),
        HttpProtocolOptions::full_name(),
        DownstreamConnectionsConfig::full_name(),
    ]
}

/// A pool of only the proto files our messages need (and their imports).
/// The whole set of about 400 files costs some 50 MB once decoded; the
/// agent keeps the pool for its whole life.
fn pruned_pool() -> Result<DescriptorPool, String> {
    use prost_reflect::prost_types::FileDescriptorSet;
    use std::collections::{BTreeSet, HashMap};
    let set = FileDescriptorSet::decode(DESCRIPTORS).map_err(|e| e.to_string())?;
    let by_name: HashMap<&str, &prost_reflect::prost_types::FileDescriptorProto> =
        set.file.iter().map(|f| (f.name(), f)).collect();
    let mut wanted: Vec<&str> = Vec::new();
    for full in emitted_types() {
        let file = set
            .file
            .iter()
            .find(|f| {
                f.message_type
                    .iter()
                    .any(|m| format!("{}.{}", f.package(), m.name()) == full)
            })
            .ok_or_else(|| format!("no file defines {full}"))?;
        wanted.push(file.name());
    }
    let mut keep: BTreeSet<&str> = BTreeSet::new();
    while let Some(name) = wanted.pop() {
        if keep.insert(name) {
            let file = by_name
                .get(name)
                .ok_or_else(|| format!("missing imported file {name}"))?;
            wanted.extend(file.dependency.iter().map(String::as_str));
        }
    }
    let pruned = FileDescriptorSet {
        file: set
            .file
            .iter()
            .filter(|f| keep.contains(f.name()))
            .cloned()
            .collect(),
    };
    DescriptorPool::from_file_descriptor_set(pruned).map_err(|e| e.to_string())
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

/// Canonical proto3 JSON of any Envoy message, with snake_case field names
/// and keys in sorted order.
pub fn to_json<M: Message + prost::Name>(msg: &M) -> Result<serde_json::Value, RenderError> {
    let pool = POOL
        .as_ref()
        .map_err(|e| RenderError::Descriptor(e.clone()))?;
    let full_name = M::full_name();
    let desc = pool
        .get_message_by_name(&full_name)
        .ok_or_else(|| RenderError::Descriptor(format!("no message {full_name}")))?;
    let convert = |reason: String| RenderError::Convert {
        message: full_name.clone(),
        reason,
    };
    let dynamic = DynamicMessage::decode(desc, msg.encode_to_vec().as_slice())
        .map_err(|e| convert(e.to_string()))?;
    let value = dynamic
        .serialize_with_options(
            serde_json::value::Serializer,
            &SerializeOptions::new().use_proto_field_name(true),
        )
        .map_err(|e| convert(e.to_string()))?;
    Ok(sort_keys(value))
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
fn discovery_file<M: Message + prost::Name>(
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

/// Every dynamic file, in the order they must reach Envoy: secrets and
/// endpoints before the clusters and listeners that refer to them, clusters
/// before listeners.
pub fn render_files(
    resources: &EnvoyResources,
    layout: &XdsLayout,
) -> Result<Vec<RenderedFile>, RenderError> {
    let mut out = Vec::new();
    for s in &resources.secrets {
        out.push(discovery_file(
            layout.sds_file(&s.name),
            std::slice::from_ref(s),
        )?);
    }
    for e in &resources.endpoints {
        out.push(discovery_file(
            layout.eds_file(&e.cluster_name),
            std::slice::from_ref(e),
        )?);
    }
    out.push(discovery_file(layout.cds_file(), &resources.clusters)?);
    out.push(discovery_file(layout.lds_file(), &resources.listeners)?);
    Ok(out)
}

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

static POOL: LazyLock<Result<DescriptorPool, String>> =
    LazyLock::new(|| DescriptorPool::decode(DESCRIPTORS).map_err(|e| e.to_string()));

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
        .map(|m| Ok(crate::pb::any(m)))
        .collect::<Result<Vec<_>, RenderError>>()?;
    let mut response = DiscoveryResponse {
        type_url: M::type_url(),
        resources,
        ..Default::default()
    };
    // Hash the canonical JSON rather than the protobuf bytes: protobuf map
    // fields encode in random order.
    let unversioned =
        serde_json::to_string(&to_json(&response)?).map_err(|e| RenderError::Convert {
            message: M::full_name(),
            reason: e.to_string(),
        })?;
    let version = content_hash(unversioned.as_bytes());
    response.version_info = version.clone();
    let contents =
        serde_json::to_string_pretty(&to_json(&response)?).map_err(|e| RenderError::Convert {
            message: M::full_name(),
            reason: e.to_string(),
        })? + "\n";
    Ok(RenderedFile {
        path,
        contents,
        version,
    })
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

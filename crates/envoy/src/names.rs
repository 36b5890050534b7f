//! The only place Envoy resource names and file locations are minted.
//!
//! Ids are validated to `[A-Za-z0-9_-]{1,64}`, so every name below is safe as
//! an Envoy resource name, a stat prefix and a file name.

use std::path::{Path, PathBuf};

/// Name of the listener, route config, cluster and stat prefix of a load balancer.
pub fn lb(id: &str) -> String {
    format!("lb_{id}")
}

/// Name of the SDS secret holding a load balancer's certificate and key.
pub fn cert_secret(id: &str) -> String {
    format!("lb_{id}_cert")
}

/// Name of the SDS secret holding a load balancer's client CA.
pub fn ca_secret(id: &str) -> String {
    format!("lb_{id}_client_ca")
}

/// Metadata key that selects the TLS transport socket for https health checks.
pub const HC_TLS_MATCH: &str = "vpsie_hc_tls";

/// Where each kind of dynamic file lives below the xDS root.
///
/// Each resource type gets its own watched directory, and each EDS and SDS
/// resource its own subdirectory, because a rename in a watched directory
/// makes Envoy re-read every subscription watching it, and because LDS is
/// processed before CDS when both see the same move event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XdsLayout {
    root: PathBuf,
}

impl XdsLayout {
    /// A layout rooted at `root`, which should be absolute.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }
    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }
    /// The watched directory for listeners.
    pub fn lds_dir(&self) -> PathBuf {
        self.root.join("lds")
    }
    /// The listeners file.
    pub fn lds_file(&self) -> PathBuf {
        self.lds_dir().join("lds.json")
    }
    /// The watched directory for clusters.
    pub fn cds_dir(&self) -> PathBuf {
        self.root.join("cds")
    }
    /// The clusters file.
    pub fn cds_file(&self) -> PathBuf {
        self.cds_dir().join("cds.json")
    }
    /// The watched directory of one cluster's endpoints.
    pub fn eds_dir(&self, cluster: &str) -> PathBuf {
        self.root.join("eds").join(cluster)
    }
    /// One cluster's endpoints file.
    pub fn eds_file(&self, cluster: &str) -> PathBuf {
        self.eds_dir(cluster).join("eds.json")
    }
    /// The watched directory of one secret.
    pub fn sds_dir(&self, secret: &str) -> PathBuf {
        self.root.join("sds").join(secret)
    }
    /// One secret's file.
    pub fn sds_file(&self, secret: &str) -> PathBuf {
        self.sds_dir(secret).join("sds.json")
    }
    /// The bootstrap file.
    pub fn bootstrap_file(&self) -> PathBuf {
        self.root.join("bootstrap.yaml")
    }
}

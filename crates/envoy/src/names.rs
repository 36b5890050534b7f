//! The only place Envoy resource names and file locations are minted.
//!
//! Ids are validated to `[A-Za-z0-9_-]{1,64}`, so every name below is safe as
//! an Envoy resource name, a stat prefix and a file name.

use std::path::{Path, PathBuf};

/// Name of the listener, route config, cluster and stat prefix of a load balancer.
pub fn lb(id: &str) -> String {
    format!("lb_{id}")
}

/// Separates a load balancer's name from the part that names one of its
/// pools, extra listeners or certificates. It is outside the id alphabet,
/// so `lb_a` + pool `b_c` never meets `lb_a_b` + pool `c`, and Envoy keeps
/// it in stat names (it rewrites `:`, and `.` would split the name).
pub const SEP: char = '~';

/// Name of the cluster of one pool: the default pool's is [`lb`], so
/// documents without pools keep their names, stats and dashboards.
pub fn pool_cluster(lb_id: &str, pool: &str) -> String {
    if pool == vpsie_lb_model::DEFAULT_POOL {
        lb(lb_id)
    } else {
        format!("lb_{lb_id}{SEP}{pool}")
    }
}

/// Name (and stat prefix) of the listener on `redirect_http_port`.
pub fn redirect_listener(id: &str) -> String {
    format!("lb_{id}{SEP}redirect")
}

/// Name (and stat prefix) of the QUIC listener of an https load balancer
/// with `http3`.
pub fn quic_listener(id: &str) -> String {
    format!("lb_{id}{SEP}quic")
}

/// Name of the SDS secret of the `n`-th (from 1) certificate chosen by SNI.
pub fn sni_secret(id: &str, n: usize) -> String {
    format!("lb_{id}_cert{SEP}{n}")
}

/// Name of the SDS secret holding a load balancer's certificate and key.
pub fn cert_secret(id: &str) -> String {
    format!("lb_{id}_cert")
}

/// Name of the SDS secret holding a load balancer's client CA.
pub fn ca_secret(id: &str) -> String {
    format!("lb_{id}_client_ca")
}

/// Name of the bootstrap's static cluster that reaches the agent's xDS
/// server. Load-balancer names all start with `lb_`, so it cannot clash.
pub const XDS_CLUSTER: &str = "vpsie_lb_xds";
/// The static cluster that reaches the WAF service.
pub const WAF_CLUSTER: &str = "vpsie_lb_waf";

/// The bootstrap's cluster of the agent's ACME challenge responder, which
/// redirect listeners send `/.well-known/acme-challenge/` to.
pub const ACME_CLUSTER: &str = "vpsie_lb_acme";

/// Metadata key that selects the TLS transport socket for https health checks.
pub const HC_TLS_MATCH: &str = "vpsie_hc_tls";

/// Where each kind of dynamic file lives below the xDS root.
///
/// Each resource type gets its own watched directory, and each EDS and SDS
/// resource its own subdirectory, because a rename in a watched directory
/// makes Envoy re-read every subscription watching it, and because LDS is
/// processed before CDS when both see the same move event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilesLayout {
    root: PathBuf,
}

/// The old name of [`FilesLayout`], kept for callers written before the rename.
pub type XdsLayout = FilesLayout;

impl FilesLayout {
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
    /// The watched directory of one route configuration.
    pub fn rds_dir(&self, name: &str) -> PathBuf {
        self.root.join("rds").join(name)
    }
    /// One route configuration's file.
    pub fn rds_file(&self, name: &str) -> PathBuf {
        self.rds_dir(name).join("rds.json")
    }
    /// The directory holding one watched directory per route configuration.
    pub fn rds_root(&self) -> PathBuf {
        self.root.join("rds")
    }
    /// The bootstrap file.
    pub fn bootstrap_file(&self) -> PathBuf {
        self.root.join("bootstrap.yaml")
    }
    /// The directory holding one watched directory per cluster's endpoints.
    pub fn eds_root(&self) -> PathBuf {
        self.root.join("eds")
    }
    /// The directory holding one watched directory per secret.
    pub fn sds_root(&self) -> PathBuf {
        self.root.join("sds")
    }
    /// What the file at `path` holds, if it is one of this layout's files.
    pub fn kind_of(&self, path: &Path) -> Option<FileKind> {
        if path == self.lds_file() {
            return Some(FileKind::Listeners);
        }
        if path == self.cds_file() {
            return Some(FileKind::Clusters);
        }
        let dir = path.parent()?;
        let name = dir.file_name()?.to_str()?.to_owned();
        match dir.parent()? {
            p if p == self.eds_root() && path == self.eds_file(&name) => {
                Some(FileKind::Endpoints(name))
            }
            p if p == self.sds_root() && path == self.sds_file(&name) => {
                Some(FileKind::Secret(name))
            }
            p if p == self.rds_root() && path == self.rds_file(&name) => {
                Some(FileKind::Routes(name))
            }
            _ => None,
        }
    }
}

/// What one file of an [`FilesLayout`] holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileKind {
    /// Every listener.
    Listeners,
    /// Every cluster.
    Clusters,
    /// The endpoints of the named cluster.
    Endpoints(String),
    /// The named secret.
    Secret(String),
    /// The named route configuration.
    Routes(String),
}

impl FileKind {
    /// The prefix of the stats of the subscription that reads this file,
    /// e.g. `cluster.lb_web` (`update_attempt`, `version_text` below it).
    pub fn stats_prefix(&self) -> String {
        match self {
            FileKind::Listeners => "listener_manager.lds".into(),
            FileKind::Clusters => "cluster_manager.cds".into(),
            FileKind::Endpoints(cluster) => format!("cluster.{cluster}"),
            FileKind::Secret(name) => format!("sds.{name}"),
            // Each route configuration is read by the connection manager
            // whose stat prefix is the same name.
            FileKind::Routes(name) => format!("http.{name}.rds.{name}"),
        }
    }
    /// Whether the file is one of many, each in its own watched directory.
    pub fn is_per_resource(&self) -> bool {
        matches!(
            self,
            FileKind::Endpoints(_) | FileKind::Secret(_) | FileKind::Routes(_)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_file_of_the_layout_has_a_kind_and_a_subscription() {
        let l = FilesLayout::new("/x");
        let cases = [
            (
                l.lds_file(),
                Some(FileKind::Listeners),
                "listener_manager.lds",
            ),
            (
                l.cds_file(),
                Some(FileKind::Clusters),
                "cluster_manager.cds",
            ),
            (
                l.eds_file("lb_a"),
                Some(FileKind::Endpoints("lb_a".into())),
                "cluster.lb_a",
            ),
            (
                l.sds_file("lb_a_cert"),
                Some(FileKind::Secret("lb_a_cert".into())),
                "sds.lb_a_cert",
            ),
            (
                l.rds_file("lb_a"),
                Some(FileKind::Routes("lb_a".into())),
                "http.lb_a.rds.lb_a",
            ),
        ];
        for (path, kind, prefix) in cases {
            let got = l.kind_of(&path);
            assert_eq!(got, kind, "{}", path.display());
            assert_eq!(got.map(|k| k.stats_prefix()).as_deref(), Some(prefix));
        }
        assert_eq!(l.kind_of(Path::new("/x/eds/lb_a/other.json")), None);
        assert_eq!(l.kind_of(Path::new("/y/lds/lds.json")), None);
        assert_eq!(l.kind_of(&l.bootstrap_file()), None);
    }
}

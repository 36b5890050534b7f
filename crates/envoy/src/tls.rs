//! TLS termination: the listener's TLS context and the SDS secrets it reads.
//!
//! Secrets reference the operator's PEM files by name instead of inlining
//! them, so no key material is ever copied into our files, and Envoy reloads
//! the certificate by itself when the files on disk are replaced.

use std::path::Path;

use envoy_types::pb::envoy::config::core::v3::{DataSource, WatchedDirectory, data_source};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, CommonTlsContext, DownstreamTlsContext, SdsSecretConfig, Secret,
    TlsCertificate, TlsParameters, UpstreamTlsContext, common_tls_context, secret,
    tls_parameters::TlsProtocol,
};
use envoy_types::pb::google::protobuf::BoolValue;
use vpsie_lb_model::{LoadBalancer, TlsVersion};

use crate::{Target, TranslateOptions, names, pb};

fn protocol(v: TlsVersion) -> i32 {
    match v {
        TlsVersion::Tls12 => TlsProtocol::TlSv12 as i32,
        TlsVersion::Tls13 => TlsProtocol::TlSv13 as i32,
    }
}

fn sds(name: String, opts: &TranslateOptions) -> SdsSecretConfig {
    let sds_config = match &opts.delivery {
        Target::Files(layout) => pb::file_source(&layout.sds_file(&name), &layout.sds_dir(&name)),
        Target::Ads => pb::ads_source(),
        // No config source: the secret comes from the bootstrap's static_resources.
        Target::Static => None,
    };
    SdsSecretConfig { name, sds_config }
}

/// A TLS context of the listener serving the certificate in `secret`, for
/// https load balancers.
pub(crate) fn downstream_context(
    lb: &LoadBalancer,
    secret: String,
    opts: &TranslateOptions,
) -> Option<DownstreamTlsContext> {
    let tls = lb.tls.as_ref()?;
    let validation_context_type = tls.ca_cert_path.as_ref().map(|_| {
        common_tls_context::ValidationContextType::ValidationContextSdsSecretConfig(sds(
            names::ca_secret(&lb.id),
            opts,
        ))
    });
    Some(DownstreamTlsContext {
        common_tls_context: Some(CommonTlsContext {
            tls_params: Some(TlsParameters {
                tls_minimum_protocol_version: protocol(tls.min_version),
                tls_maximum_protocol_version: tls
                    .max_version
                    .map_or(TlsProtocol::TlsAuto as i32, protocol),
                // TLS 1.3 suites are not configurable; the list only matters when 1.2 is allowed.
                cipher_suites: if tls.min_version == TlsVersion::Tls12 {
                    tls.cipher_suites.clone()
                } else {
                    vec![]
                },
                ..Default::default()
            }),
            tls_certificate_sds_secret_configs: vec![sds(secret, opts)],
            alpn_protocols: tls.alpn.clone(),
            validation_context_type,
            ..Default::default()
        }),
        require_client_certificate: tls.ca_cert_path.as_ref().map(|_| BoolValue { value: true }),
        ..Default::default()
    })
}

fn file(path: &str) -> Option<DataSource> {
    Some(DataSource {
        specifier: Some(data_source::Specifier::Filename(path.to_owned())),
        ..Default::default()
    })
}

/// Watches the directory holding `paths` when they share one, so that an
/// atomic directory swap (as Kubernetes does with `..data`) also rotates.
fn watched_dir(paths: &[&str]) -> Option<WatchedDirectory> {
    let mut dirs = paths.iter().map(|p| Path::new(p).parent());
    let first = dirs.next()??;
    if dirs.all(|d| d == Some(first)) && first != Path::new("/") {
        Some(WatchedDirectory {
            path: first.display().to_string(),
            ..Default::default()
        })
    } else {
        None
    }
}

fn certificate(name: String, cert: &str, key: &str) -> Secret {
    Secret {
        name,
        r#type: Some(secret::Type::TlsCertificate(TlsCertificate {
            certificate_chain: file(cert),
            private_key: file(key),
            watched_directory: watched_dir(&[cert, key]),
            ..Default::default()
        })),
    }
}

/// The SDS secrets of one load balancer: its certificate, those chosen by
/// SNI, and its client CA if any. Each is its own secret, so replacing one
/// file rotates one certificate.
pub(crate) fn secrets(lb: &LoadBalancer) -> Vec<Secret> {
    let Some(tls) = lb.tls.as_ref().filter(|t| !t.awaits_certificate()) else {
        return vec![];
    };
    let mut out = vec![certificate(
        names::cert_secret(&lb.id),
        &tls.certificate_path,
        &tls.private_key_path,
    )];
    for (i, c) in tls.certificates.iter().enumerate() {
        out.push(certificate(
            names::sni_secret(&lb.id, i + 1),
            &c.certificate_path,
            &c.private_key_path,
        ));
    }
    if let Some(ca) = &tls.ca_cert_path {
        out.push(Secret {
            name: names::ca_secret(&lb.id),
            r#type: Some(secret::Type::ValidationContext(
                CertificateValidationContext {
                    trusted_ca: file(ca),
                    watched_directory: watched_dir(&[ca]),
                    ..Default::default()
                },
            )),
        });
    }
    out
}

/// TLS towards a backend for https health checks. The backend's certificate
/// is not verified: the model has no CA for backends, and the check only
/// asks whether the backend answers.
pub(crate) fn health_check_context() -> UpstreamTlsContext {
    UpstreamTlsContext {
        common_tls_context: Some(CommonTlsContext::default()),
        ..Default::default()
    }
}

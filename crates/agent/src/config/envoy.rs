//! The `envoy` keys: the local Envoy and how resources reach it.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::{DEFAULT_DELIVERY, DeliveryKind, Envoy, RawEnvoy, default_xds_socket, parse_duration};
use crate::listen::{local_address, stats_address};

/// Reads `envoy`, adding what is wrong to `problems`.
pub(super) fn read(e: RawEnvoy, problems: &mut Vec<String>) -> Envoy {
    let admin_address = local_address(
        problems,
        "envoy.admin_address",
        e.admin_address.as_deref(),
        vpsie_lb_envoy::default_admin_address(),
        "the admin api is unauthenticated",
    );
    let stats_address =
        stats_address(&admin_address, e.stats_address.as_deref()).unwrap_or_else(|e| {
            problems.push(format!("envoy.stats_address: {e}"));
            None
        });
    let listen_address = match e
        .listen_address
        .as_deref()
        .unwrap_or("0.0.0.0")
        .parse::<IpAddr>()
    {
        Ok(a) => a,
        Err(err) => {
            problems.push(format!("envoy.listen_address: {err}"));
            IpAddr::from([0, 0, 0, 0])
        }
    };
    let drain_time = match e.drain_time.as_ref().map(parse_duration) {
        None => Duration::from_secs(30),
        Some(Ok(d)) => d,
        Some(Err(msg)) => {
            problems.push(format!("envoy.drain_time: {msg}"));
            Duration::from_secs(30)
        }
    };
    let access_log_sample_percent = match e.access_log_sample_percent {
        None => vpsie_lb_envoy::DEFAULT_ACCESS_LOG_SAMPLE_PERCENT,
        Some(p) if p <= 100 => p,
        Some(p) => {
            problems.push(format!(
                "envoy.access_log_sample_percent: must be 0..=100 (got {p})"
            ));
            vpsie_lb_envoy::DEFAULT_ACCESS_LOG_SAMPLE_PERCENT
        }
    };
    let delivery = match e.delivery.as_deref().map(str::parse::<DeliveryKind>) {
        None => DEFAULT_DELIVERY,
        Some(Ok(d)) => d,
        Some(Err(msg)) => {
            problems.push(format!("envoy.delivery: {msg}"));
            DEFAULT_DELIVERY
        }
    };
    let xds_socket = e.xds_socket.unwrap_or_else(default_xds_socket);
    super::socket_path("envoy.xds_socket", &xds_socket, problems);
    let waf_socket = e
        .waf_socket
        .unwrap_or_else(|| PathBuf::from(vpsie_lb_envoy::DEFAULT_WAF_SOCKET));
    super::socket_path("envoy.waf_socket", &waf_socket, problems);
    let waf_filter = e
        .waf_filter
        .unwrap_or_else(|| PathBuf::from(vpsie_lb_envoy::DEFAULT_WAF_FILTER));
    let waf_engine = match e.waf_engine.as_deref() {
        None => vpsie_lb_envoy::WafEngine::Service,
        Some(kind) => vpsie_lb_envoy::WafEngine::parse(kind, waf_filter).unwrap_or_else(|msg| {
            problems.push(format!("envoy.waf_engine: {msg}"));
            vpsie_lb_envoy::WafEngine::Service
        }),
    };
    let rate_limit_tracked_clients = match e.rate_limit_tracked_clients {
        None => vpsie_lb_envoy::DEFAULT_TRACKED_CLIENTS,
        Some(n) if (1..=MAX_TRACKED_CLIENTS).contains(&n) => n,
        Some(n) => {
            problems.push(format!(
                "envoy.rate_limit_tracked_clients: must be 1..={MAX_TRACKED_CLIENTS} (got {n})"
            ));
            vpsie_lb_envoy::DEFAULT_TRACKED_CLIENTS
        }
    };
    Envoy {
        config_dir: e.config_dir.unwrap_or_else(|| PathBuf::from("/etc/envoy")),
        admin_address,
        stats_address,
        binary_path: e
            .binary_path
            .unwrap_or_else(|| PathBuf::from("/usr/bin/envoy")),
        listen_address,
        manage: e.manage.unwrap_or(false),
        access_log: e.access_log.unwrap_or_else(|| "/dev/stdout".into()),
        access_log_sample_percent,
        drain_time,
        delivery,
        xds_socket,
        rate_limit_tracked_clients,
        waf_socket,
        waf_engine,
    }
}

/// Most client buckets per rate limit.
const MAX_TRACKED_CLIENTS: u32 = 1_000_000;

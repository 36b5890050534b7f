//! The aggregated discovery service Envoy connects to: delta xDS over a
//! Unix socket, on a tokio runtime of its own thread. Each stream serves
//! the hub's snapshot and records Envoy's answers in the hub; deciding what
//! to publish, and waiting for the answers, is the delivery's business.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse, Resource,
};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use vpsie_lb_envoy::ResourceType;

use super::hub::{Hub, Sent, Snapshot, StreamView};

/// Mode of the xDS socket: the agent's user and group, nobody else.
pub const SOCKET_MODE: u32 = 0o660;

/// Responses a stream may queue before it waits for Envoy to read them.
const QUEUE: usize = 16;

/// The running server; dropping it stops it.
pub struct XdsServer {
    socket: PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for XdsServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// Binds `socket` so that only the agent's user and group can connect
/// (mode 0660). The packaged units put Envoy's user in the agent's group;
/// the agent cannot hand the socket to Envoy's group itself, because its
/// unit's private user namespace does not map that group.
fn bind(socket: &Path) -> std::io::Result<std::os::unix::net::UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    crate::fsutil::prepare_socket_path(socket)?;
    let listener = std::os::unix::net::UnixListener::bind(socket)?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(SOCKET_MODE))?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// Starts serving `hub` on `socket`, on a thread of its own.
pub fn spawn(socket: &Path, hub: Arc<Hub>) -> std::io::Result<XdsServer> {
    let listener = bind(socket)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let service =
        AggregatedDiscoveryServiceServer::new(Ads { hub }).max_decoding_message_size(4 << 20);
    let thread = std::thread::Builder::new()
        .name("xds".into())
        .spawn(move || {
            runtime.block_on(async move {
                let listener = match tokio::net::UnixListener::from_std(listener) {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::error!(phase = "xds", error = %e, "xds socket unusable");
                        return;
                    }
                };
                let served = tonic::transport::Server::builder()
                    .add_service(service)
                    .serve_with_incoming_shutdown(
                        tokio_stream::wrappers::UnixListenerStream::new(listener),
                        async {
                            let _ = stopped.await;
                        },
                    )
                    .await;
                if let Err(e) = served {
                    tracing::error!(phase = "xds", error = %e, "xds server stopped");
                }
            });
        })?;
    Ok(XdsServer {
        socket: socket.to_path_buf(),
        stop: Some(stop),
        thread: Some(thread),
    })
}

struct Ads {
    hub: Arc<Hub>,
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for Ads {
    type StreamAggregatedResourcesStream = ReceiverStream<Result<DiscoveryResponse, Status>>;

    async fn stream_aggregated_resources(
        &self,
        _request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        Err(Status::unimplemented(
            "this server speaks delta xds only: set ads_config.api_type to DELTA_GRPC",
        ))
    }

    type DeltaAggregatedResourcesStream = ReceiverStream<Result<DeltaDiscoveryResponse, Status>>;

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        let (tx, rx) = tokio::sync::mpsc::channel(QUEUE);
        tokio::spawn(serve_stream(self.hub.clone(), request.into_inner(), tx));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

type Tx = tokio::sync::mpsc::Sender<Result<DeltaDiscoveryResponse, Status>>;

/// Serves one Envoy until its stream ends.
async fn serve_stream(hub: Arc<Hub>, mut incoming: Streaming<DeltaDiscoveryRequest>, tx: Tx) {
    let id = hub.connect();
    hub.metrics.stream(1);
    let mut published = hub.watch();
    let mut nonces = 0u64;
    tracing::info!(phase = "xds", stream = id, "envoy connected");
    loop {
        let kinds: Vec<ResourceType> = tokio::select! {
            message = incoming.message() => match message {
                Ok(Some(request)) => match hub.with_stream(id, |view, _| on_request(view, request, &hub.metrics)) {
                    Some(Some(kind)) => vec![kind],
                    _ => continue,
                },
                Ok(None) => break,
                Err(e) => {
                    tracing::info!(phase = "xds", stream = id, error = %e, "envoy stream failed");
                    break;
                }
            },
            changed = published.changed() => match changed {
                Ok(()) => ResourceType::ALL.to_vec(),
                Err(_) => break,
            },
        };
        let responses = hub
            .with_stream(id, |view, snapshot| {
                let snapshot = snapshot?;
                Some(
                    kinds
                        .iter()
                        .filter_map(|kind| respond(view, snapshot, *kind, &mut nonces))
                        .collect::<Vec<_>>(),
                )
            })
            .flatten()
            .unwrap_or_default();
        for r in responses {
            if let Some(kind) = ResourceType::from_type_url(&r.type_url) {
                hub.metrics.responded(kind);
            }
            if tx.send(Ok(r)).await.is_err() {
                break;
            }
        }
    }
    hub.metrics.stream(-1);
    hub.disconnect(id);
    tracing::info!(phase = "xds", stream = id, "envoy disconnected");
}

/// Records what a request says: a subscription change, what Envoy has on
/// reconnect, and its answer to a response. Returns the type to answer.
fn on_request(
    view: &mut StreamView,
    request: DeltaDiscoveryRequest,
    metrics: &super::metrics::XdsMetrics,
) -> Option<ResourceType> {
    let Some(kind) = ResourceType::from_type_url(&request.type_url) else {
        tracing::debug!(phase = "xds", type_url = %request.type_url, "a type we do not serve");
        return None;
    };
    for (name, version) in request.initial_resource_versions {
        // Envoy kept these from an earlier stream: same name and version
        // means the same content, so they are not sent again.
        let key = (kind, name);
        view.known.insert(key.clone(), version.clone());
        view.acked.insert(key, version);
    }
    view.subscribe(
        kind,
        &request.resource_names_subscribe,
        &request.resource_names_unsubscribe,
    );
    if !request.response_nonce.is_empty() {
        let error = request.error_detail.map(|s| s.message.trim().to_owned());
        if let Some(message) = &error {
            metrics.nacked(kind);
            tracing::warn!(phase = "xds", type_url = %request.type_url, nonce = %request.response_nonce, error = %message, "envoy refused a push");
        }
        view.record_answer(&request.response_nonce, error);
    }
    Some(kind)
}

/// The response that brings `view` to `snapshot` for `kind`, if one is due.
fn respond(
    view: &mut StreamView,
    snapshot: &Snapshot,
    kind: ResourceType,
    nonces: &mut u64,
) -> Option<DeltaDiscoveryResponse> {
    if !view.subscribed.contains_key(&kind) {
        return None;
    }
    let pending = view.pending(kind, &snapshot.resources);
    let first = view.answered.insert(kind);
    if pending.upserts.is_empty() && pending.removed.is_empty() && !first {
        return None;
    }
    *nonces += 1;
    let nonce = nonces.to_string();
    let response = DeltaDiscoveryResponse {
        system_version_info: snapshot.generation.to_string(),
        type_url: kind.type_url().into(),
        nonce: nonce.clone(),
        resources: pending
            .upserts
            .iter()
            .filter_map(|(key, version)| {
                let r = snapshot.resources.get(key)?;
                Some(Resource {
                    name: key.1.clone(),
                    version: version.clone(),
                    resource: Some(r.any.clone()),
                    ..Default::default()
                })
            })
            .collect(),
        removed_resources: pending.removed.iter().map(|(_, n)| n.clone()).collect(),
        ..Default::default()
    };
    view.record_sent(
        nonce,
        Sent {
            generation: snapshot.generation,
            ..pending
        },
    );
    Some(response)
}

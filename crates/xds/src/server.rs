//! The aggregated discovery service Envoy connects to, over a Unix socket,
//! on a tokio runtime of its own thread: delta xDS (what our bootstrap
//! asks for) and state of the world (if an operator's does). Each stream
//! serves the hub's snapshot and records Envoy's answers in the hub;
//! deciding what to publish, and waiting for the answers, is the
//! delivery's business. What differs between the two variants is in
//! `delta.rs` and `sotw.rs`, behind `protocol.rs`'s trait.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use vpsie_lb_envoy::ResourceType;

use crate::hub::Hub;
use crate::protocol::Protocol;

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
    let listener = std::os::unix::net::UnixListener::bind(socket)?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(SOCKET_MODE))?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// Starts serving `hub` on `socket`, on a thread of its own. The caller
/// makes room for the socket first: its directory exists and no stale
/// socket file is left there (the agent's `fsutil::prepare_socket_path`).
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
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        let (tx, rx) = tokio::sync::mpsc::channel(QUEUE);
        tokio::spawn(serve_stream::<crate::sotw::Sotw>(
            self.hub.clone(),
            request.into_inner(),
            tx,
        ));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    type DeltaAggregatedResourcesStream = ReceiverStream<Result<DeltaDiscoveryResponse, Status>>;

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        let (tx, rx) = tokio::sync::mpsc::channel(QUEUE);
        tokio::spawn(serve_stream::<crate::delta::Delta>(
            self.hub.clone(),
            request.into_inner(),
            tx,
        ));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// Serves one Envoy until its stream ends.
async fn serve_stream<P: Protocol>(
    hub: Arc<Hub>,
    mut incoming: Streaming<P::Request>,
    tx: tokio::sync::mpsc::Sender<Result<P::Response, Status>>,
) {
    let id = hub.connect();
    hub.metrics.stream(1);
    let mut published = hub.watch();
    let mut nonces = 0u64;
    tracing::info!(
        phase = "xds",
        stream = id,
        variant = P::NAME,
        "envoy connected"
    );
    loop {
        let kinds: Vec<ResourceType> = tokio::select! {
            message = incoming.message() => match message {
                Ok(Some(request)) => match hub.with_stream(id, |view, _| P::on_request(view, request, &hub.metrics)) {
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
                        .filter_map(|kind| P::respond(view, snapshot, *kind, &mut nonces))
                        .collect::<Vec<_>>(),
                )
            })
            .flatten()
            .unwrap_or_default();
        for (kind, r) in responses {
            hub.metrics.responded(kind);
            if tx.send(Ok(r)).await.is_err() {
                break;
            }
        }
    }
    hub.metrics.stream(-1);
    hub.disconnect(id);
    tracing::info!(phase = "xds", stream = id, "envoy disconnected");
}

//! A worker's life in a cluster: bind its gRPC service and ring sockets, start the runtime,
//! register with the coordinator, heartbeat, stream progress, and return when the
//! coordinator says stop or stops answering. The `llmprune-worker` process runs this; so does
//! the coordinator for its in-process members (one process is a cluster of one member).

use super::runtime::{spawn_runtime, Fault, RuntimeOptions};
use super::service::WorkerService;
use crate::collective::{RingOptions, WorkerDevice};
use crate::confine::Confinement;
use crate::error::{Error, Result};
use llmprune_shared::proto::coordinator_client::CoordinatorClient;
use llmprune_shared::proto::worker_server::WorkerServer;
use llmprune_shared::proto::{
    attach_token, require_token, Capabilities, HeartbeatRequest, ProgressEvent, RegisterRequest, MAX_MESSAGE_BYTES, PROTOCOL_VERSION,
};
use llmprune_shared::tls::{check_listen, error_chain, scheme, url_host, Tls};
use std::net::SocketAddr;
use std::time::Duration;
use tokio_stream::wrappers::{TcpListenerStream, UnboundedReceiverStream};
use tracing::Instrument;

/// How a worker joins its coordinator.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// The coordinator's URL, e.g. `http://10.0.0.1:7070`.
    pub coordinator: String,
    pub token: String,
    /// Where the worker's gRPC service listens (port 0: any free port); its ring sockets bind
    /// the same address.
    pub listen: SocketAddr,
    /// The host other machines reach this worker at (default: the listen address).
    pub advertise_host: Option<String>,
    /// How long a collective waits for a silent peer.
    pub peer_timeout: Duration,
    /// How long to keep trying to reach the coordinator at start.
    pub connect_timeout: Duration,
    pub device: WorkerDevice,
    /// The worker's name in the coordinator's logs and errors.
    pub name: String,
    /// Where requests may read and write; a worker listening beyond loopback must be confined.
    pub confinement: Confinement,
    /// TLS for its service and its calls to the coordinator (`None`: plaintext).
    pub tls: Option<Tls>,
    /// Allow a plaintext service beyond loopback.
    pub insecure: bool,
    /// Testing only.
    pub fault: Option<Fault>,
}

/// Why a registration did not get through, with the transport's cause (a TLS refusal is in
/// the status's sources, not its message).
fn registration_refusal(s: &tonic::Status) -> String {
    match std::error::Error::source(s) {
        Some(cause) => {
            format!("{} ({}; with TLS on one side, both sides need --tls-cert, --tls-key and --tls-ca from the same CA)", s.message(), error_chain(cause))
        }
        None => s.message().to_string(),
    }
}

/// How long the coordinator has to answer a registration.
const REGISTER_DEADLINE: Duration = Duration::from_secs(30);

fn coordinator_error(context: impl Into<String>, reason: impl std::fmt::Display) -> Error {
    Error::Coordinator { context: context.into(), reason: reason.to_string() }
}

/// What this machine offers, as the coordinator sizes shards by it.
fn capabilities(device: WorkerDevice) -> Capabilities {
    let free_ram = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| m.lines().find(|l| l.starts_with("MemAvailable:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok()))
        .map_or(0, |kb| kb * 1024);
    Capabilities {
        device_kind: device.kind(),
        device_memory_bytes: crate::collective::device_free_memory(device).unwrap_or(free_ram),
        cores: std::thread::available_parallelism().map_or(1, |n| n.get() as u32),
        free_ram_bytes: free_ram,
        hostname: std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_string()).unwrap_or_default(),
    }
}

/// Serves one worker until the coordinator stops it (`Ok`) or is lost (`Err`).
pub async fn serve(opts: ServeOptions) -> Result<()> {
    let listen = format!("--listen {}", opts.listen);
    check_listen("--listen", opts.listen, opts.tls.as_ref(), opts.insecure).map_err(|e| Error::Invalid(e.to_string()))?;
    if !opts.listen.ip().is_loopback() && !opts.confinement.is_confined() {
        return Err(Error::Invalid(format!(
            "{listen}: a worker reachable from other machines reads and writes only where it is told: give --model-root, --data-root and --output-root (directories its jobs may use)"
        )));
    }
    let grpc = tokio::net::TcpListener::bind(opts.listen).await.map_err(|e| Error::io(&listen, e))?;
    let grpc_addr = grpc.local_addr().map_err(|e| Error::io(&listen, e))?;
    let bind_ring = || std::net::TcpListener::bind(SocketAddr::new(opts.listen.ip(), 0)).map_err(|e| Error::io(format!("{listen} (ring socket)"), e));
    let (ring, replica_ring) = (bind_ring()?, bind_ring()?);
    let port = |l: &std::net::TcpListener| l.local_addr().map(|a| a.port()).map_err(|e| Error::io(format!("{listen} (ring socket)"), e));
    let host = opts.advertise_host.clone().unwrap_or_else(|| grpc_addr.ip().to_string());
    let ring_address = format!("{host}:{}", port(&ring)?);
    let replica_ring_address = format!("{host}:{}", port(&replica_ring)?);
    let worker_address = format!("{}://{host}:{}", scheme(opts.tls.as_ref()), grpc_addr.port());

    let (progress_tx, progress_rx) = tokio::sync::mpsc::unbounded_channel();
    let runtime = spawn_runtime(RuntimeOptions {
        ring_listener: ring,
        replica_ring_listener: replica_ring,
        ring: RingOptions { io_timeout: Some(opts.peer_timeout), ..RingOptions::default() },
        progress: progress_tx,
        fault: opts.fault,
        device: opts.device,
        confinement: opts.confinement.clone(),
    })?;
    let (shutdown_tx, mut shutdown_rx) = tokio::sync::watch::channel(false);
    // Messages carry scores, shapes and token ids (kilobytes to a few MiB for 70B models);
    // tensors go between workers over the collective, never through gRPC.
    let server = WorkerServer::new(WorkerService { runtime, shutdown: shutdown_tx.clone() })
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let service = tonic::service::interceptor::InterceptedService::new(server, require_token(opts.token.clone()));
    let mut server_stop = shutdown_rx.clone();
    let mut server = tonic::transport::Server::builder();
    if let Some(tls) = &opts.tls {
        server = server.tls_config(tls.server()).map_err(|e| Error::Invalid(format!("--tls-cert/--tls-key: {e}")))?;
    }
    let serving = tokio::spawn(server.add_service(service).serve_with_incoming_shutdown(TcpListenerStream::new(grpc), async move {
        let _ = server_stop.wait_for(|s| *s).await;
    }));
    let outcome = join_coordinator(&opts, worker_address, ring_address, replica_ring_address, grpc_addr, progress_rx, &mut shutdown_rx).await;
    let _ = shutdown_tx.send(true);
    let _ = serving.await;
    outcome
}

/// Until `rx` says stop (or its sender is gone). The watch's guard stays inside, so the
/// futures that wait on it can be sent between threads.
async fn stopped(rx: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

/// Registers, streams progress and heartbeats until stopped or the coordinator is lost.
async fn join_coordinator(
    opts: &ServeOptions,
    worker_address: String,
    ring_address: String,
    replica_ring_address: String,
    grpc_addr: SocketAddr,
    progress_rx: tokio::sync::mpsc::UnboundedReceiver<ProgressEvent>,
    shutdown_rx: &mut tokio::sync::watch::Receiver<bool>,
) -> Result<()> {
    let coordinator = &opts.coordinator;
    let mut endpoint = tonic::transport::Endpoint::from_shared(coordinator.clone())
        .map_err(|e| Error::Invalid(format!("--coordinator {coordinator}: {e}")))?
        .connect_timeout(Duration::from_secs(10));
    match (&opts.tls, coordinator.starts_with("https://")) {
        (Some(tls), true) => {
            endpoint = endpoint.tls_config(tls.client(url_host(coordinator))).map_err(|e| Error::Invalid(format!("--tls-ca: {e}")))?;
        }
        (Some(_), false) => return Err(Error::Invalid(format!("--coordinator {coordinator}: with --tls-* the coordinator is https://HOST:PORT"))),
        (None, true) => return Err(Error::Invalid(format!("--coordinator {coordinator}: an https coordinator needs --tls-cert, --tls-key and --tls-ca"))),
        (None, false) => {}
    }
    // Workers often start before the coordinator listens (a scheduler starts them together).
    let interceptor = attach_token(&opts.token).map_err(|e| Error::Invalid(format!("--token: {e}")))?;
    let registration = RegisterRequest {
        protocol_version: PROTOCOL_VERSION,
        worker_address,
        ring_address,
        replica_ring_address,
        capabilities: Some(capabilities(opts.device)),
        name: opts.name.clone(),
    };
    // Workers often start before the coordinator listens (a scheduler starts them together),
    // and a connection can drop before the first call: until the deadline, a failure to reach
    // the coordinator is tried again; its refusal (token, version, fields) is final.
    let deadline = tokio::time::Instant::now() + opts.connect_timeout;
    let (mut client, reply) = loop {
        let attempt = async {
            let channel = endpoint.connect().await.map_err(|e| error_chain(&e))?;
            let mut client = CoordinatorClient::with_interceptor(channel, interceptor.clone());
            let mut call = tonic::Request::new(registration.clone());
            call.set_timeout(REGISTER_DEADLINE);
            match tokio::time::timeout(REGISTER_DEADLINE, client.register(call)).await {
                Ok(Ok(reply)) => Ok(Ok((client, reply.into_inner()))),
                Ok(Err(s)) if matches!(s.code(), tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled | tonic::Code::Internal) => {
                    Err(registration_refusal(&s))
                }
                Ok(Err(s)) => Ok(Err(coordinator_error("the coordinator refused registration", s.message()))),
                Err(_) => Err(format!("no answer to the registration within {} s", REGISTER_DEADLINE.as_secs())),
            }
        };
        match attempt.await {
            Ok(registered) => break registered?,
            Err(e) if tokio::time::Instant::now() < deadline => {
                tracing::debug!(error = %e, "the coordinator is not reachable yet");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) => return Err(coordinator_error(format!("reaching the coordinator at {coordinator} for {} s", opts.connect_timeout.as_secs()), e)),
        }
    };
    // The span travels with the futures (an entered guard would not survive their awaits).
    let span = tracing::info_span!("worker", run_id = %reply.run_id, worker = %reply.worker_id);
    async {
        tracing::info!(grpc = %grpc_addr, "registered");
        let worker_id = reply.worker_id.clone();
        let mut events = client.clone();
        let stream_id = worker_id.clone();
        tokio::spawn(async move {
            let stream = UnboundedReceiverStream::new(progress_rx);
            let tagged = tokio_stream::StreamExt::map(stream, move |mut e: ProgressEvent| {
                e.worker_id = stream_id.clone();
                e
            });
            let _ = events.report_progress(tagged).await;
        });

        let interval = Duration::from_millis(u64::from(reply.heartbeat_interval_ms.max(100)));
        // Every heartbeat has a deadline, and a coordinator that answered none for its own
        // timeout is gone (stopped, hung or cut off): the worker then exits and frees its
        // device rather than hold it forever.
        let timeout = Duration::from_millis(u64::from(reply.heartbeat_timeout_ms)).max(2 * interval);
        // A busy coordinator may answer late; a quarter of the timeout still leaves retries.
        let deadline = (timeout / 4).max(interval);
        let mut answered = tokio::time::Instant::now();
        loop {
            tokio::select! {
                () = stopped(shutdown_rx) => break Ok(()),
                _ = tokio::time::sleep(interval) => {
                    if opts.fault == Some(Fault::Hang) {
                        continue;
                    }
                    let beat = HeartbeatRequest { protocol_version: PROTOCOL_VERSION, worker_id: worker_id.clone(), phase: String::new() };
                    let mut call = tonic::Request::new(beat);
                    call.set_timeout(deadline);
                    match tokio::time::timeout(deadline, client.heartbeat(call)).await {
                        Ok(Ok(r)) if r.get_ref().stop => break Ok(()),
                        Ok(Ok(_)) => answered = tokio::time::Instant::now(),
                        Ok(Err(s)) => tracing::warn!(error = %s.message(), "heartbeat failed"),
                        Err(_) => tracing::warn!(waited_ms = deadline.as_millis() as u64, "heartbeat unanswered"),
                    }
                    let silent = answered.elapsed();
                    if silent >= timeout {
                        break Err(coordinator_error(
                            format!("lost the coordinator at {coordinator}"),
                            format!("no heartbeat answered for {:.1} s; releasing the shard and exiting", silent.as_secs_f64()),
                        ));
                    }
                }
            }
        }
    }
    .instrument(span)
    .await
}

//! `llmprune-worker`: the process that owns a device and a model shard. It serves the
//! `pruner.v1.Worker` service, registers with the coordinator, heartbeats, streams progress,
//! and exits when the coordinator says so or stops answering.

use anyhow::{anyhow, Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use llmprune_shared::proto::coordinator_client::CoordinatorClient;
use llmprune_shared::proto::worker_server::WorkerServer;
use llmprune_shared::proto::{attach_token, require_token, Capabilities, HeartbeatRequest, RegisterRequest, PROTOCOL_VERSION};
use llmprune_worker::cluster::runtime::{spawn_runtime, Fault, RuntimeOptions};
use llmprune_worker::cluster::service::WorkerService;
use llmprune_worker::collective::{RingOptions, WorkerDevice};
use llmprune_worker::loader::open_model;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use tokio_stream::wrappers::{TcpListenerStream, UnboundedReceiverStream};
use tracing::Instrument;

const MAX_MESSAGE_BYTES: usize = llmprune_shared::proto::MAX_MESSAGE_BYTES;

#[global_allocator]
static ALLOCATOR: llmprune_worker::memory::MiMalloc = llmprune_worker::memory::MiMalloc;

#[derive(Parser)]
#[command(name = "llmprune-worker", version, about = "llmprune worker process")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Open a model (Hugging Face directory or GGUF) and print its per-layer shapes.
    Inspect {
        #[arg(long)]
        model: PathBuf,
    },
}

#[derive(Args)]
struct ServeArgs {
    /// The coordinator's address, e.g. http://10.0.0.1:7070.
    #[arg(long)]
    coordinator: Option<String>,
    /// The cluster token the coordinator expects.
    #[arg(long, env = "LLMPRUNE_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Where this worker's gRPC service listens (port 0: any free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// The host other machines reach this worker at [default: the --listen address].
    #[arg(long)]
    advertise_host: Option<String>,
    /// Seconds a collective waits for a silent peer before failing.
    #[arg(long, default_value_t = 600)]
    peer_timeout_s: u64,
    /// Seconds to keep trying to reach the coordinator at start.
    #[arg(long, default_value_t = 300)]
    connect_timeout_s: u64,
    /// Heartbeats the coordinator may miss before this worker gives up and exits.
    #[arg(long, default_value_t = 5)]
    missed_heartbeats: u32,
    /// Log format on stderr (RUST_LOG filters).
    #[arg(long, value_enum, default_value = "text")]
    log_format: LogFormat,
    /// Where this worker runs: `cpu`, or `cuda:N` for NCCL collectives on that GPU (a build
    /// with `--features nccl`).
    #[arg(long, default_value = "cpu", value_parser = WorkerDevice::parse)]
    device: WorkerDevice,
    /// This worker's name in the coordinator's logs and errors.
    #[arg(long, default_value = "")]
    name: String,
    /// Testing only: inject a fault.
    #[arg(long, value_enum, hide = true)]
    fault: Option<FaultArg>,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum FaultArg {
    ExitDuringScore,
    ExitDuringRecovery,
    /// Hang: stop heartbeating and never answer a command (a hung machine).
    Hang,
}

fn main() -> Result<()> {
    llmprune_worker::memory::configure_allocator();
    let cli = Cli::parse();
    let logs = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()));
    match cli.serve.log_format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().init(),
    }
    match cli.command {
        Some(Command::Inspect { model }) => {
            let opened = open_model(&model).with_context(|| format!("opening {}", model.display()))?;
            println!("{}", serde_json::to_string_pretty(&opened.spec)?);
            println!("parameters: {}", opened.spec.n_params());
            println!("tensors: {}", opened.weights.names().len());
            Ok(())
        }
        None => {
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
            rt.block_on(serve(cli.serve))
        }
    }
}

fn capabilities(device: WorkerDevice) -> Capabilities {
    let free_ram = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| m.lines().find(|l| l.starts_with("MemAvailable:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok()))
        .map_or(0, |kb| kb * 1024);
    Capabilities {
        device_kind: device.kind(),
        device_memory_bytes: free_ram,
        cores: std::thread::available_parallelism().map_or(1, |n| n.get() as u32),
        free_ram_bytes: free_ram,
        hostname: std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_string()).unwrap_or_default(),
    }
}

async fn serve(args: ServeArgs) -> Result<()> {
    let coordinator = args.coordinator.ok_or_else(|| anyhow!("--coordinator URL is required (or use `inspect`)"))?;
    let token = args.token.ok_or_else(|| anyhow!("--token (or LLMPRUNE_TOKEN) is required"))?;
    let grpc = tokio::net::TcpListener::bind(args.listen).await.with_context(|| format!("--listen {}", args.listen))?;
    let grpc_addr = grpc.local_addr()?;
    let ring = std::net::TcpListener::bind(SocketAddr::new(args.listen.ip(), 0)).context("binding the ring socket")?;
    let replica_ring = std::net::TcpListener::bind(SocketAddr::new(args.listen.ip(), 0)).context("binding the replica ring socket")?;
    let host = args.advertise_host.unwrap_or_else(|| grpc_addr.ip().to_string());
    let ring_address = format!("{host}:{}", ring.local_addr()?.port());
    let replica_ring_address = format!("{host}:{}", replica_ring.local_addr()?.port());
    let worker_address = format!("http://{host}:{}", grpc_addr.port());

    let (progress_tx, progress_rx) = tokio::sync::mpsc::unbounded_channel();
    let runtime = spawn_runtime(RuntimeOptions {
        ring_listener: ring,
        replica_ring_listener: replica_ring,
        ring: RingOptions { io_timeout: Some(Duration::from_secs(args.peer_timeout_s)), ..RingOptions::default() },
        progress: progress_tx,
        fault: args.fault.map(|f| match f {
            FaultArg::ExitDuringScore => Fault::ExitDuringScore,
            FaultArg::ExitDuringRecovery => Fault::ExitDuringRecovery,
            FaultArg::Hang => Fault::Hang,
        }),
        device: args.device,
    })?;
    let (shutdown_tx, mut shutdown_rx) = tokio::sync::watch::channel(false);
    // Messages carry scores, shapes and token ids (kilobytes to a few MiB for 70B models);
    // tensors go between workers over the collective, never through gRPC.
    let server = WorkerServer::new(WorkerService { runtime, shutdown: shutdown_tx.clone() })
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let service = tonic::service::interceptor::InterceptedService::new(server, require_token(token.clone()));
    let mut server_stop = shutdown_rx.clone();
    let serving =
        tokio::spawn(tonic::transport::Server::builder().add_service(service).serve_with_incoming_shutdown(TcpListenerStream::new(grpc), async move {
            let _ = server_stop.wait_for(|s| *s).await;
        }));

    let endpoint = tonic::transport::Endpoint::from_shared(coordinator.clone())
        .with_context(|| format!("--coordinator {coordinator}"))?
        .connect_timeout(Duration::from_secs(10));
    // Workers often start before the coordinator listens (a scheduler starts them together).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(args.connect_timeout_s);
    let channel = loop {
        match endpoint.connect().await {
            Ok(c) => break c,
            Err(e) if tokio::time::Instant::now() < deadline => {
                tracing::debug!(error = %e, "the coordinator is not up yet");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) => return Err(anyhow!("connecting to the coordinator at {coordinator} for {} s: {e}", args.connect_timeout_s)),
        }
    };
    let mut client = CoordinatorClient::with_interceptor(channel, attach_token(&token)?);
    let reply = client
        .register(RegisterRequest {
            protocol_version: PROTOCOL_VERSION,
            worker_address,
            ring_address,
            replica_ring_address,
            capabilities: Some(capabilities(args.device)),
            name: args.name.clone(),
        })
        .await
        .map_err(|s| anyhow!("the coordinator refused registration: {}", s.message()))?
        .into_inner();
    // The span travels with the futures (an entered guard would not survive their awaits).
    let span = tracing::info_span!("worker", run_id = %reply.run_id, worker = %reply.worker_id);
    let outcome = async {
        tracing::info!(grpc = %grpc_addr, "registered");
        let worker_id = reply.worker_id.clone();
        let mut events = client.clone();
        let stream_id = worker_id.clone();
        tokio::spawn(async move {
            let stream = UnboundedReceiverStream::new(progress_rx);
            let tagged = tokio_stream::StreamExt::map(stream, move |mut e: llmprune_shared::proto::ProgressEvent| {
                e.worker_id = stream_id.clone();
                e
            });
            let _ = events.report_progress(tagged).await;
        });

        let interval = Duration::from_millis(u64::from(reply.heartbeat_interval_ms.max(100)));
        let mut missed = 0;
        loop {
            tokio::select! {
                _ = shutdown_rx.wait_for(|s| *s) => break Ok(()),
                _ = tokio::time::sleep(interval) => {
                    if args.fault == Some(FaultArg::Hang) {
                        continue;
                    }
                    let beat = HeartbeatRequest { protocol_version: PROTOCOL_VERSION, worker_id: worker_id.clone(), phase: String::new() };
                    match client.heartbeat(beat).await {
                        Ok(r) if r.get_ref().stop => break Ok(()),
                        Ok(_) => missed = 0,
                        Err(s) => {
                            missed += 1;
                            tracing::warn!(missed, error = %s.message(), "heartbeat failed");
                            if missed >= args.missed_heartbeats {
                                break Err(anyhow!("lost the coordinator at {coordinator}: {} heartbeats failed ({})", missed, s.message()));
                            }
                        }
                    }
                }
            }
        }
    }
    .instrument(span)
    .await;
    let _ = shutdown_tx.send(true);
    let _ = serving.await;
    outcome
}

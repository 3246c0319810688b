//! `llmprune-worker`: the process that owns a device and a model shard. It serves the
//! `pruner.v1.Worker` service, registers with the coordinator, heartbeats, streams progress,
//! and exits when the coordinator says so or stops answering.

use anyhow::{anyhow, Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use llmprune_worker::cluster::runtime::Fault;
use llmprune_worker::cluster::serve::ServeOptions;
use llmprune_worker::collective::WorkerDevice;
use llmprune_worker::loader::open_model;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

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
    // Colour only on a terminal without NO_COLOR: workers started by the coordinator write to
    // a pipe, and logs redirected to a file stay plain text.
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr()) && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let logs = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(colour)
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

async fn serve(args: ServeArgs) -> Result<()> {
    let coordinator = args.coordinator.ok_or_else(|| anyhow!("--coordinator URL is required (or use `inspect`)"))?;
    let token = args.token.ok_or_else(|| anyhow!("--token (or LLMPRUNE_TOKEN) is required"))?;
    let opts = ServeOptions {
        coordinator,
        token,
        listen: args.listen,
        advertise_host: args.advertise_host,
        peer_timeout: Duration::from_secs(args.peer_timeout_s),
        connect_timeout: Duration::from_secs(args.connect_timeout_s),
        missed_heartbeats: args.missed_heartbeats,
        device: args.device,
        name: args.name,
        fault: args.fault.map(|f| match f {
            FaultArg::ExitDuringScore => Fault::ExitDuringScore,
            FaultArg::ExitDuringRecovery => Fault::ExitDuringRecovery,
            FaultArg::Hang => Fault::Hang,
        }),
    };
    Ok(llmprune_worker::cluster::serve::serve(opts).await?)
}

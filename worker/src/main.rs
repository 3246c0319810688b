//! `llmprune-worker`: the process that owns a device and a model shard. It serves the
//! `pruner.v1.Worker` service, registers with the coordinator, heartbeats, streams progress,
//! and exits when the coordinator says so or stops answering.

use anyhow::{anyhow, Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use llmprune_shared::tls::TlsFiles;
use llmprune_worker::cluster::runtime::Fault;
use llmprune_worker::cluster::serve::ServeOptions;
use llmprune_worker::collective::WorkerDevice;
use llmprune_worker::confine::Confinement;
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
    /// The cluster token the coordinator expects (visible in `ps`: prefer --token-file or
    /// LLMPRUNE_TOKEN).
    #[arg(long, env = "LLMPRUNE_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// A file whose first line is the cluster token (e.g. a mounted secret); it takes
    /// precedence over LLMPRUNE_TOKEN and --token.
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
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
    /// This worker's TLS certificate (PEM), for its service and its calls to the coordinator.
    #[arg(long, value_name = "PEM")]
    tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM).
    #[arg(long, value_name = "PEM")]
    tls_key: Option<PathBuf>,
    /// The cluster's CA (PEM): the coordinator's and the peers' certificates must chain to it.
    #[arg(long, value_name = "PEM")]
    tls_ca: Option<PathBuf>,
    /// Mutual TLS: callers must present a certificate from --tls-ca too.
    #[arg(long)]
    tls_mutual: bool,
    /// Check the coordinator's certificate against this name rather than its address.
    #[arg(long, value_name = "NAME")]
    tls_server_name: Option<String>,
    /// Allow a plaintext service on an address other machines can reach (a trusted network
    /// only).
    #[arg(long)]
    insecure: bool,
    /// A directory of models this worker may read (repeatable). A worker listening beyond
    /// loopback needs roots: every path a request names must lie under one.
    #[arg(long, value_name = "DIR")]
    model_root: Vec<PathBuf>,
    /// A directory of datasets (calibration, records, tasks, texts) this worker may read
    /// (repeatable).
    #[arg(long, value_name = "DIR")]
    data_root: Vec<PathBuf>,
    /// A directory this worker may write outputs and checkpoints under, and read them back
    /// as the next phase's model (repeatable).
    #[arg(long, value_name = "DIR")]
    output_root: Vec<PathBuf>,
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
        // Text for people: the module path adds a column of noise to every line.
        LogFormat::Text => logs.with_target(false).init(),
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
    let token = match (args.token, &args.token_file) {
        (_, Some(file)) => llmprune_shared::proto::read_token_file(file).with_context(|| format!("--token-file {}", file.display()))?,
        (Some(token), None) => token,
        (None, None) => return Err(anyhow!("--token-file FILE (or LLMPRUNE_TOKEN, or --token) is required")),
    };
    if token.is_empty() {
        return Err(anyhow!("the cluster token is empty (--token-file, LLMPRUNE_TOKEN or --token)"));
    }
    let roots = [&args.model_root, &args.data_root, &args.output_root];
    let confinement =
        if roots.iter().all(|r| r.is_empty()) { Confinement::none() } else { Confinement::to_roots(&args.model_root, &args.data_root, &args.output_root)? };
    let tls = TlsFiles { cert: args.tls_cert, key: args.tls_key, ca: args.tls_ca, mutual: args.tls_mutual, server_name: args.tls_server_name }.load()?;
    let opts = ServeOptions {
        confinement,
        tls,
        insecure: args.insecure,
        coordinator,
        token,
        listen: args.listen,
        advertise_host: args.advertise_host,
        peer_timeout: Duration::from_secs(args.peer_timeout_s),
        connect_timeout: Duration::from_secs(args.connect_timeout_s),
        device: args.device,
        name: args.name,
        fault: args.fault.map(|f| match f {
            FaultArg::ExitDuringScore => Fault::ExitDuringScore,
            FaultArg::ExitDuringRecovery => Fault::ExitDuringRecovery,
            FaultArg::Hang => Fault::Hang,
        }),
    };
    // SIGTERM (a scheduler's stop) or SIGINT: a clean stop. The coordinator sees the worker
    // leave and fails the run, which it can resume.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).context("watching for SIGTERM")?;
    tokio::select! {
        served = llmprune_worker::cluster::serve::serve(opts) => Ok(served?),
        _ = term.recv() => { tracing::warn!("SIGTERM: stopping"); Ok(()) }
        _ = tokio::signal::ctrl_c() => { tracing::warn!("SIGINT: stopping"); Ok(()) }
    }
}

//! The coordinator's phase state machine over a set of workers: registering → loading →
//! scoring → planning → slicing → saving → done | failed for pruning, registering → loading →
//! recovering → saving → done | failed for recovery. A phase sends one command to every
//! worker at once and waits for all replies, or for the first failure: an RPC error, a local
//! worker process that exits, or a worker that stops heartbeating. A failure names the worker,
//! its rank and layers and the cause; the workers are then told to stop.

use super::launcher::{InProcessWorker, LocalWorkers};
use super::registry::{CoordinatorService, Registered, Registry};
use crate::progress::ProgressDisplay;
use crate::settings::ClusterSettings;
use anyhow::{bail, Context, Result};
use llmprune_shared::proto::coordinator_server::CoordinatorServer;
use llmprune_shared::proto::worker_client::WorkerClient;
use llmprune_shared::proto::{attach_token, require_token, ShutdownRequest, TokenInterceptor, MAX_MESSAGE_BYTES};
use llmprune_shared::tls::{check_listen, scheme, url_host, Tls};
use std::collections::HashMap;
use std::future::Future;
use std::io::IsTerminal;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tracing::Instrument;

pub type WorkerRpc = WorkerClient<InterceptedService<Channel, TokenInterceptor>>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Registering,
    Loading,
    Scoring,
    Slicing,
    Saving,
    Recovering,
    Evaluating,
    Generating,
    Done,
    Failed,
}

/// One worker of the run, in rank order.
#[derive(Clone)]
pub struct Member {
    pub id: String,
    /// Its place among all the workers (registration or launch order).
    pub rank: usize,
    /// Its pipeline stage and which copy of that stage it is, once the layout is set.
    pub stage: usize,
    pub replica: usize,
    pub ring_address: String,
    pub replica_ring_address: String,
    pub memory_bytes: u64,
    /// `cpu` or `cuda:N`, as the worker reported it.
    pub device_kind: String,
    /// Its layers, once shards are assigned.
    pub layers: Range<usize>,
    pub rpc: WorkerRpc,
}

/// Why a run failed, as the commands see it: whether the same command may succeed again
/// (a worker or the network failed) decides whether its checkpoints are worth keeping.
#[derive(Debug)]
pub struct RunFailed {
    pub message: String,
    pub retryable: bool,
}

impl std::fmt::Display for RunFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for RunFailed {}

impl RunFailed {
    /// Whether `e` is a failure a rerun (`--resume`) may not meet.
    pub fn is_retryable(e: &anyhow::Error) -> bool {
        e.downcast_ref::<RunFailed>().is_some_and(|f| f.retryable)
    }
}

/// How long a worker has to acknowledge Shutdown.
const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(1);

/// Said after failures of another process or of the network, which a rerun may not meet.
const RETRYABLE: &str =
    " (a worker or the network failed: the same command may succeed again; prune and recover continue from their checkpoints with --resume)";

impl Member {
    fn describe(&self) -> String {
        let copy = if self.replica > 0 { format!(", replica {}", self.replica) } else { String::new() };
        if self.layers.is_empty() {
            format!("worker {} (rank {})", self.id, self.rank)
        } else {
            format!("worker {} (rank {}{copy}, layers {}..{})", self.id, self.rank, self.layers.start, self.layers.end)
        }
    }
}

/// Who the members of a run are.
#[derive(Clone)]
pub enum Members {
    /// One worker inside this process: a command run without `--local-workers`/`--workers`
    /// (one process is a cluster of one member). The command supplies it (the worker's own
    /// serve code, on its `--device`), so the cluster code holds no worker code.
    InProcess(InProcessWorker),
    /// `--local-workers N`: worker processes started on this machine.
    Processes(usize),
    /// `--workers N`: workers started elsewhere, which register themselves.
    Remote(usize),
}

impl Members {
    pub fn count(&self) -> usize {
        match *self {
            Members::InProcess(_) => 1,
            Members::Processes(n) | Members::Remote(n) => n,
        }
    }
}

pub struct ClusterConfig {
    pub settings: ClusterSettings,
    pub members: Members,
    pub worker_binary: PathBuf,
    /// Testing only: (local worker index, fault name).
    pub faults: Vec<(usize, String)>,
    /// `text` or `json`, handed to local workers.
    pub log_format: &'static str,
}

pub struct Cluster {
    pub registry: Arc<Registry>,
    pub members: Vec<Member>,
    phase: Phase,
    /// Exits of local workers and silent workers, as messages.
    failures: mpsc::UnboundedReceiver<String>,
    local: Option<LocalWorkers>,
    server_stop: watch::Sender<bool>,
    background: Vec<tokio::task::JoinHandle<()>>,
}

/// A client of a registered worker's gRPC service, with the cluster token on every call;
/// over TLS (the worker's certificate checked against the cluster's CA) when `tls`.
async fn connect_worker(w: &Registered, token: &str, tls: Option<&Tls>) -> Result<WorkerRpc> {
    let mut endpoint = tonic::transport::Endpoint::from_shared(w.worker_address.clone())
        .with_context(|| format!("worker {} address `{}`", w.id, w.worker_address))?
        .connect_timeout(Duration::from_secs(10));
    if let Some(tls) = tls {
        if !w.worker_address.starts_with("https://") {
            bail!("worker {} registered the plaintext address {}: this cluster uses TLS", w.id, w.worker_address);
        }
        endpoint = endpoint.tls_config(tls.client(url_host(&w.worker_address))).context("--tls-ca")?;
    }
    let channel = endpoint.connect().await.with_context(|| format!("connecting to worker {} at {}", w.id, w.worker_address))?;
    Ok(WorkerClient::with_interceptor(channel, attach_token(token)?).max_decoding_message_size(MAX_MESSAGE_BYTES).max_encoding_message_size(MAX_MESSAGE_BYTES))
}

/// 128 random bits as hex, for tokens and cookies.
pub fn random_hex() -> Result<String> {
    let bytes: [u8; 16] = llmprune_shared::proto::random_bytes().context("reading /dev/urandom")?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

impl Cluster {
    /// Serves the coordinator, starts or awaits the workers, and connects to each.
    pub async fn start(config: ClusterConfig, run_id: &str) -> Result<Self> {
        let s = &config.settings;
        let expected = config.members.count();
        if expected == 0 {
            bail!("give --local-workers N or --workers N (N > 0)");
        }
        let token = match (&s.token, &config.members) {
            (Some(t), _) => t.clone(),
            (None, Members::Remote(_)) => bail!("remote workers need a cluster token: --token or cluster.token"),
            (None, _) => random_hex()?,
        };
        // A worker inside this process talks to it over loopback only, in plaintext.
        let in_process = matches!(config.members, Members::InProcess(_));
        let listen = if in_process { "127.0.0.1:0" } else { s.listen.as_str() };
        let tls = if in_process { None } else { s.tls.load()? };
        let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("--listen {listen}"))?;
        let addr = listener.local_addr()?;
        check_listen("--listen", addr, tls.as_ref(), s.insecure)?;
        let (progress_tx, progress_rx) = mpsc::unbounded_channel();
        let (period, timeout) = (Duration::from_millis(s.heartbeat_ms), Duration::from_millis(s.heartbeat_timeout_ms));
        let registry = Arc::new(Registry::new(run_id.to_string(), expected, period, timeout, progress_tx));
        let (server_stop, mut stop_rx) = watch::channel(false);
        let service = CoordinatorServer::new(CoordinatorService(registry.clone()))
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        let service = InterceptedService::new(service, require_token(token.clone()));
        let mut server = tonic::transport::Server::builder();
        if let Some(tls) = &tls {
            server = server.tls_config(tls.server()).context("--tls-cert/--tls-key")?;
        }
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        // Background tasks log inside the run's span (run id), as the driver does.
        let span = tracing::Span::current();
        let mut background = vec![tokio::spawn(
            async move {
                let served = server
                    .add_service(service)
                    .serve_with_incoming_shutdown(incoming, async move {
                        let _ = stop_rx.wait_for(|s| *s).await;
                    })
                    .await;
                if let Err(e) = served {
                    tracing::error!(error = %e, "the coordinator's gRPC server stopped");
                }
            }
            .instrument(span.clone()),
        )];
        background.push(tokio::spawn(render_progress(progress_rx, config.log_format).instrument(span.clone())));

        let (fail_tx, failures) = mpsc::unbounded_channel();
        let host = if addr.ip().is_unspecified() { "127.0.0.1".to_string() } else { addr.ip().to_string() };
        let url = format!("{}://{host}:{}", scheme(tls.as_ref()), addr.port());
        let (exit_tx, mut exit_rx) = mpsc::unbounded_channel::<(String, String)>();
        let local = match &config.members {
            &Members::Processes(n) => {
                let workers = LocalWorkers::start(n, &config, &url, &token, exit_tx)?;
                tracing::info!(workers = n, pids = ?workers.pids(), coordinator = %url, "local workers started");
                Some(workers)
            }
            Members::InProcess(worker) => {
                tracing::debug!(coordinator = %url, "in-process worker started");
                Some(LocalWorkers::in_process(worker, &url, &token, exit_tx))
            }
            Members::Remote(_) => {
                tracing::info!(workers = expected, address = %addr, "waiting for workers: llmprune-worker --coordinator {}://HOST:{} --token-file ...", scheme(tls.as_ref()), addr.port());
                eprintln!("coordinator listening on {addr}; waiting for {expected} workers");
                None
            }
        };
        let tx = fail_tx.clone();
        background.push(tokio::spawn(async move {
            while let Some((name, status)) = exit_rx.recv().await {
                let _ = tx.send(format!("worker {name} exited ({status})"));
            }
        }));
        // Silent workers fail the run.
        let (reg, tx) = (registry.clone(), fail_tx);
        background.push(tokio::spawn(async move {
            loop {
                tokio::time::sleep(period).await;
                for (id, silent) in reg.silent(timeout) {
                    let _ = tx.send(format!("worker {id} sent no heartbeat for {:.1} s", silent.as_secs_f64()));
                }
            }
        }));
        let mut cluster = Self { registry, members: Vec::new(), phase: Phase::Registering, failures, local, server_stop, background };
        let wait = Duration::from_secs(s.register_timeout_s);
        if let Err(e) = cluster.await_registrations(expected, wait).await {
            cluster.fail(&e.to_string()).await;
            return Err(e);
        }
        let mut registered = cluster.registry.workers();
        if cluster.local.is_some() {
            // Local ranks follow the launch order, so runs are reproducible.
            registered.sort_by_key(|w| w.id.strip_prefix("local-").and_then(|i| i.parse::<usize>().ok()).unwrap_or(usize::MAX));
        }
        for (rank, w) in registered.into_iter().enumerate() {
            // A worker that cannot be reached ends the run like any other failure: the workers
            // already registered are told to stop.
            let rpc = match connect_worker(&w, &token, tls.as_ref()).await {
                Ok(rpc) => rpc,
                Err(e) => {
                    cluster.fail(&format!("{e:#}")).await;
                    return Err(e);
                }
            };
            let memory_bytes = w.capabilities.device_memory_bytes;
            cluster.members.push(Member {
                id: w.id,
                rank,
                stage: rank,
                replica: 0,
                ring_address: w.ring_address,
                replica_ring_address: w.replica_ring_address,
                memory_bytes,
                device_kind: w.capabilities.device_kind.clone(),
                layers: 0..0,
                rpc,
            });
        }
        Ok(cluster)
    }

    async fn await_registrations(&mut self, expected: usize, wait: Duration) -> Result<()> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let joined = self.registry.joined.notified();
            let have = self.registry.workers().len();
            if have >= expected {
                return Ok(());
            }
            tokio::select! {
                _ = joined => {}
                Some(msg) = self.failures.recv() => bail!("while waiting for workers: {msg}"),
                _ = tokio::time::sleep_until(deadline) => bail!("only {have} of {expected} workers registered within {} s", wait.as_secs()),
            }
        }
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    pub fn enter(&mut self, phase: Phase) {
        tracing::info!(from = ?self.phase, to = ?phase, "phase");
        self.phase = phase;
    }

    /// Runs `call` against every member concurrently; replies in rank order. The first
    /// error or failure ends the phase (and the run) with a message naming the worker.
    pub async fn each<T, F, Fut>(&mut self, what: &str, call: F) -> Result<Vec<T>>
    where
        T: Send + 'static,
        F: Fn(Member) -> Fut,
        Fut: Future<Output = Result<T, tonic::Status>> + Send + 'static,
    {
        self.each_where(what, |_| true, call).await
    }

    /// [`Cluster::each`] over the members `chosen` picks; replies in their rank order. The
    /// others are still watched: a failure anywhere ends the phase.
    pub async fn each_where<T, F, Fut>(&mut self, what: &str, chosen: impl Fn(&Member) -> bool, call: F) -> Result<Vec<T>>
    where
        T: Send + 'static,
        F: Fn(Member) -> Fut,
        Fut: Future<Output = Result<T, tonic::Status>> + Send + 'static,
    {
        let mut set = JoinSet::new();
        let ranks: Vec<usize> = self.members.iter().filter(|m| chosen(m)).map(|m| m.rank).collect();
        for &rank in &ranks {
            let fut = call(self.members[rank].clone());
            set.spawn(async move { (rank, fut.await) });
        }
        let mut replies: HashMap<usize, T> = HashMap::new();
        while replies.len() < ranks.len() {
            tokio::select! {
                joined = set.join_next() => match joined {
                    Some(Ok((rank, Ok(reply)))) => { replies.insert(rank, reply); }
                    Some(Ok((rank, Err(status)))) => {
                        // A worker's failed peer or link (gRPC `unavailable`) may pass on a rerun.
                        let mut retryable = status.code() == tonic::Code::Unavailable;
                        let retry = if retryable { RETRYABLE } else { "" };
                        let mut msg = format!("{what}: {} failed: {}{retry}", self.members[rank].describe(), status.message());
                        // A collective error often means that a peer died: give its exit a moment
                        // to be noticed and name it as the cause.
                        if let Ok(Some(cause)) = tokio::time::timeout(Duration::from_millis(500), self.failures.recv()).await {
                            msg = format!("{what}: {}; then {} failed: {}{RETRYABLE}", self.name_failure(&cause), self.members[rank].describe(), status.message());
                            retryable = true;
                        }
                        return Err(self.fail_with(&msg, retryable).await);
                    }
                    Some(Err(e)) => return Err(self.fail(&format!("{what}: a request task failed: {e}")).await),
                    None => break,
                },
                Some(msg) = self.failures.recv() => {
                    let named = self.name_failure(&msg);
                    return Err(self.fail_with(&format!("{what}: {named}{RETRYABLE}"), true).await);
                }
            }
        }
        Ok(ranks.iter().filter_map(|r| replies.remove(r)).collect())
    }

    /// Adds rank and layers to a failure that names a worker id.
    fn name_failure(&self, msg: &str) -> String {
        match self.members.iter().find(|m| msg.contains(&format!("worker {} ", m.id))) {
            Some(m) => msg.replacen(&format!("worker {}", m.id), &m.describe(), 1),
            None => msg.to_string(),
        }
    }

    /// Marks the run failed, tells the workers to stop, and returns the error to report.
    pub async fn fail(&mut self, msg: &str) -> anyhow::Error {
        self.fail_with(msg, false).await
    }

    /// [`Cluster::fail`] for a failure a rerun may pass (the run was interrupted): the
    /// checkpoints are kept for `--resume`.
    pub async fn fail_retryable(&mut self, msg: &str) -> anyhow::Error {
        self.fail_with(msg, true).await
    }

    /// [`Cluster::fail`], saying whether a rerun may succeed.
    async fn fail_with(&mut self, msg: &str, retryable: bool) -> anyhow::Error {
        self.phase = Phase::Failed;
        tracing::error!(error = %msg, retryable, "run failed");
        self.stop("the run failed").await;
        anyhow::Error::new(RunFailed { message: msg.to_string(), retryable })
    }

    /// Stops the workers (Shutdown, and the heartbeat's stop flag for those that miss it).
    /// A live worker answers Shutdown at once whatever it computes, so a short deadline only
    /// skips the hung ones, which their missing coordinator stops in turn.
    async fn stop(&mut self, reason: &str) {
        self.registry.stop();
        let mut set = JoinSet::new();
        for m in &self.members {
            let mut rpc = m.rpc.clone();
            let mut call = tonic::Request::new(ShutdownRequest { reason: reason.to_string() });
            call.set_timeout(SHUTDOWN_DEADLINE);
            set.spawn(async move { tokio::time::timeout(SHUTDOWN_DEADLINE, rpc.shutdown(call)).await });
        }
        while set.join_next().await.is_some() {}
        // Local workers exit by themselves on Shutdown; give them a moment, then kill.
        if let Some(local) = self.local.take() {
            tokio::time::sleep(Duration::from_millis(200)).await;
            drop(local);
        }
        let _ = self.server_stop.send(true);
    }

    /// Ends a successful run.
    pub async fn finish(mut self) {
        self.enter(Phase::Done);
        self.stop("the run is done").await;
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for t in &self.background {
            t.abort();
        }
    }
}

/// Workers' progress events, shown as one display per phase (see [`ProgressDisplay`]): bars
/// when stderr is a terminal and the logs are text, log lines otherwise.
async fn render_progress(mut rx: mpsc::UnboundedReceiver<llmprune_shared::proto::ProgressEvent>, log_format: &'static str) {
    let mut display = ProgressDisplay::new(log_format == "text" && std::io::stderr().is_terminal());
    while let Some(e) = rx.recv().await {
        display.update(e);
    }
}

//! The one place where configuration is merged: defaults, then a TOML file (`--config`),
//! then `LLMPRUNE_*` environment variables, then command-line flags. Everything below
//! receives typed, validated values and never reads the environment itself.

use anyhow::{bail, Context, Result};
use config::{Config, Environment, File, FileFormat};
use llmprune_shared::device::WorkerDevice;
use llmprune_shared::proto::read_token_file;
use llmprune_shared::tls::TlsFiles;
use llmprune_worker::collective::compute_device;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Settings {
    /// Where fetched models are kept.
    pub cache_dir: PathBuf,
    pub log_format: LogFormat,
    /// The Python interpreter whose pip downloads registry packages.
    pub python: String,
    /// Where this process computes when it runs a phase itself: `cpu` or `cuda:N` (workers
    /// take their own `--device`).
    pub device: String,
    pub cluster: ClusterSettings,
    /// `llmprune run`: the model to compress (a path or alias).
    pub model: Option<String>,
    /// `llmprune run`: the run's output directory.
    pub out: Option<PathBuf>,
    /// `llmprune run`: the seed of every phase.
    pub seed: Option<u64>,
    #[serde(default)]
    pub workers: WorkersSettings,
    /// `llmprune run`: each phase's job settings by key (`ratio`, `attn_layers`, …: the
    /// fields of `llmprune_shared::jobs::{PruneSettings, RecoverSettings, EvalSettings}`,
    /// which the phase commands flatten into their flags), typed when the run is planned.
    #[serde(default)]
    pub prune: PhaseOptions,
    #[serde(default)]
    pub recover: PhaseOptions,
    #[serde(default)]
    pub eval: PhaseOptions,
}

/// A phase's settings as given (TOML values, or strings from the environment and `--set`),
/// typed by `llmprune run` against the phase's settings struct.
pub type PhaseOptions = std::collections::BTreeMap<String, serde_json::Value>;

/// Who runs `llmprune run` (`[workers]`): local worker processes or remote ones, and their layout.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct WorkersSettings {
    /// Worker processes started on this machine.
    pub local: Option<usize>,
    /// Remote workers to wait for (`llmprune-worker --coordinator ...`).
    pub remote: Option<usize>,
    /// Pipeline stages per replica when pruning (the workers / replicas) and recovering.
    #[serde(default)]
    pub replicas: Option<usize>,
    #[serde(default)]
    pub stages: Option<usize>,
}

/// How the coordinator runs a cluster (`[cluster]` in TOML, `LLMPRUNE_CLUSTER__*`).
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct ClusterSettings {
    /// Where the coordinator's gRPC service listens (port 0: any free port, for local workers).
    pub listen: String,
    /// The token workers must present; local workers get a fresh random one when unset.
    pub token: Option<String>,
    /// A file holding the token (a mounted secret), in place of `token`: a token on the
    /// command line is visible to every user of the machine.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// TLS for the coordinator's service and its calls to workers (`[cluster.tls]`: cert,
    /// key, ca, mutual).
    #[serde(default)]
    pub tls: TlsFiles,
    /// Allow a plaintext service on an address other machines can reach.
    #[serde(default)]
    pub insecure: bool,
    /// How often workers heartbeat.
    pub heartbeat_ms: u64,
    /// A worker silent for this long has failed.
    pub heartbeat_timeout_ms: u64,
    /// How long to wait for `--workers N` to register.
    pub register_timeout_s: u64,
    /// The worker executable for `--local-workers` [default: `llmprune-worker` beside `llmprune`].
    pub worker_binary: Option<PathBuf>,
}

/// Values given on the command line; `None` leaves the lower layers in force.
#[derive(Debug, Default)]
pub struct CliOverrides {
    pub config_file: Option<PathBuf>,
    pub cache_dir: Option<PathBuf>,
    pub log_format: Option<LogFormat>,
    pub token: Option<String>,
    pub token_file: Option<PathBuf>,
    pub tls: TlsFiles,
    pub insecure: bool,
    pub listen: Option<String>,
    pub device: Option<String>,
    /// `--set KEY=VALUE`: any key, above the file and the environment.
    pub sets: Vec<(String, String)>,
}

fn default_cache_dir() -> String {
    // The binary's defaults may consult the user's home; library code never does.
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from(".cache"));
    base.join("llmprune").to_string_lossy().into_owned()
}

impl Settings {
    pub fn load(cli: &CliOverrides) -> Result<Self> {
        let mut b = Config::builder()
            .set_default("cache_dir", default_cache_dir())?
            .set_default("log_format", "text")?
            .set_default("python", "python3")?
            .set_default("device", "cpu")?
            .set_default("cluster.listen", "127.0.0.1:0")?
            .set_default("cluster.heartbeat_ms", 500)?
            .set_default("cluster.heartbeat_timeout_ms", 10_000)?
            .set_default("cluster.register_timeout_s", 600)?;
        if let Some(path) = &cli.config_file {
            if !path.exists() {
                bail!("--config {}: file not found", path.display());
            }
            b = b.add_source(File::from(path.as_path()).format(FileFormat::Toml));
        }
        // `LLMPRUNE_CACHE_DIR`; nested keys (later) use `__`, as in `LLMPRUNE_PRUNE__RATIO`.
        b = b.add_source(Environment::with_prefix("LLMPRUNE").prefix_separator("_").separator("__"));
        b = b.set_override_option("cache_dir", cli.cache_dir.as_ref().map(|p| p.to_string_lossy().into_owned()))?;
        b = b.set_override_option(
            "log_format",
            cli.log_format.map(|f| match f {
                LogFormat::Text => "text",
                LogFormat::Json => "json",
            }),
        )?;
        for (key, value) in &cli.sets {
            b = b.set_override(key.as_str(), value.as_str()).with_context(|| format!("--set {key}={value}"))?;
        }
        b = b.set_override_option("cluster.token", cli.token.clone())?;
        b = b.set_override_option("cluster.token_file", cli.token_file.as_ref().map(|p| p.to_string_lossy().into_owned()))?;
        let path = |p: &Option<PathBuf>| p.as_ref().map(|p| p.to_string_lossy().into_owned());
        b = b.set_override_option("cluster.tls.cert", path(&cli.tls.cert))?;
        b = b.set_override_option("cluster.tls.key", path(&cli.tls.key))?;
        b = b.set_override_option("cluster.tls.ca", path(&cli.tls.ca))?;
        b = b.set_override_option("cluster.tls.mutual", cli.tls.mutual.then_some(true))?;
        b = b.set_override_option("cluster.tls.server_name", cli.tls.server_name.clone())?;
        b = b.set_override_option("cluster.insecure", cli.insecure.then_some(true))?;
        b = b.set_override_option("cluster.listen", cli.listen.clone())?;
        b = b.set_override_option("device", cli.device.clone())?;
        let mut settings: Settings =
            b.build().context("reading configuration")?.try_deserialize().context("invalid configuration (check --config, LLMPRUNE_* variables and flags)")?;
        if let Some(file) = settings.cluster.token_file.clone() {
            if settings.cluster.token.is_some() {
                bail!("cluster.token and cluster.token_file (--token, --token-file): give one of them");
            }
            let token = read_token_file(&file).map_err(|e| anyhow::anyhow!("cluster.token_file (--token-file) {}: {e}", file.display()))?;
            if token.is_empty() || !token.chars().all(|c| c.is_ascii_graphic()) {
                bail!("cluster.token_file (--token-file) {}: its first line must be the token, printable ASCII without spaces", file.display());
            }
            settings.cluster.token = Some(token);
        }
        settings.validate()?;
        // Named now, before anything starts.
        settings.cluster.tls.load()?;
        Ok(settings)
    }

    /// The device this process computes on (`device`, `--device`).
    pub fn compute_device(&self) -> Result<candle_core::Device> {
        let device = WorkerDevice::parse(&self.device).map_err(|e| anyhow::anyhow!("device (--device) {e}"))?;
        compute_device(device).map_err(|e| anyhow::anyhow!("--device {e}"))
    }

    /// The device as a worker takes it, for the worker a command runs in this process.
    pub fn worker_device(&self) -> Result<WorkerDevice> {
        WorkerDevice::parse(&self.device).map_err(|e| anyhow::anyhow!("device (--device) {e}"))
    }

    fn validate(&self) -> Result<()> {
        if self.cache_dir.as_os_str().is_empty() {
            bail!("cache_dir: must not be empty");
        }
        if self.python.trim().is_empty() {
            bail!("python: must not be empty");
        }
        WorkerDevice::parse(&self.device).map_err(|e| anyhow::anyhow!("device (--device) {e}"))?;
        let c = &self.cluster;
        if c.listen.parse::<std::net::SocketAddr>().is_err() {
            bail!("cluster.listen (--listen) `{}`: expected HOST:PORT with an IP address, e.g. 0.0.0.0:7070", c.listen);
        }
        if c.token.as_deref().is_some_and(|t| t.is_empty() || !t.chars().all(|ch| ch.is_ascii_graphic())) {
            bail!("cluster.token (--token): must be non-empty printable ASCII without spaces");
        }
        if c.heartbeat_ms == 0 || c.heartbeat_timeout_ms < 2 * c.heartbeat_ms {
            bail!("cluster.heartbeat_timeout_ms must be at least twice cluster.heartbeat_ms (> 0)");
        }
        let w = &self.workers;
        if w.local.is_some() && w.remote.is_some() {
            bail!("workers.local and workers.remote: give one of them");
        }
        for (key, v) in [("workers.local", w.local), ("workers.remote", w.remote), ("workers.replicas", w.replicas), ("workers.stages", w.stages)] {
            if v == Some(0) {
                bail!("{key}: must be at least 1");
            }
        }
        Ok(())
    }
}

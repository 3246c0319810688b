//! LoRA recovery's settings (reference §4.2): the data, the adapters, the optimizer and the
//! schedule. The coordinator sends them to every worker as they are.

use super::{comma_list, size, JobError};
use crate::dtype::WeightDtype;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// The fields of an instruction record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum RecordFormat {
    /// `instruction`, `input` (optional), `output`.
    #[default]
    Alpaca,
    /// `instruction`, `response`.
    Lamini,
}

/// A projection of a decoder layer that can carry a LoRA adapter, by its Hugging Face name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum Projection {
    #[serde(rename = "q_proj")]
    #[cfg_attr(feature = "clap", value(name = "q_proj"))]
    Q,
    #[serde(rename = "k_proj")]
    #[cfg_attr(feature = "clap", value(name = "k_proj"))]
    K,
    #[serde(rename = "v_proj")]
    #[cfg_attr(feature = "clap", value(name = "v_proj"))]
    V,
    #[serde(rename = "o_proj")]
    #[cfg_attr(feature = "clap", value(name = "o_proj"))]
    O,
    #[serde(rename = "gate_proj")]
    #[cfg_attr(feature = "clap", value(name = "gate_proj"))]
    Gate,
    #[serde(rename = "up_proj")]
    #[cfg_attr(feature = "clap", value(name = "up_proj"))]
    Up,
    #[serde(rename = "down_proj")]
    #[cfg_attr(feature = "clap", value(name = "down_proj"))]
    Down,
}

impl Projection {
    pub const ALL: [Projection; 7] = [Self::Q, Self::K, Self::V, Self::O, Self::Gate, Self::Up, Self::Down];

    pub fn name(self) -> &'static str {
        match self {
            Self::Q => "q_proj",
            Self::K => "k_proj",
            Self::V => "v_proj",
            Self::O => "o_proj",
            Self::Gate => "gate_proj",
            Self::Up => "up_proj",
            Self::Down => "down_proj",
        }
    }

    /// Its module path inside a decoder layer (`self_attn.q_proj`).
    pub fn module(self) -> String {
        match self {
            Self::Q | Self::K | Self::V | Self::O => format!("self_attn.{}", self.name()),
            Self::Gate | Self::Up | Self::Down => format!("mlp.{}", self.name()),
        }
    }

    /// Its place in [`Projection::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    pub fn from_name(name: &str) -> Result<Self, String> {
        Self::ALL.into_iter().find(|p| p.name() == name).ok_or_else(|| {
            let known: Vec<&str> = Self::ALL.iter().map(|p| p.name()).collect();
            format!("unknown LoRA target `{name}` (expected {})", known.join(", "))
        })
    }
}

impl std::str::FromStr for Projection {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::from_name(s)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::Args))]
#[serde(default, deny_unknown_fields)]
pub struct RecoverSettings {
    /// Instruction data: a JSON array or JSON Lines file.
    #[cfg_attr(feature = "clap", arg(long))]
    pub data: PathBuf,
    /// Record fields: alpaca (instruction, input, output) or lamini (instruction, response).
    #[cfg_attr(feature = "clap", arg(long, value_enum, default_value_t = RecordFormat::Alpaca))]
    pub format: RecordFormat,
    #[cfg_attr(feature = "clap", arg(long, default_value_t = RecoverSettings::default().epochs))]
    pub epochs: usize,
    /// Stop after this many optimizer steps.
    #[cfg_attr(feature = "clap", arg(long))]
    pub max_steps: Option<u64>,
    /// Peak learning rate.
    #[cfg_attr(feature = "clap", arg(long, default_value_t = RecoverSettings::default().lr))]
    pub lr: f64,
    #[cfg_attr(feature = "clap", arg(long, default_value_t = RecoverSettings::default().warmup_steps))]
    pub warmup_steps: u64,
    /// Records per optimizer step (over all workers).
    #[cfg_attr(feature = "clap", arg(long, default_value_t = RecoverSettings::default().batch_size))]
    pub batch_size: usize,
    #[cfg_attr(feature = "clap", arg(long, default_value_t = RecoverSettings::default().micro_batch_size))]
    pub micro_batch_size: usize,
    /// Tokens per record at most (longer ones lose their end).
    #[cfg_attr(feature = "clap", arg(long, default_value_t = RecoverSettings::default().cutoff_len))]
    pub cutoff_len: usize,
    #[cfg_attr(feature = "clap", arg(long, default_value_t = RecoverSettings::default().lora_r))]
    pub lora_r: usize,
    #[cfg_attr(feature = "clap", arg(long, default_value_t = RecoverSettings::default().lora_alpha))]
    pub lora_alpha: f64,
    #[cfg_attr(feature = "clap", arg(long, default_value_t = RecoverSettings::default().lora_dropout))]
    pub lora_dropout: f32,
    /// Projections given adapters, comma-separated.
    #[cfg_attr(feature = "clap", arg(long, value_enum, value_delimiter = ',', default_values_t = Projection::ALL))]
    #[serde(deserialize_with = "comma_list")]
    pub lora_targets: Vec<Projection>,
    #[cfg_attr(feature = "clap", arg(long, default_value_t = RecoverSettings::default().weight_decay))]
    pub weight_decay: f64,
    /// Gradient-norm clipping (0: none).
    #[cfg_attr(feature = "clap", arg(long, default_value_t = RecoverSettings::default().max_grad_norm))]
    pub max_grad_norm: f64,
    /// Records held out for the validation loss.
    #[cfg_attr(feature = "clap", arg(long, default_value_t = RecoverSettings::default().val_size))]
    pub val_size: usize,
    /// Validation loss (and a checkpoint) every N steps.
    #[cfg_attr(feature = "clap", arg(long, default_value_t = RecoverSettings::default().eval_steps))]
    pub eval_steps: u64,
    /// A checkpoint every N steps besides those at evaluations [default: at evaluations only].
    #[cfg_attr(feature = "clap", arg(long))]
    pub save_steps: Option<u64>,
    /// Train on the prompt's tokens too (default: only the response's).
    #[cfg_attr(feature = "clap", arg(long))]
    pub train_on_inputs: bool,
    /// Do not append EOS to each record.
    #[cfg_attr(feature = "clap", arg(long))]
    pub no_eos: bool,
    /// Skip malformed records (counted in the report) instead of failing.
    #[cfg_attr(feature = "clap", arg(long))]
    pub skip_bad_records: bool,
    #[cfg_attr(feature = "clap", arg(long, default_value_t = RecoverSettings::default().seed))]
    pub seed: u64,
    /// Perplexity at every evaluation step, adapters active (NAME=FILE, comma-separated; the
    /// reference's --extra_val_dataset).
    #[cfg_attr(feature = "clap", arg(long, value_name = "NAME=FILE,...", value_delimiter = ','))]
    #[serde(deserialize_with = "comma_list")]
    pub extra_val: Vec<String>,
    /// Chunks of each --extra-val text at most [default: all].
    #[cfg_attr(feature = "clap", arg(long))]
    pub extra_val_chunks: Option<usize>,
    /// Perplexity of the merged model on these texts (NAME=FILE, comma-separated).
    #[cfg_attr(feature = "clap", arg(long, value_name = "NAME=FILE,...", value_delimiter = ','))]
    #[serde(deserialize_with = "comma_list")]
    pub eval_ppl: Vec<String>,
    /// Perplexity chunks per dataset at most [default: all].
    #[cfg_attr(feature = "clap", arg(long))]
    pub eval_max_chunks: Option<usize>,
    /// Weights above this size are written as Hugging Face shards with an index.
    #[cfg_attr(feature = "clap", arg(long, value_name = "SIZE", default_value = "5GB", value_parser = super::parse_size))]
    #[serde(deserialize_with = "size")]
    pub max_shard_size: u64,
    /// The base weights' dtype in memory [default: f32 on CPU workers, bf16 on GPU workers];
    /// the adapters, their gradients and AdamW's state are f32 whatever it is.
    #[cfg_attr(feature = "clap", arg(long, value_enum))]
    pub dtype: Option<WeightDtype>,
}

impl Default for RecoverSettings {
    fn default() -> Self {
        Self {
            data: PathBuf::new(),
            format: RecordFormat::Alpaca,
            epochs: 2,
            max_steps: None,
            lr: 1e-4,
            warmup_steps: 100,
            batch_size: 64,
            micro_batch_size: 4,
            cutoff_len: 256,
            lora_r: 8,
            lora_alpha: 16.0,
            lora_dropout: 0.05,
            lora_targets: Projection::ALL.to_vec(),
            weight_decay: 0.0,
            max_grad_norm: 1.0,
            val_size: 2000,
            eval_steps: 100,
            save_steps: None,
            train_on_inputs: false,
            no_eos: false,
            skip_bad_records: false,
            seed: 42,
            extra_val: Vec::new(),
            extra_val_chunks: None,
            eval_ppl: Vec::new(),
            eval_max_chunks: None,
            max_shard_size: 5_000_000_000,
            dtype: None,
        }
    }
}

impl RecoverSettings {
    /// Checks what the settings alone decide (files are checked where they are read).
    pub fn validate(&self) -> Result<(), JobError> {
        if self.data.as_os_str().is_empty() {
            return Err(JobError::new("data", "required (an instruction file: a JSON array or JSON Lines)"));
        }
        if self.micro_batch_size == 0 || self.batch_size == 0 || !self.batch_size.is_multiple_of(self.micro_batch_size) {
            let msg = format!("must be a positive multiple of {{micro_batch_size}} {}", self.micro_batch_size);
            return Err(JobError::at("batch_size", self.batch_size, msg));
        }
        if self.epochs == 0 && self.max_steps.is_none() {
            return Err(JobError::new("epochs", "must be at least 1"));
        }
        if self.lr.is_nan() || self.lr <= 0.0 {
            return Err(JobError::at("lr", self.lr, "must be positive"));
        }
        if self.cutoff_len < 2 {
            return Err(JobError::new("cutoff_len", "must be at least 2"));
        }
        if self.lora_r == 0 {
            return Err(JobError::new("lora_r", "must be at least 1"));
        }
        if self.lora_alpha.is_nan() || self.lora_alpha <= 0.0 {
            return Err(JobError::at("lora_alpha", self.lora_alpha, "must be positive"));
        }
        if !(0.0..1.0).contains(&self.lora_dropout) {
            return Err(JobError::at("lora_dropout", self.lora_dropout, "must be in [0, 1)"));
        }
        if self.lora_targets.is_empty() {
            return Err(JobError::new("lora_targets", "names no projection"));
        }
        if self.max_grad_norm.is_nan() || self.max_grad_norm < 0.0 {
            return Err(JobError::at("max_grad_norm", self.max_grad_norm, "must be 0 (none) or positive"));
        }
        if self.eval_steps == 0 {
            return Err(JobError::new("eval_steps", "must be at least 1"));
        }
        for (key, list) in [("extra_val", &self.extra_val), ("eval_ppl", &self.eval_ppl)] {
            if let Some(bad) = list.iter().find(|spec| !spec.contains('=')) {
                return Err(JobError::at(key, bad, "expected NAME=FILE"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_are_the_references_and_bad_values_name_their_key() {
        let ok = RecoverSettings { data: "alpaca.json".into(), ..Default::default() };
        assert_eq!(ok.validate(), Ok(()));
        assert_eq!((ok.lr, ok.lora_r, ok.lora_alpha, ok.batch_size, ok.micro_batch_size, ok.cutoff_len), (1e-4, 8, 16.0, 64, 4, 256));
        let bad = |s: RecoverSettings| s.validate().unwrap_err().key;
        assert_eq!(bad(RecoverSettings::default()), "data");
        assert_eq!(bad(RecoverSettings { batch_size: 6, ..ok.clone() }), "batch_size");
        assert_eq!(bad(RecoverSettings { lora_dropout: 1.0, ..ok.clone() }), "lora_dropout");
        assert_eq!(bad(RecoverSettings { lora_targets: vec![], ..ok.clone() }), "lora_targets");
        assert_eq!(bad(RecoverSettings { extra_val: vec!["wiki".into()], ..ok.clone() }), "extra_val");
        // The wire carries them as they are.
        let back: RecoverSettings = serde_json::from_str(&serde_json::to_string(&ok).unwrap()).unwrap();
        assert_eq!(back, ok);
    }
}

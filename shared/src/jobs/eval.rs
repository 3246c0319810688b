//! Evaluation's settings: the zero-shot tasks with lm-evaluation-harness's semantics, the
//! perplexity texts, the Table 3 latency, and the dtype the model is held in.

use super::{comma_list, JobError};
use crate::dtype::WeightDtype;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::Args))]
#[serde(default, deny_unknown_fields)]
pub struct EvalSettings {
    /// Comma-separated lm-evaluation-harness task names [default: boolq, piqa, hellaswag,
    /// winogrande, arc_easy, arc_challenge, openbookqa]; '' for perplexity only.
    #[cfg_attr(feature = "clap", arg(long, value_delimiter = ','))]
    #[serde(deserialize_with = "optional_comma_list")]
    pub tasks: Option<Vec<String>>,
    /// The directory holding the tasks' JSON Lines files (`boolq.validation.jsonl`, …).
    #[cfg_attr(feature = "clap", arg(long))]
    pub data_dir: Option<PathBuf>,
    /// The first N documents of each task.
    #[cfg_attr(feature = "clap", arg(long))]
    pub limit: Option<usize>,
    /// Perplexity texts, NAME=FILE comma-separated (NAME: wikitext2, ptb).
    #[cfg_attr(feature = "clap", arg(long, value_name = "NAME=FILE,...", value_delimiter = ','))]
    #[serde(deserialize_with = "comma_list")]
    pub ppl: Vec<String>,
    /// Chunks of each perplexity text at most [default: all].
    #[cfg_attr(feature = "clap", arg(long))]
    pub ppl_max_chunks: Option<usize>,
    /// Perplexity chunk length (the reference's 128).
    #[cfg_attr(feature = "clap", arg(long, default_value_t = EvalSettings::default().seq_len))]
    pub seq_len: usize,
    /// Tokens per forward pass at most: documents of similar length are batched up to it.
    #[cfg_attr(feature = "clap", arg(long, default_value_t = EvalSettings::default().batch_tokens))]
    pub batch_tokens: usize,
    /// Table 3 latency: after the evaluation, time the first N chunks of the first --ppl text
    /// (batch 1, --seq-len tokens) on one otherwise idle worker; 0 turns it off.
    #[cfg_attr(feature = "clap", arg(long, value_name = "N", default_value_t = 0))]
    pub latency_chunks: usize,
    /// The weights' dtype in memory [default: f32 on CPU workers, bf16 on GPU workers].
    #[cfg_attr(feature = "clap", arg(long, value_enum))]
    pub dtype: Option<WeightDtype>,
}

impl Default for EvalSettings {
    fn default() -> Self {
        Self {
            tasks: None,
            data_dir: None,
            limit: None,
            ppl: Vec::new(),
            ppl_max_chunks: None,
            seq_len: 128,
            batch_tokens: 2048,
            latency_chunks: 0,
            dtype: None,
        }
    }
}

/// `tasks`: absent is every task, an empty list or `''` none.
fn optional_comma_list<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    comma_list::<D, String>(d).map(Some)
}

impl EvalSettings {
    /// The tasks to run by name: all seven unless `tasks` says otherwise (`''` for none).
    pub fn task_names(&self, all: &[&str]) -> Vec<String> {
        match &self.tasks {
            Some(list) => list.iter().map(|t| t.trim().to_string()).filter(|t| !t.is_empty()).collect(),
            None => all.iter().map(|t| t.to_string()).collect(),
        }
    }

    pub fn validate(&self) -> Result<(), JobError> {
        if self.batch_tokens == 0 {
            return Err(JobError::new("batch_tokens", "must be positive"));
        }
        if self.seq_len < 2 {
            return Err(JobError::at("seq_len", self.seq_len, "must be at least 2"));
        }
        if let Some(bad) = self.ppl.iter().find(|spec| !spec.contains('=')) {
            return Err(JobError::at("ppl", bad, "expected NAME=FILE"));
        }
        if self.latency_chunks > 0 && self.ppl.is_empty() {
            return Err(JobError::new("latency_chunks", "times chunks of the first perplexity text: give {ppl}"));
        }
        Ok(())
    }
}

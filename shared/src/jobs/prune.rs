//! Pruning's settings: what to remove, how to score it, the calibration, and what to measure
//! on the result. The planner takes them as a [`PruneRequest`] once the model's layers are known.

use super::{comma_list, layer_range, size, JobError};
use crate::dtype::WeightDtype;
use crate::planner::{Criterion, GqaMode, LayerProfile, ModeName, PlannerError, PruneRequest, Reduction, Scope, Strategy};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::Args))]
#[serde(default, deny_unknown_fields)]
pub struct PruneSettings {
    #[cfg_attr(feature = "clap", arg(long, value_enum, default_value_t = Strategy::Block))]
    pub strategy: Strategy,
    /// Share of each group's channels to remove, in (0, 1); heads are removed whole (floored).
    #[cfg_attr(feature = "clap", arg(long))]
    pub ratio: f64,
    /// Layers whose attention heads are pruned, START:END (end exclusive; N:N for none) [default: all].
    #[cfg_attr(feature = "clap", arg(long, value_name = "START:END"))]
    pub attn_layers: Option<String>,
    /// Layers whose MLP neurons are pruned, START:END (end exclusive; N:N for none) [default: all].
    #[cfg_attr(feature = "clap", arg(long, value_name = "START:END"))]
    pub mlp_layers: Option<String>,
    /// With --strategy layer: the layers that may be removed, START:END [default: all].
    #[cfg_attr(feature = "clap", arg(long, value_name = "START:END"))]
    pub layers: Option<String>,
    /// Under GQA: what a pruned head is.
    #[cfg_attr(feature = "clap", arg(long, value_enum, default_value_t = GqaMode::KvGroups))]
    pub gqa: GqaMode,
    /// Round kept MLP and hidden widths up to a multiple of N (e.g. 8 or 64) for fast kernels.
    #[cfg_attr(feature = "clap", arg(long, value_name = "N", default_value_t = 1))]
    pub round_to: usize,
    /// Prune in K steps toward the ratio (step k: k/K of it), with fresh gradients each step.
    #[cfg_attr(feature = "clap", arg(long, value_name = "K", default_value_t = 1))]
    pub iterative_steps: usize,
    /// How a unit's importance is estimated (paper: Element¹ = param-first, Element² =
    /// param-second, Vector = vectorize).
    #[cfg_attr(feature = "clap", arg(long, value_enum, default_value_t = Criterion::ParamFirst))]
    pub criterion: Criterion,
    /// How member scores combine [default: mean for l1/l2, sum otherwise, as the reference].
    #[cfg_attr(feature = "clap", arg(long, value_enum))]
    pub reduction: Option<Reduction>,
    /// Whether each group loses the same share (local) or all units are ranked together (global).
    #[cfg_attr(feature = "clap", arg(long, value_enum, default_value_t = Scope::Local))]
    pub scope: Scope,
    /// How --scope local spreads the ratio over the layers (block-wise): uniform, ramp:FIRST:LAST
    /// (weights linear from the first pruned layer to the last), or one weight per pruned layer
    /// w1,w2,…; layer l loses ratio · w_l / mean(w) of its heads and neurons, so the parameters
    /// removed stay those of the uniform prune [default: uniform].
    #[cfg_attr(feature = "clap", arg(long, value_name = "PROFILE"))]
    pub layer_profile: Option<String>,
    /// After each step, re-solve the kept input columns of every o_proj and down_proj that lost
    /// heads or neurons by least squares on the calibration inputs (block-wise; the plan
    /// records the windows so that apply-plan reproduces it).
    #[cfg_attr(feature = "clap", arg(long))]
    pub reconstruct: bool,
    /// After each step, fold the mean contribution of the removed heads' and neurons' inputs into
    /// o_proj's and down_proj's biases (FLAP's bias compensation; with --reconstruct, least
    /// squares with an intercept). LLaMA: the model is written with transformers'
    /// attention_bias and mlp_bias, zero where nothing was folded.
    #[cfg_attr(feature = "clap", arg(long))]
    pub compensate_bias: bool,
    /// Damping of the inputs' Gram matrix for --criterion obs and --reconstruct, as a share of
    /// its mean diagonal.
    #[cfg_attr(feature = "clap", arg(long, value_name = "SHARE", default_value_t = PruneSettings::default().damping))]
    pub damping: f64,
    /// With --scope global: divide each group's scores by their mean before ranking.
    #[cfg_attr(feature = "clap", arg(long))]
    pub normalize: bool,
    /// Calibration text files (paragraphs are rows), sampled the BookCorpus way.
    #[cfg_attr(feature = "clap", arg(long, conflicts_with = "calibration_ids"))]
    #[serde(deserialize_with = "comma_list")]
    pub calibration: Vec<PathBuf>,
    /// Calibration windows as a JSON array of token-id arrays.
    #[cfg_attr(feature = "clap", arg(long))]
    pub calibration_ids: Option<PathBuf>,
    /// Calibration windows drawn from --calibration text.
    #[cfg_attr(feature = "clap", arg(long, default_value_t = PruneSettings::default().samples))]
    pub samples: usize,
    /// Tokens per calibration window.
    #[cfg_attr(feature = "clap", arg(long, default_value_t = PruneSettings::default().seq_len))]
    pub seq_len: usize,
    /// Seeds the calibration draw and the random criterion.
    #[cfg_attr(feature = "clap", arg(long, default_value_t = PruneSettings::default().seed))]
    pub seed: u64,
    /// Perplexity of the pruned model, NAME=FILE[,NAME=FILE] with NAME in {wikitext2, ptb}.
    #[cfg_attr(feature = "clap", arg(long, value_name = "NAME=FILE,...", value_delimiter = ','))]
    #[serde(deserialize_with = "comma_list")]
    pub eval_ppl: Vec<String>,
    /// Evaluate only the first K chunks of each --eval-ppl dataset.
    #[cfg_attr(feature = "clap", arg(long))]
    pub eval_max_chunks: Option<usize>,
    /// Tokens per --eval-ppl chunk.
    #[cfg_attr(feature = "clap", arg(long, default_value_t = PruneSettings::default().eval_seq_len))]
    pub eval_seq_len: usize,
    /// Table 3 latency: time the first N chunks of the first --eval-ppl dataset (batch 1),
    /// before and after pruning; 0 turns it off.
    #[cfg_attr(feature = "clap", arg(long, value_name = "N", default_value_t = PruneSettings::default().latency_chunks))]
    pub latency_chunks: usize,
    /// Weights above this size are written as Hugging Face shards with an index.
    #[cfg_attr(feature = "clap", arg(long, value_name = "SIZE", default_value = "5GB", value_parser = super::parse_size))]
    #[serde(deserialize_with = "size")]
    pub max_shard_size: u64,
    /// The weights' dtype in memory [default: f32 on CPU workers, bf16 on GPU workers];
    /// gradient statistics are f32 whatever it is.
    #[cfg_attr(feature = "clap", arg(long, value_enum))]
    pub dtype: Option<WeightDtype>,
}

impl Default for PruneSettings {
    fn default() -> Self {
        Self {
            strategy: Strategy::Block,
            // No default: a prune says how much it removes.
            ratio: 0.0,
            attn_layers: None,
            mlp_layers: None,
            layers: None,
            gqa: GqaMode::KvGroups,
            round_to: 1,
            iterative_steps: 1,
            criterion: Criterion::ParamFirst,
            reduction: None,
            scope: Scope::Local,
            normalize: false,
            layer_profile: None,
            reconstruct: false,
            compensate_bias: false,
            damping: 0.01,
            calibration: Vec::new(),
            calibration_ids: None,
            samples: 10,
            seq_len: 64,
            seed: 42,
            eval_ppl: Vec::new(),
            eval_max_chunks: None,
            eval_seq_len: 128,
            latency_chunks: 32,
            max_shard_size: 5_000_000_000,
            dtype: None,
        }
    }
}

impl PruneSettings {
    /// Checks what the settings alone decide (the layer ranges need the model: [`Self::request`]).
    pub fn validate(&self) -> Result<(), JobError> {
        if !(self.ratio > 0.0 && self.ratio < 1.0) {
            return Err(JobError::at("ratio", self.ratio, "must be in (0, 1)"));
        }
        if self.iterative_steps == 0 {
            return Err(JobError::new("iterative_steps", "must be at least 1"));
        }
        if self.round_to == 0 {
            return Err(JobError::new("round_to", "must be at least 1"));
        }
        if self.eval_seq_len < 2 {
            return Err(JobError::at("eval_seq_len", self.eval_seq_len, "must be at least 2"));
        }
        if !self.calibration.is_empty() && self.calibration_ids.is_some() {
            return Err(JobError::new("calibration", "give calibration text or {calibration_ids}, not both"));
        }
        let no_calibration = self.calibration.is_empty() && self.calibration_ids.is_none();
        if self.criterion.needs_calibration() && no_calibration {
            let msg = format!("the criterion {} needs calibration data: {{calibration}} FILE (text) or {{calibration_ids}} FILE", self.criterion.name());
            return Err(JobError::new("calibration", msg));
        }
        if self.reconstruct && no_calibration {
            return Err(JobError::new("calibration", "{reconstruct} needs calibration data: {calibration} FILE (text) or {calibration_ids} FILE"));
        }
        if self.compensate_bias && no_calibration {
            return Err(JobError::new("calibration", "{compensate_bias} needs calibration data: {calibration} FILE (text) or {calibration_ids} FILE"));
        }
        if !(self.damping.is_finite() && self.damping >= 0.0) {
            return Err(JobError::at("damping", self.damping, "must be a finite number ≥ 0"));
        }
        self.profile()?;
        if let Some(bad) = self.eval_ppl.iter().find(|spec| !spec.contains('=')) {
            return Err(JobError::at("eval_ppl", bad, "expected NAME=FILE"));
        }
        Ok(())
    }

    fn profile(&self) -> Result<LayerProfile, JobError> {
        self.layer_profile.as_deref().map_or(Ok(LayerProfile::Uniform), |p| LayerProfile::parse(p).map_err(|e| JobError::at("layer_profile", p, e)))
    }

    /// The prune as the planner takes it, for a model of `n_layers` layers.
    pub fn request(&self, n_layers: usize) -> Result<PruneRequest, JobError> {
        let request = PruneRequest {
            strategy: self.strategy,
            ratio: self.ratio,
            attn_layers: layer_range("attn_layers", self.attn_layers.as_deref(), n_layers)?,
            mlp_layers: layer_range("mlp_layers", self.mlp_layers.as_deref(), n_layers)?,
            layers: layer_range("layers", self.layers.as_deref(), n_layers)?,
            criterion: self.criterion,
            reduction: self.reduction.unwrap_or(self.criterion.default_reduction()),
            scope: self.scope,
            normalize: self.normalize,
            gqa: self.gqa,
            round_to: self.round_to,
            steps: self.iterative_steps,
            seed: self.seed,
            reconstruct: self.reconstruct,
            compensate_bias: self.compensate_bias,
            damping: self.damping,
            profile: self.profile()?,
        };
        // The profile's fit needs the layer ranges, known only now.
        if let Some(text) = &self.layer_profile {
            request.profile.check(request.ratio, &request.profiled_ranges()).map_err(|e| {
                let message = match e {
                    PlannerError::Profile(m) => m,
                    other => other.to_string(),
                };
                JobError::at("layer_profile", text, message)
            })?;
        }
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_name_their_key() {
        let ok = PruneSettings { ratio: 0.25, calibration_ids: Some("ids.json".into()), ..Default::default() };
        assert_eq!(ok.validate(), Ok(()));
        assert_eq!(ok.request(30).unwrap().attn_layers, 0..30);
        let bad = |s: PruneSettings| s.validate().unwrap_err().key;
        assert_eq!(bad(PruneSettings { ratio: 1.5, ..ok.clone() }), "ratio");
        assert_eq!(bad(PruneSettings { calibration_ids: None, ..ok.clone() }), "calibration");
        assert_eq!(bad(PruneSettings { iterative_steps: 0, ..ok.clone() }), "iterative_steps");
        assert_eq!(bad(PruneSettings { layer_profile: Some("ramp:1".into()), ..ok.clone() }), "layer_profile");
        let long = PruneSettings { layer_profile: Some("1,2,3".into()), attn_layers: Some("0:2".into()), mlp_layers: Some("0:2".into()), ..ok.clone() };
        assert_eq!(long.request(30).unwrap_err().key, "layer_profile");
        let far = PruneSettings { attn_layers: Some("2:9".into()), ..ok };
        assert_eq!(far.request(3).unwrap_err().key, "attn_layers");
    }
}

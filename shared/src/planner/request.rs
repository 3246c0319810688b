//! What to prune, as the planner takes it: one typed request, checked against the model's
//! shape before anything runs.

use super::modes::{Criterion, GqaMode, Reduction, Scope, Strategy};
use super::profile::LayerProfile;
use super::PlannerError;
use crate::family::QkvBias;
use crate::ModelSpec;
use std::ops::Range;

#[derive(Debug, Clone, PartialEq)]
pub struct PruneRequest {
    pub strategy: Strategy,
    /// Share of each group's channels (of the layers in range, layer-wise) to remove.
    pub ratio: f64,
    /// Layers whose heads are pruned (block-wise), end exclusive.
    pub attn_layers: Range<usize>,
    /// Layers whose MLP neurons are pruned (block-wise), end exclusive.
    pub mlp_layers: Range<usize>,
    /// Layers that may be removed (layer-wise), end exclusive.
    pub layers: Range<usize>,
    pub criterion: Criterion,
    pub reduction: Reduction,
    pub scope: Scope,
    /// With local scope, block-wise: how the ratio is spread over the layers.
    pub profile: LayerProfile,
    /// With global scope: each group's scores divided by their mean before ranking.
    pub normalize: bool,
    pub gqa: GqaMode,
    /// Kept MLP and hidden widths are rounded up to a multiple of this (1: as selected).
    pub round_to: usize,
    /// Step `k` of `steps` prunes toward `k/steps` of the ratio with fresh statistics.
    pub steps: usize,
    /// Seeds the random criterion's scores.
    pub seed: u64,
    /// Re-solve the consuming projections' kept columns after each step (block-wise).
    pub reconstruct: bool,
    /// Fold the removed heads' and neurons' mean contribution into o_proj's and down_proj's
    /// biases after each step (block-wise, LLaMA).
    pub compensate_bias: bool,
    /// The Gram matrix's damping (share of its mean diagonal) for `obs` and reconstruction.
    pub damping: f64,
}

impl PruneRequest {
    /// Refuses requests that cannot run on a model of `spec`'s shape.
    pub fn check(&self, spec: &ModelSpec) -> Result<(), PlannerError> {
        let n = spec.n_layers();
        for (what, r) in [("attention", &self.attn_layers), ("MLP", &self.mlp_layers), ("removable", &self.layers)] {
            if r.start > r.end || r.end > n {
                return Err(PlannerError::LayerRange { what, start: r.start, end: r.end, layers: n });
            }
        }
        if !(self.ratio > 0.0 && self.ratio < 1.0) {
            return Err(PlannerError::Ratio(self.ratio));
        }
        if self.steps == 0 {
            return Err(PlannerError::AtLeastOne("iterative steps"));
        }
        if self.round_to == 0 {
            return Err(PlannerError::AtLeastOne("rounding multiple"));
        }
        if !(self.damping.is_finite() && self.damping >= 0.0) {
            return Err(PlannerError::Damping(self.damping));
        }
        let family = spec.architecture.family();
        let unsupported = if self.criterion.needs_activations() && self.strategy != Strategy::Block {
            Some("the activation criteria (fluctuation, wanda, obs) score heads and neurons: they need --strategy block")
        } else if self.scope == Scope::Standardized && self.strategy != Strategy::Block {
            Some("the standardized scope shares a parameter budget among heads and neurons: it needs --strategy block")
        } else if self.reconstruct && self.strategy != Strategy::Block {
            Some("reconstruction re-solves the projections that consume pruned heads and neurons: it needs --strategy block")
        } else if self.compensate_bias && self.strategy != Strategy::Block {
            Some("bias compensation folds pruned heads and neurons into their consumers' biases: it needs --strategy block")
        } else if self.compensate_bias && !(family.qkv_bias == QkvBias::WithOutput && family.mlp_bias) {
            Some("bias compensation writes o_proj and down_proj biases, which only LLaMA's transformers class (attention_bias, mlp_bias) loads")
        } else if self.gqa == GqaMode::QueryHeads && self.strategy != Strategy::Block {
            Some("pruning query heads only (GQA) is a block-wise option")
        } else if self.profile != LayerProfile::Uniform && (self.strategy != Strategy::Block || self.scope != Scope::Local) {
            Some("a layer profile spreads the ratio over the layers' heads and neurons: it needs --strategy block and --scope local")
        } else if self.strategy == Strategy::Layer && self.scope != Scope::Local {
            Some("layer-wise pruning ranks the layers of one range; global scope does not apply")
        } else if self.gqa == GqaMode::QueryHeads && self.scope != Scope::Local {
            Some("pruning query heads evenly per KV head needs local scope")
        } else {
            None
        };
        unsupported.map_or(Ok(()), |why| Err(PlannerError::Unsupported(why)))?;
        self.profile.check(self.ratio, &self.profiled_ranges())
    }

    /// The share of its units layer `layer`'s attention (or MLP) loses at a step whose target
    /// is `target`, after the layer profile.
    pub fn layer_target(&self, target: f64, layer: usize, attention: bool) -> f64 {
        let range = if attention { &self.attn_layers } else { &self.mlp_layers };
        self.profile.layer_target(target, layer, range, &LayerProfile::span(&self.profiled_ranges()))
    }

    /// The ranges a layer profile spreads the ratio over.
    pub fn profiled_ranges(&self) -> [(&'static str, &Range<usize>); 2] {
        [("attention", &self.attn_layers), ("MLP", &self.mlp_layers)]
    }
}

//! Applying a plan step to a whole model's weights, through the stage code every engine cuts
//! with ([`cut_stage`]) on a model of one stage, so that nothing slices differently from
//! `prune` and `apply-plan`.

use super::engine::cut_stage;
use crate::cluster::shard::Collectives;
use crate::collective::SingleRank;
use crate::error::Result;
use crate::loader::InMemoryWeights;
use crate::model::{LlamaModel, LoadOptions};
use candle_core::{Device, Tensor};
use llmprune_shared::layout::ShardLayout;
use llmprune_shared::plan::PlanStep;
use llmprune_shared::planner::spec_after_step;
pub use llmprune_shared::planner::{check_step, plan_groups};
use llmprune_shared::ModelSpec;
use std::collections::HashMap;

/// `spec` and `weights` after `step`: its groups cut to their kept units, then its layers
/// removed. Refuses a step that does not fit the model ([`check_step`]).
pub fn apply_step(spec: &ModelSpec, weights: &HashMap<String, Tensor>, step: &PlanStep) -> Result<(ModelSpec, HashMap<String, Tensor>)> {
    let after = spec_after_step(spec, step)?;
    let device = weights.values().next().map_or(Device::Cpu, |t| t.device().clone());
    let source = InMemoryWeights { label: "the model's weights".into(), tensors: weights.clone() };
    let mut model = LlamaModel::load(spec.clone(), &source, &LoadOptions::full(spec), &device)?;
    let mut comms = Collectives { pipeline: Box::new(SingleRank), replicas: Box::new(SingleRank) };
    cut_stage(&mut model, &ShardLayout::whole(spec.n_layers()), &mut comms, step, &after, &mut None, &mut |_, _| {})?;
    Ok((after, model.weights_by_name()))
}

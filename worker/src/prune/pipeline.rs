//! Pruning in this process: the planner's step loop ([`prune_steps`]) over the whole model
//! as one stage ([`LocalEngine`]), the same loop and stage code a cluster runs.

use super::engine::LocalEngine;
use crate::error::Result;
use crate::model::LlamaModel;
use candle_core::Tensor;
use llmprune_shared::plan::PlanStep;
use llmprune_shared::planner::{prune_steps, run_ready, PruneRequest, StepSeconds};
use llmprune_shared::ModelSpec;
use std::collections::HashMap;

pub struct PruneOutcome {
    pub spec: ModelSpec,
    pub weights: HashMap<String, Tensor>,
    /// The plan's steps, as applied.
    pub steps: Vec<PlanStep>,
    pub seconds: StepSeconds,
}

/// Calibration windows for a step (0-based): the same windows each step, or fresh ones.
pub type Calibration<'a> = dyn FnMut(usize) -> Result<Vec<Vec<u32>>> + 'a;

/// Prunes `model` in `req.steps` steps, asking `calibration` for each step's windows when the
/// criterion needs gradients.
pub fn prune(model: LlamaModel, calibration: &mut Calibration, req: &PruneRequest) -> Result<PruneOutcome> {
    let spec = model.spec.clone();
    let mut engine = LocalEngine::new(model);
    let outcome = run_ready(prune_steps(&mut engine, &spec, req, calibration))??;
    Ok(PruneOutcome { spec: outcome.spec, weights: engine.model.weights_by_name(), steps: outcome.steps, seconds: outcome.seconds })
}

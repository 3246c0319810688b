//! Applying a plan step to a model's weights. `prune` decides a step and applies it through
//! here, and `apply-plan` replays a saved plan through the same code, so a replay gives the
//! model `prune` wrote. The step is checked and the new shape computed by the planner.

use super::slice::{remove_layers, slice_weights, sliced_spec};
use crate::error::{Error, Result};
use candle_core::Tensor;
use llmprune_shared::depgraph::Group;
use llmprune_shared::plan::PlanStep;
use llmprune_shared::planner::spec_after_step;
pub use llmprune_shared::planner::{check_step, plan_groups};
use llmprune_shared::ModelSpec;
use std::collections::HashMap;

/// `spec` and `weights` after `step`: its groups cut to their kept units, then its layers
/// removed. Refuses a step that does not fit the model ([`check_step`]).
pub fn apply_step(spec: &ModelSpec, weights: &HashMap<String, Tensor>, step: &PlanStep) -> Result<(ModelSpec, HashMap<String, Tensor>)> {
    let (chosen, kept): (Vec<Group>, Vec<Vec<usize>>) = check_step(spec, step)?.into_iter().unzip();
    let after = spec_after_step(spec, step)?;
    let sliced = slice_weights(weights, &chosen, &kept)?;
    let sliced_shape = sliced_spec(spec, &sliced)?;
    let (shape, weights) = if step.removed_layers.is_empty() {
        (sliced_shape, sliced)
    } else {
        remove_layers(&sliced_shape, &sliced, &step.removed_layers).map_err(|e| Error::Plan(e.to_string()))?
    };
    // The planner's shape and the weights' must agree; a mismatch is a slicing bug.
    if shape != after {
        return Err(Error::Plan(format!("the sliced weights have {shape:?}, the plan expects {after:?}")));
    }
    Ok((after, weights))
}

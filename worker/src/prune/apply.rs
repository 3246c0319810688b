//! Applying a plan step to a model's weights. `prune` decides a step and applies it through
//! here, and `apply-plan` replays a saved plan through the same code, so a replay gives the
//! model `prune` wrote.

use super::slice::{remove_layers, slice_weights, sliced_spec};
use crate::error::{Error, Result};
use candle_core::Tensor;
use llmprune_shared::depgraph::{llama_graph, query_head_group, structure, Fusion, Group, Structure};
use llmprune_shared::plan::PlanStep;
use llmprune_shared::ModelSpec;
use std::collections::{HashMap, HashSet};

/// Every group a plan may name in `spec`: the discovered coupled groups, and under GQA the
/// query-head groups of each layer (for pruning query heads while keeping the KV heads).
pub fn plan_groups(spec: &ModelSpec) -> Result<Vec<Group>> {
    let mut groups = llama_graph(spec, Fusion::Separate).groups().map_err(|e| Error::Invalid(e.to_string()))?;
    let query_heads: Vec<Group> = groups
        .iter()
        .filter_map(|g| match structure(&g.root) {
            Some(Structure::Heads(i)) => query_head_group(g, spec.layers[i].n_rep()),
            _ => None,
        })
        .collect();
    groups.extend(query_heads);
    Ok(groups)
}

fn misfit(reason: String) -> Error {
    Error::Plan(reason)
}

/// `spec` and `weights` after `step`: its groups cut to their kept units, then its layers
/// removed. Refuses a step that does not fit the model ([`check_step`]).
pub fn apply_step(spec: &ModelSpec, weights: &HashMap<String, Tensor>, step: &PlanStep) -> Result<(ModelSpec, HashMap<String, Tensor>)> {
    let (chosen, kept): (Vec<Group>, Vec<Vec<usize>>) = check_step(spec, step)?.into_iter().unzip();
    let sliced = slice_weights(weights, &chosen, &kept)?;
    let spec = sliced_spec(spec, &sliced)?;
    if step.removed_layers.is_empty() {
        return Ok((spec, sliced));
    }
    remove_layers(&spec, &sliced, &step.removed_layers).map_err(|e| misfit(e.to_string()))
}

/// The groups `step` cuts in `spec`, with their kept units, after checking that the step fits
/// the model: known groups, the same unit counts, kept units ascending and in range, query
/// heads kept evenly per KV head, no structure cut twice.
pub fn check_step(spec: &ModelSpec, step: &PlanStep) -> Result<Vec<(Group, Vec<usize>)>> {
    let universe = plan_groups(spec)?;
    let by_root: HashMap<&str, &Group> = universe.iter().map(|g| (g.root.as_str(), g)).collect();
    let mut chosen: Vec<(Group, Vec<usize>)> = Vec::with_capacity(step.groups.len());
    let mut touched_layers: HashSet<(usize, &str)> = HashSet::new();
    for pg in &step.groups {
        let g = by_root.get(pg.root.as_str()).ok_or_else(|| misfit(format!("the model has no group `{}`", pg.root)))?;
        if g.units != pg.units {
            return Err(misfit(format!("group `{}` has {} units in the model, {} in the plan", pg.root, g.units, pg.units)));
        }
        if pg.kept.is_empty() || pg.kept.windows(2).any(|w| w[0] >= w[1]) || pg.kept.iter().any(|&u| u >= g.units) {
            return Err(misfit(format!("group `{}`: kept units must be ascending, distinct and below {}", pg.root, g.units)));
        }
        // repeat_kv serves query head t from KV head t / n_rep: every KV head must keep the
        // same number of its query heads, or heads would silently change KV heads.
        if let Some(Structure::QueryHeads(i)) = structure(&g.root) {
            let rep = spec.layers[i].n_rep();
            let per_kv: Vec<usize> = (0..spec.layers[i].n_kv_heads).map(|b| pg.kept.iter().filter(|&&u| u / rep == b).count()).collect();
            if per_kv.windows(2).any(|w| w[0] != w[1]) {
                return Err(misfit(format!("group `{}`: the KV heads keep {per_kv:?} query heads; they must keep equally many", pg.root)));
            }
        }
        // A layer's head group and its query-head group share q and o: only one may be cut.
        let key = match structure(&g.root) {
            Some(Structure::Heads(i) | Structure::QueryHeads(i)) => (i, "attention"),
            Some(Structure::Neurons(i)) => (i, "mlp"),
            _ => (usize::MAX, g.root.as_str()),
        };
        if !touched_layers.insert(key) {
            return Err(misfit(format!("group `{}`: its structure is cut twice in one step", pg.root)));
        }
        chosen.push(((*g).clone(), pg.kept.clone()));
    }
    Ok(chosen)
}

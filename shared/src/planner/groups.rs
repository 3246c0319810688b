//! The groups a plan may name, the candidates of a step, the check that a step fits a model,
//! and the model's shape after a step: all from the model's spec, no weights needed.

use super::modes::{GqaMode, Strategy};
use super::request::PruneRequest;
use super::PlannerError;
use crate::depgraph::{llama_graph, query_head_group, structure, Fusion, Group, Structure};
use crate::plan::PlanStep;
use crate::ModelSpec;
use std::collections::{HashMap, HashSet};

/// Every group a plan may name in `spec`: the discovered coupled groups, and under GQA the
/// query-head groups of each layer (for pruning query heads while keeping the KV heads).
pub fn plan_groups(spec: &ModelSpec) -> Result<Vec<Group>, PlannerError> {
    let mut groups = llama_graph(spec, Fusion::Separate).groups()?;
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

/// The groups a block- or channel-wise step scores, in plan order.
pub fn candidate_groups(spec: &ModelSpec, req: &PruneRequest) -> Result<Vec<Group>, PlannerError> {
    let query_heads = |i: usize| req.gqa == GqaMode::QueryHeads && spec.layers[i].n_rep() > 1;
    let candidate = |g: &Group| match (req.strategy, structure(&g.root)) {
        (Strategy::Block, Some(Structure::Heads(i))) => req.attn_layers.contains(&i) && !query_heads(i),
        (Strategy::Block, Some(Structure::QueryHeads(i))) => req.attn_layers.contains(&i) && query_heads(i),
        (Strategy::Block, Some(Structure::Neurons(i))) => req.mlp_layers.contains(&i),
        (Strategy::Channel, Some(Structure::Hidden)) => true,
        _ => false,
    };
    let groups: Vec<Group> = plan_groups(spec)?.into_iter().filter(candidate).collect();
    if groups.is_empty() {
        return Err(PlannerError::NoCandidates("no group to prune: the layer ranges are empty"));
    }
    Ok(groups)
}

/// The groups `step` cuts in `spec`, with their kept units, after checking that the step fits
/// the model: known groups, the same unit counts, kept units ascending and in range, query
/// heads kept evenly per KV head, no structure cut twice, removed layers distinct and in range.
pub fn check_step(spec: &ModelSpec, step: &PlanStep) -> Result<Vec<(Group, Vec<usize>)>, PlannerError> {
    let misfit = PlannerError::Misfit;
    let universe = plan_groups(spec)?;
    let by_root: HashMap<&str, &Group> = universe.iter().map(|g| (g.root.as_str(), g)).collect();
    let mut chosen: Vec<(Group, Vec<usize>)> = Vec::with_capacity(step.groups.len());
    let mut touched: HashSet<(usize, &str)> = HashSet::new();
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
        if !touched.insert(key) {
            return Err(misfit(format!("group `{}`: its structure is cut twice in one step", pg.root)));
        }
        chosen.push(((*g).clone(), pg.kept.clone()));
    }
    let n = spec.n_layers();
    let mut gone = vec![false; n];
    for &i in &step.removed_layers {
        if i >= n || std::mem::replace(&mut gone[i], true) {
            return Err(misfit(format!("cannot remove layer {i} of a model with {n} layers (or twice)")));
        }
    }
    if !step.removed_layers.is_empty() && step.removed_layers.len() == n {
        return Err(misfit(format!("removing all {n} layers leaves no model")));
    }
    Ok(chosen)
}

/// The model's shape after `step`: each cut group's structure narrowed to its kept units,
/// then the removed layers dropped (later layers renumbered). The same shape the sliced
/// weights have; workers and the coordinator compute it without them. A step that does not
/// fit the model ([`check_step`]) is refused.
pub fn spec_after_step(spec: &ModelSpec, step: &PlanStep) -> Result<ModelSpec, PlannerError> {
    let mut out = spec.clone();
    for (g, kept) in check_step(spec, step)? {
        let k = kept.len();
        match structure(&g.root) {
            Some(Structure::Heads(i)) => {
                // The root is the KV heads (GQA) or the heads (MHA): each unit carries
                // n_heads/units query heads and n_kv/units KV heads.
                let l = &mut out.layers[i];
                (l.n_heads, l.n_kv_heads) = (k * (l.n_heads / g.units), k * (l.n_kv_heads / g.units));
            }
            Some(Structure::QueryHeads(i)) => out.layers[i].n_heads = k,
            Some(Structure::Neurons(i)) => out.layers[i].intermediate_size = k,
            Some(Structure::Hidden) => out.hidden_size = k,
            None => return Err(PlannerError::Misfit(format!("group `{}` is not a structure this planner cuts", g.root))),
        }
    }
    if step.reconstruct.as_ref().is_some_and(|r| r.bias) {
        // The compensated biases, and zero ones beside them where the family's
        // transformers class puts biases on every projection of a kind.
        (out.attention_bias, out.o_bias, out.mlp_bias) = (true, true, true);
    }
    if !step.removed_layers.is_empty() {
        let mut gone = vec![false; out.n_layers()];
        for &i in &step.removed_layers {
            gone[i] = true;
        }
        out.layers = out.layers.iter().zip(&gone).filter(|(_, &g)| !g).map(|(l, _)| *l).collect();
    }
    out.validate().map_err(|(field, reason)| PlannerError::Misfit(format!("the pruned model: {field}: {reason}")))?;
    Ok(out)
}

/// The layers `range` (current indices) covers after `removed` layers go: those before it
/// shift it down, those inside shrink it.
pub fn renumber_range(range: &std::ops::Range<usize>, removed: &[usize]) -> std::ops::Range<usize> {
    let before = |i: usize| removed.iter().filter(|&&r| r < i).count();
    range.start - before(range.start)..range.end - before(range.end)
}

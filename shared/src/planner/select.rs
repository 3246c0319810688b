//! The decision of a step: from the candidates' scores to the kept units (local or global,
//! query heads evenly per KV head, widths rounded) or to the removed layers.

use super::modes::Scope;
use super::request::PruneRequest;
use super::PlannerError;
use crate::depgraph::{structure, Axis, Group, Structure};
use crate::plan::{PlanGroup, PlanStep};
use crate::selection::{keep_global, keep_local, keep_standardized, round_kept, Scored};
use crate::ModelSpec;
use std::collections::HashMap;

/// The step that keeps, of each candidate group, the units its scores rank highest.
/// `initial_units` remembers each group's units at the first step (iterative targets are
/// shares of those).
pub fn select_units(
    spec: &ModelSpec,
    groups: &[Group],
    scores: Vec<Vec<f32>>,
    req: &PruneRequest,
    target: f64,
    initial_units: &mut HashMap<String, usize>,
) -> Result<PlanStep, PlannerError> {
    if scores.len() != groups.len() || groups.iter().zip(&scores).any(|(g, s)| s.len() != g.units) {
        return Err(PlannerError::Scores("scores do not match the candidate groups".into()));
    }
    let scored: Vec<Scored> = groups
        .iter()
        .zip(&scores)
        .map(|(g, s)| {
            let initial = *initial_units.entry(g.root.clone()).or_insert(g.units);
            Scored { name: &g.root, unit_width: g.unit_width, scores: s, initial_units: initial }
        })
        .collect();
    let mut kept = match req.scope {
        Scope::Local => groups
            .iter()
            .zip(&scored)
            .map(|(g, s)| match structure(&g.root) {
                Some(Structure::QueryHeads(i)) => keep_evenly(s, spec.layers[i].n_kv_heads, req.layer_target(target, i, true)),
                Some(Structure::Heads(i)) => Ok(keep_local(std::slice::from_ref(s), req.layer_target(target, i, true))?.remove(0)),
                Some(Structure::Neurons(i)) => Ok(keep_local(std::slice::from_ref(s), req.layer_target(target, i, false))?.remove(0)),
                _ => Ok(keep_local(std::slice::from_ref(s), target)?.remove(0)),
            })
            .collect::<Result<Vec<_>, PlannerError>>()?,
        Scope::Global => keep_global(&scored, target, req.normalize)?,
        Scope::Standardized => keep_standardized(&scored, &groups.iter().map(|g| unit_cost(spec, g)).collect::<Vec<_>>(), target)?,
    };
    // Head counts are whole heads already; widths of single channels get aligned.
    for (s, k) in scored.iter().zip(kept.iter_mut()).filter(|(s, _)| s.unit_width == 1) {
        round_kept(std::slice::from_ref(s), std::slice::from_mut(k), req.round_to);
    }
    let groups = groups.iter().zip(kept).zip(scores).map(|((g, kept), scores)| PlanGroup { root: g.root.clone(), units: g.units, kept, scores }).collect();
    Ok(PlanStep { ratio: target, groups, removed_layers: Vec::new(), layer_scores: Vec::new(), reconstruct: None })
}

/// The parameters one unit of a block-wise `group` holds: each member's channels of the unit
/// times the width of the member's other axis (the hidden size for projections; 1 for a bias or
/// a norm's elements).
fn unit_cost(spec: &ModelSpec, group: &Group) -> usize {
    group
        .members
        .iter()
        .map(|m| {
            let channels = m.channels.first().map_or(0, Vec::len);
            let other = if m.axis == Axis::Elements || m.param.ends_with(".bias") { 1 } else { spec.hidden_size };
            channels * other
        })
        .sum()
}

/// The kept query heads of a GQA layer, each of its `n_kv` KV heads losing the same number.
fn keep_evenly(s: &Scored, n_kv: usize, target: f64) -> Result<Vec<usize>, PlannerError> {
    let rep = s.scores.len() / n_kv;
    let mut kept = Vec::with_capacity(s.scores.len());
    for (b, scores) in s.scores.chunks(rep).enumerate() {
        let name = format!("{} (KV head {b})", s.name);
        let block = Scored { name: &name, unit_width: s.unit_width, scores, initial_units: s.initial_units / n_kv };
        let k = keep_local(&[block], target)?;
        kept.extend(k[0].iter().map(|u| b * rep + u));
    }
    Ok(kept)
}

/// The layer-wise step: of the `candidates` (current layer indices) scored `scores`, the
/// lowest-scoring go, as many as the target share of the removable range asks.
pub fn select_layers(candidates: &[usize], scores: Vec<f32>, req: &PruneRequest, target: f64) -> Result<PlanStep, PlannerError> {
    if scores.len() != candidates.len() {
        return Err(PlannerError::Scores(format!("{} layer scores for {} candidate layers", scores.len(), candidates.len())));
    }
    let scored = Scored { name: "layers", unit_width: 1, scores: &scores, initial_units: req.layers.len() };
    let kept = keep_local(&[scored], target)?.remove(0);
    let removed_layers = (0..candidates.len()).filter(|u| kept.binary_search(u).is_err()).map(|u| candidates[u]).collect();
    let layer_scores = candidates.iter().copied().zip(scores.iter().copied()).collect();
    Ok(PlanStep { ratio: target, groups: Vec::new(), removed_layers, layer_scores, reconstruct: None })
}

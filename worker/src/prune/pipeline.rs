//! One-shot pruning in one process: discover the groups, take the calibration statistics the
//! criterion needs, score the candidate groups, select, slice (reference §1.2, block-wise and
//! channel-wise). The cluster runs the same steps with the statistics computed per shard.

use super::importance::{group_scores, Criterion, Reduction};
use super::slice::{slice_weights, sliced_spec};
use super::statistics::{gradient_stats, GradientStats};
use crate::error::{Error, Result};
use crate::model::LlamaModel;
use candle_core::Tensor;
use llmprune_shared::depgraph::{llama_graph, structure, Fusion, Group, Structure};
use llmprune_shared::selection::{keep_global, keep_local, Scored};
use llmprune_shared::{ModelSpec, PyRandom};
use std::collections::{HashMap, HashSet};
use std::ops::Range;
use std::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// Heads and MLP neurons of the layers in range (Types A and B).
    Block,
    /// Hidden channels of the whole network (Type C).
    Channel,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Every candidate group loses the same share.
    Local,
    /// All candidate units ranked together; `normalize` divides each group's scores by
    /// their mean first.
    Global { normalize: bool },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Importance {
    /// Seeded uniform scores (the reference's `torch.rand`; here Python's `random`).
    Random,
    Scored(Criterion, Reduction),
}

#[derive(Debug, Clone)]
pub struct PruneRequest {
    pub strategy: Strategy,
    pub ratio: f64,
    /// Layers whose heads are pruned (block-wise), end exclusive.
    pub attn_layers: Range<usize>,
    /// Layers whose MLP neurons are pruned (block-wise), end exclusive.
    pub mlp_layers: Range<usize>,
    pub importance: Importance,
    pub scope: Scope,
    pub seed: u64,
}

/// A pruned group: its root, its units before, the kept ones, and the scores they had.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PrunedGroup {
    pub root: String,
    pub units: usize,
    pub kept: Vec<usize>,
    pub scores: Vec<f32>,
}

pub struct PruneOutcome {
    pub spec: ModelSpec,
    pub weights: HashMap<String, Tensor>,
    pub groups: Vec<PrunedGroup>,
    /// Seconds spent on gradients, scoring and slicing.
    pub seconds: [f64; 3],
}

/// Prunes `model` (whose weights become variables if gradients are needed) with
/// calibration `windows`.
pub fn prune(model: &mut LlamaModel, windows: &[Vec<u32>], req: &PruneRequest) -> Result<PruneOutcome> {
    let n = model.spec.n_layers();
    for (flag, r) in [("attention", &req.attn_layers), ("MLP", &req.mlp_layers)] {
        if r.start > r.end || r.end > n {
            return Err(Error::Invalid(format!("{flag} layer range {}:{} is outside the model's {n} layers", r.start, r.end)));
        }
    }
    let groups = llama_graph(&model.spec, Fusion::Separate).groups().map_err(|e| Error::Invalid(e.to_string()))?;
    let candidate = |g: &Group| match (req.strategy, structure(&g.root)) {
        (Strategy::Block, Some(Structure::Heads(i))) => req.attn_layers.contains(&i),
        (Strategy::Block, Some(Structure::Neurons(i))) => req.mlp_layers.contains(&i),
        (Strategy::Channel, Some(Structure::Hidden)) => true,
        _ => false,
    };
    let candidates: Vec<usize> = (0..groups.len()).filter(|&i| candidate(&groups[i])).collect();
    if candidates.is_empty() {
        return Err(Error::Invalid("no group to prune: the layer ranges are empty".into()));
    }

    let t = Instant::now();
    let stats = match req.importance {
        Importance::Scored(c, _) if c.needs_gradient() => {
            let wanted: HashSet<&str> =
                candidates.iter().flat_map(|&i| groups[i].members.iter().map(|m| m.param.as_str())).collect();
            let vars = model.make_trainable(|name| wanted.contains(name))?;
            Some(gradient_stats(model, &vars, windows, c.needs_fisher())?)
        }
        _ => None,
    };
    let gradients_s = t.elapsed().as_secs_f64();

    let t = Instant::now();
    let weights = model.weights_by_name();
    let no_stats = GradientStats { grad: HashMap::new(), fisher: None };
    let mut rng = PyRandom::new(req.seed);
    let scores: Vec<Vec<f32>> = candidates
        .iter()
        .map(|&i| match req.importance {
            Importance::Random => Ok((0..groups[i].units).map(|_| rng.random() as f32).collect()),
            Importance::Scored(c, r) => group_scores(&groups[i], c, r, &weights, stats.as_ref().unwrap_or(&no_stats)),
        })
        .collect::<Result<_>>()?;
    let scored: Vec<Scored> = candidates
        .iter()
        .zip(&scores)
        .map(|(&i, s)| Scored { name: &groups[i].root, unit_width: groups[i].unit_width, scores: s })
        .collect();
    let kept_candidates = match req.scope {
        Scope::Local => keep_local(&scored, req.ratio),
        Scope::Global { normalize } => keep_global(&scored, req.ratio, normalize),
    }
    .map_err(|e| Error::Invalid(e.to_string()))?;
    let scoring_s = t.elapsed().as_secs_f64();

    let t = Instant::now();
    let mut kept: Vec<Vec<usize>> = groups.iter().map(|g| (0..g.units).collect()).collect();
    for (&i, k) in candidates.iter().zip(&kept_candidates) {
        kept[i] = k.clone();
    }
    let sliced = slice_weights(&weights, &groups, &kept)?;
    let spec = sliced_spec(&model.spec, &sliced)?;
    let slicing_s = t.elapsed().as_secs_f64();
    let pruned = candidates
        .iter()
        .zip(kept_candidates)
        .zip(scores)
        .map(|((&i, kept), scores)| PrunedGroup { root: groups[i].root.clone(), units: groups[i].units, kept, scores })
        .collect();
    Ok(PruneOutcome { spec, weights: sliced, groups: pruned, seconds: [gradients_s, scoring_s, slicing_s] })
}

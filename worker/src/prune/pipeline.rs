//! Pruning in one process: discover the groups, take the calibration statistics the criterion
//! needs, score the candidates, select, and apply the step (reference §1.2: block-wise,
//! channel-wise, layer-wise; iterative steps with fresh gradients). The cluster runs the
//! same steps with the statistics computed per shard.

use super::apply::{apply_step, plan_groups};
use super::importance::{group_scores, layer_score, Criterion, Reduction};
use super::statistics::{gradient_stats, GradientStats};
use crate::error::{Error, Result};
use crate::loader::InMemoryWeights;
use crate::model::{LlamaModel, LoadOptions};
use candle_core::Tensor;
use llmprune_shared::depgraph::{structure, Group, Structure};
use llmprune_shared::plan::{PlanGroup, PlanStep};
use llmprune_shared::selection::{keep_global, keep_local, round_kept, Scored};
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
    /// Whole decoder layers.
    Layer,
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

/// What a head is under GQA.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GqaMode {
    /// A KV head with its query heads, removed together (LLM-Pruner's llama3.py).
    KvGroups,
    /// Every KV head stays; each loses the same number of its query heads (shapes stock
    /// transformers loads).
    QueryHeads,
}

#[derive(Debug, Clone)]
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
    pub importance: Importance,
    pub scope: Scope,
    pub gqa: GqaMode,
    /// Kept MLP and hidden widths are rounded up to a multiple of this (1: as selected).
    pub round_to: usize,
    /// Step `k` of `steps` prunes toward `k/steps` of the ratio with fresh statistics.
    pub steps: usize,
    pub seed: u64,
}

pub struct PruneOutcome {
    pub spec: ModelSpec,
    pub weights: HashMap<String, Tensor>,
    /// The plan's steps, as applied.
    pub steps: Vec<PlanStep>,
    /// Seconds spent on gradients, scoring and slicing, over all steps.
    pub seconds: [f64; 3],
}

/// Calibration windows for a step (0-based): the same windows each step, or fresh ones.
pub type Calibration<'a> = dyn FnMut(usize) -> Result<Vec<Vec<u32>>> + 'a;

/// Refuses requests that cannot run on a model of `spec`'s shape.
pub fn check_request(spec: &ModelSpec, req: &PruneRequest) -> Result<()> {
    let n = spec.n_layers();
    for (what, r) in [("attention", &req.attn_layers), ("MLP", &req.mlp_layers), ("removable", &req.layers)] {
        if r.start > r.end || r.end > n {
            return Err(Error::Invalid(format!("{what} layer range {}:{} is outside the model's {n} layers", r.start, r.end)));
        }
    }
    if !(req.ratio > 0.0 && req.ratio < 1.0) {
        return Err(Error::Invalid(format!("pruning ratio {} is outside (0, 1)", req.ratio)));
    }
    if req.steps == 0 || req.round_to == 0 {
        return Err(Error::Invalid("iterative steps and the rounding multiple must be at least 1".into()));
    }
    if req.gqa == GqaMode::QueryHeads && req.strategy != Strategy::Block {
        return Err(Error::Invalid("pruning query heads only (GQA) is a block-wise option".into()));
    }
    if req.strategy == Strategy::Layer && req.scope != Scope::Local {
        return Err(Error::Invalid("layer-wise pruning ranks the layers of one range; global scope does not apply".into()));
    }
    if req.gqa == GqaMode::QueryHeads && req.scope != Scope::Local {
        return Err(Error::Invalid("pruning query heads evenly per KV head needs local scope".into()));
    }
    Ok(())
}

/// Prunes `model` in `req.steps` steps, asking `calibration` for each step's windows when the
/// criterion needs gradients.
pub fn prune(mut model: LlamaModel, calibration: &mut Calibration, req: &PruneRequest) -> Result<PruneOutcome> {
    check_request(&model.spec, req)?;
    let mut rng = PyRandom::new(req.seed);
    let mut initial_units: HashMap<String, usize> = HashMap::new();
    // Original index of each current layer (layer-wise steps renumber them).
    let mut original: Vec<usize> = (0..model.spec.n_layers()).collect();
    let mut steps = Vec::with_capacity(req.steps);
    let mut seconds = [0.0; 3];
    for k in 1..=req.steps {
        let target = req.ratio * k as f64 / req.steps as f64;
        let needs_gradient = matches!(req.importance, Importance::Scored(c, _) if c.needs_gradient());
        let windows = if needs_gradient { calibration(k - 1)? } else { Vec::new() };
        let (step, [g, s]) = match req.strategy {
            Strategy::Layer => decide_layers(&mut model, &windows, req, target, &original, &mut rng)?,
            _ => decide_groups(&mut model, &windows, req, target, &mut initial_units, &mut rng)?,
        };
        let t = Instant::now();
        let (spec, weights) = apply_step(&model.spec, &model.weights_by_name(), &step)?;
        for &i in step.removed_layers.iter().rev() {
            original.remove(i);
        }
        seconds[0] += g;
        seconds[1] += s;
        seconds[2] += t.elapsed().as_secs_f64();
        tracing::info!(step = k, steps = req.steps, target, params = spec.n_params(), "pruning step applied");
        steps.push(step);
        if k == req.steps {
            return Ok(PruneOutcome { spec, weights, steps, seconds });
        }
        let device = model.device().clone();
        let source = InMemoryWeights { label: format!("model after pruning step {k}").into(), tensors: weights };
        model = LlamaModel::load(spec.clone(), &source, &LoadOptions::full(&spec), &device)?;
    }
    Err(Error::Invalid("no pruning step ran".into()))
}

/// Gradient statistics of the weights `wanted` accepts, when the importance needs them.
fn statistics(model: &mut LlamaModel, windows: &[Vec<u32>], importance: Importance, wanted: impl Fn(&str) -> bool) -> Result<Option<GradientStats>> {
    match importance {
        Importance::Scored(c, _) if c.needs_gradient() => {
            let vars = model.make_trainable(wanted)?;
            Ok(Some(gradient_stats(model, &vars, windows, c.needs_fisher())?))
        }
        _ => Ok(None),
    }
}

/// The groups a block- or channel-wise step scores, in plan order.
pub fn candidate_groups(spec: &ModelSpec, req: &PruneRequest) -> Result<Vec<Group>> {
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
        return Err(Error::Invalid("no group to prune: the layer ranges are empty".into()));
    }
    Ok(groups)
}

/// Seeded uniform scores for `groups`, drawn in group order.
pub fn random_scores(groups: &[Group], rng: &mut PyRandom) -> Vec<Vec<f32>> {
    groups.iter().map(|g| (0..g.units).map(|_| rng.random() as f32).collect()).collect()
}

/// One block- or channel-wise step: the candidate groups' scores and kept units.
fn decide_groups(
    model: &mut LlamaModel,
    windows: &[Vec<u32>],
    req: &PruneRequest,
    target: f64,
    initial_units: &mut HashMap<String, usize>,
    rng: &mut PyRandom,
) -> Result<(PlanStep, [f64; 2])> {
    let groups = candidate_groups(&model.spec, req)?;
    let t = Instant::now();
    let wanted: HashSet<&str> = groups.iter().flat_map(|g| g.members.iter().map(|m| m.param.as_str())).collect();
    let stats = statistics(model, windows, req.importance, |name| wanted.contains(name))?;
    let gradients_s = t.elapsed().as_secs_f64();

    let t = Instant::now();
    let scores = match req.importance {
        Importance::Random => random_scores(&groups, rng),
        Importance::Scored(c, r) => {
            let weights = model.weights_by_name();
            let no_stats = GradientStats { grad: HashMap::new(), fisher: None };
            groups.iter().map(|g| group_scores(g, c, r, &weights, stats.as_ref().unwrap_or(&no_stats))).collect::<Result<_>>()?
        }
    };
    let step = select(&model.spec, &groups, scores, req, target, initial_units)?;
    Ok((step, [gradients_s, t.elapsed().as_secs_f64()]))
}

/// The step that keeps, of each candidate group, the units its scores rank highest (local or
/// global, query heads evenly, widths rounded): the decision a coordinator makes from the
/// scores its workers report. `initial_units` remembers each group's units at the first step.
pub fn select(
    spec: &ModelSpec,
    groups: &[Group],
    scores: Vec<Vec<f32>>,
    req: &PruneRequest,
    target: f64,
    initial_units: &mut HashMap<String, usize>,
) -> Result<PlanStep> {
    if scores.len() != groups.len() || groups.iter().zip(&scores).any(|(g, s)| s.len() != g.units) {
        return Err(Error::Invalid("scores do not match the candidate groups".into()));
    }
    let scored: Vec<Scored> = groups
        .iter()
        .zip(&scores)
        .map(|(g, s)| {
            let initial = *initial_units.entry(g.root.clone()).or_insert(g.units);
            Scored { name: &g.root, unit_width: g.unit_width, scores: s, initial_units: initial }
        })
        .collect();
    let selection = |e: llmprune_shared::selection::SelectionError| Error::Invalid(e.to_string());
    let mut kept = match req.scope {
        Scope::Local => groups
            .iter()
            .zip(&scored)
            .map(|(g, s)| match structure(&g.root) {
                Some(Structure::QueryHeads(i)) => keep_evenly(s, spec.layers[i].n_kv_heads, target),
                _ => Ok(keep_local(std::slice::from_ref(s), target).map_err(selection)?.remove(0)),
            })
            .collect::<Result<Vec<_>>>()?,
        Scope::Global { normalize } => keep_global(&scored, target, normalize).map_err(selection)?,
    };
    // Head counts are whole heads already; widths of single channels get aligned.
    for (s, k) in scored.iter().zip(kept.iter_mut()).filter(|(s, _)| s.unit_width == 1) {
        round_kept(std::slice::from_ref(s), std::slice::from_mut(k), req.round_to);
    }
    let groups = groups
        .iter()
        .zip(kept)
        .zip(scores)
        .map(|((g, kept), scores)| PlanGroup { root: g.root.clone(), units: g.units, kept, scores })
        .collect();
    Ok(PlanStep { ratio: target, groups, removed_layers: Vec::new(), layer_scores: Vec::new() })
}

/// The kept query heads of a GQA layer, each of its `n_kv` KV heads losing the same number.
fn keep_evenly(s: &Scored, n_kv: usize, target: f64) -> Result<Vec<usize>> {
    let rep = s.scores.len() / n_kv;
    let mut kept = Vec::with_capacity(s.scores.len());
    for (b, scores) in s.scores.chunks(rep).enumerate() {
        let name = format!("{} (KV head {b})", s.name);
        let block = Scored { name: &name, unit_width: s.unit_width, scores, initial_units: s.initial_units / n_kv };
        let k = keep_local(&[block], target).map_err(|e| Error::Invalid(e.to_string()))?;
        kept.extend(k[0].iter().map(|u| b * rep + u));
    }
    Ok(kept)
}

/// One layer-wise step: each candidate layer scored as one structure (every weight of the
/// layer its member); the lowest-scoring go.
fn decide_layers(
    model: &mut LlamaModel,
    windows: &[Vec<u32>],
    req: &PruneRequest,
    target: f64,
    original: &[usize],
    rng: &mut PyRandom,
) -> Result<(PlanStep, [f64; 2])> {
    let candidates: Vec<usize> = (0..original.len()).filter(|&j| req.layers.contains(&original[j])).collect();
    if candidates.is_empty() {
        return Err(Error::Invalid("no layer to remove: the layer range is empty".into()));
    }
    let prefixes: Vec<String> = candidates.iter().map(|j| format!("model.layers.{j}.")).collect();
    let t = Instant::now();
    let stats = statistics(model, windows, req.importance, |name| prefixes.iter().any(|p| name.starts_with(p)))?;
    let gradients_s = t.elapsed().as_secs_f64();

    let t = Instant::now();
    let weights = model.weights_by_name();
    let no_stats = GradientStats { grad: HashMap::new(), fisher: None };
    let scores: Vec<f32> = prefixes
        .iter()
        .map(|prefix| match req.importance {
            Importance::Random => Ok(rng.random() as f32),
            Importance::Scored(c, _) => {
                let mut params: Vec<(&str, &Tensor)> =
                    weights.iter().filter(|(n, _)| n.starts_with(prefix.as_str())).map(|(n, w)| (n.as_str(), w)).collect();
                params.sort_by_key(|(n, _)| *n);
                layer_score(&params, c, stats.as_ref().unwrap_or(&no_stats))
            }
        })
        .collect::<Result<_>>()?;
    let scored = Scored { name: "layers", unit_width: 1, scores: &scores, initial_units: req.layers.len() };
    let kept = keep_local(&[scored], target).map_err(|e| Error::Invalid(e.to_string()))?.remove(0);
    let removed_layers: Vec<usize> = (0..candidates.len()).filter(|u| kept.binary_search(u).is_err()).map(|u| candidates[u]).collect();
    let layer_scores = candidates.iter().copied().zip(scores.iter().copied()).collect();
    let scoring_s = t.elapsed().as_secs_f64();
    Ok((PlanStep { ratio: target, groups: Vec::new(), removed_layers, layer_scores }, [gradients_s, scoring_s]))
}

//! Scoring and cutting what one pipeline stage holds, for the planner's step loop: the
//! worker runtime runs these for the coordinator's requests, and [`LocalEngine`] runs them
//! on the whole model as a stage of one, so one process and a cluster execute the same code.
//!
//! A stage scores the candidate groups it holds members of: a group wholly inside it (heads
//! and neurons of its layers) becomes unit scores here; of a group that spans stages (hidden
//! channels reach every layer) it returns its members' folded scores for the coordinator to
//! reduce in the group's member order. Layer candidates are scored by the stage that owns
//! them. Cutting takes the whole step: each stage slices what it holds, drops its removed
//! layers and renumbers the rest.

use super::activation_scores::{activation_group_scores, consumer_member, no_consumer};
use super::activations::{fit_beside_weights, is_consumer_weight, visit_activation_stats, ActivationStats, GatheredInputs};
use super::importance::{group_scores, layer_score, member_scores};
use super::reconstruct::rewrite_consumer;
use super::slice::{layer_shape, remove_layers, slice_weights};
use super::statistics::{all_reduce_stats, gradient_passes, gradient_stats_with, GradientStats};
use crate::cluster::shard::Collectives;
use crate::collective::{part, Communicator, SingleRank};
use crate::error::{Error, Result};
use crate::loader::InMemoryWeights;
use crate::model::{Exec, LlamaModel, LoadOptions};
use crate::stage::stage_backward_to_embeddings;
use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor, Var};
use llmprune_shared::depgraph::{Axis, Group, GroupMember};
use llmprune_shared::layout::{layer_of_param, ShardLayout, EMBEDDING};
use llmprune_shared::plan::{PlanStep, Reconstruction};
use llmprune_shared::planner::{check_step, renumber_range, scored_members, Criterion, PruneEngine, Reduction, ScoreJob, Scores};
use llmprune_shared::ModelSpec;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

/// What one stage scores in a step.
pub struct StageJob<'a> {
    /// Candidate groups this stage holds members of.
    pub groups: &'a [Group],
    /// Candidate layers (current indices) this stage owns.
    pub layers: &'a [usize],
    pub criterion: Criterion,
    pub reduction: Reduction,
    /// All the step's windows; with replicas each copy takes its contiguous share.
    pub windows: &'a [Vec<u32>],
    /// The Gram matrix's damping for `obs`.
    pub damping: f64,
}

/// A stage's scores of one candidate group.
#[derive(Debug, Clone, PartialEq)]
pub enum GroupPart {
    /// Unit scores: the stage owns every scored member.
    Whole(Vec<f32>),
    /// The folded scores of the scored members it owns, by index among the scored members.
    Members(Vec<(usize, Vec<f32>)>),
}

pub struct StageScores {
    pub groups: Vec<GroupPart>,
    pub layers: Vec<f32>,
}

/// Scores `job`'s candidates on this stage. Every stage of every replica calls this with the
/// same windows and criterion, whether or not it has candidates: gradients flow through all
/// of them. `progress` gets (passes done, passes in all). An activation criterion leaves the
/// input statistics it gathered in `gathered` for the step's cut when those of every stage fit
/// beside its weights; otherwise the cut gathers them again, a layer at a time.
pub fn score_stage(
    model: &mut LlamaModel,
    layout: &ShardLayout,
    comms: &mut Collectives,
    job: &StageJob,
    gathered: &mut Option<GatheredInputs>,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<StageScores> {
    *gathered = None;
    if let Some(&j) = job.layers.iter().find(|j| !layout.layers.contains(j)) {
        return Err(Error::Invalid(format!("layer {j} is a candidate of rank {}, which holds layers {:?}", layout.rank, layout.layers)));
    }
    let layer_params = |name: &str| layer_of_param(name).is_some_and(|i| job.layers.contains(&i));
    let member_params: HashSet<&str> = job.groups.iter().flat_map(|g| g.members.iter().map(|m| m.param.as_str())).collect();
    if job.criterion.needs_activations() {
        let wanted = |name: &str| is_consumer_weight(name) && member_params.contains(name);
        let model = &*model;
        let weights = model.weights_by_name();
        let keep = fit_beside_weights(&weights, &wanted);
        let (mut scores, mut kept): (Vec<Option<Vec<f32>>>, _) = (vec![None; job.groups.len()], ActivationStats::new());
        // Each group is scored when its consumer's layer has gone by.
        visit_activation_stats(model, comms, job.windows, &wanted, progress, &mut |layer| {
            for (g, score) in job.groups.iter().zip(scores.iter_mut()).filter(|(g, _)| consumer_member(g, &layer).is_ok()) {
                *score = Some(activation_group_scores(g, job.criterion, &weights, &layer, job.damping)?);
            }
            if keep {
                kept.extend(layer);
            }
            Ok(())
        })?;
        let groups = job
            .groups
            .iter()
            .zip(scores)
            .map(|(g, score)| match score {
                Some(s) => Ok(GroupPart::Whole(s)),
                None => Err(no_consumer(g)),
            })
            .collect::<Result<_>>()?;
        // Every stage must cut alike: one whose statistics were not kept makes all gather again.
        if all_ranks_agree(comms, keep)? {
            *gathered = Some(GatheredInputs { windows: job.windows.to_vec(), stats: kept });
        }
        return Ok(StageScores { groups, layers: Vec::new() });
    }
    let stats = if job.criterion.needs_gradient() {
        statistics(model, comms, job, &|name: &str| member_params.contains(name) || layer_params(name), progress)?
    } else {
        GradientStats { grad: HashMap::new(), fisher: None }
    };
    let weights = model.weights_by_name();
    let owned = |name: &str| layout.owns(name);
    let groups = job
        .groups
        .iter()
        .map(|g| {
            Ok(if scored_members(g).all(|(_, m)| owned(&m.param)) {
                GroupPart::Whole(group_scores(g, job.criterion, job.reduction, &weights, &stats)?)
            } else {
                GroupPart::Members(member_scores(g, job.criterion, &weights, &stats, owned)?)
            })
        })
        .collect::<Result<_>>()?;
    let layers = job
        .layers
        .iter()
        .map(|&j| {
            let prefix = format!("model.layers.{j}.");
            let mut params: Vec<(&str, &Tensor)> = weights.iter().filter(|(n, _)| n.starts_with(&prefix)).map(|(n, w)| (n.as_str(), w)).collect();
            params.sort_by_key(|(n, _)| *n);
            layer_score(&params, job.criterion, &stats)
        })
        .collect::<Result<_>>()?;
    Ok(StageScores { groups, layers })
}

/// Whether `yes` holds on every stage of every replica (a collective: all of them call it).
fn all_ranks_agree(comms: &mut Collectives, yes: bool) -> Result<bool> {
    let mut count = [f32::from(u8::from(yes))];
    comms.pipeline.all_reduce_sum(&mut count).map_err(|e| Error::collective("pipeline: whether the statistics are kept", e))?;
    comms.replicas.all_reduce_sum(&mut count).map_err(|e| Error::collective("replicas: whether the statistics are kept", e))?;
    Ok(count[0] as usize == comms.pipeline.world_size() * comms.replicas.world_size())
}

/// The gradient statistics of the weights `wanted` accepts, through the pipeline, over this
/// replica's share of the windows, all-reduced over the replicas.
fn statistics(
    model: &mut LlamaModel,
    comms: &mut Collectives,
    job: &StageJob,
    wanted: &dyn Fn(&str) -> bool,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<GradientStats> {
    let (replica, copies) = (comms.replicas.rank(), comms.replicas.world_size());
    if job.windows.len() < copies {
        return Err(Error::Invalid(format!("{} calibration windows for {copies} replicas: each needs at least one", job.windows.len())));
    }
    let windows = &job.windows[part(job.windows.len(), copies, replica)];
    let vars = model.make_trainable(wanted)?;
    // A tied embedding is also the last stage's head: its gradient has a part on each end of
    // the pipeline, joined on the first stage after every pass.
    let tied = model.spec.tie_word_embeddings && comms.pipeline.world_size() > 1;
    let tied_var = vars.iter().find(|(n, _)| tied && n == EMBEDDING).map(|(_, v)| v.clone());
    let passes = gradient_passes(windows.len(), job.criterion.needs_fisher());
    let mut done = 0;
    let (model, pipeline) = (&*model, comms.pipeline.as_mut());
    let mut backward = |ids: &Tensor| -> Result<GradStore> {
        let leaf = tied_var.is_some() && pipeline.rank() == 0;
        let loss = |out: &Tensor| model.loss_from_hidden(out, ids, Exec::Differentiable);
        let (mut store, d_embedded) = stage_backward_to_embeddings(model, pipeline, ids, loss, leaf)?;
        if let Some(var) = &tied_var {
            join_tied_gradient(pipeline, &mut store, var, ids, d_embedded)?;
        }
        done += 1;
        progress(done, passes);
        Ok(store)
    };
    let local = gradient_stats_with(model.device(), &vars, windows, job.criterion.needs_fisher(), &mut backward)?;
    all_reduce_stats(local, windows.len(), job.windows.len(), comms.replicas.as_mut())
}

/// The last stage sends its head's gradient of the tied embedding to the first, which adds
/// the lookup's part onto it as autograd does in one process: the head's gradient first (it
/// is nearer the loss), then `index_add` of the embedded tokens' gradient `d_embedded`, token
/// by token, so the bits are the single process's.
fn join_tied_gradient(pipeline: &mut dyn Communicator, store: &mut GradStore, var: &Var, ids: &Tensor, d_embedded: Option<Tensor>) -> Result<()> {
    let (rank, last) = (pipeline.rank(), pipeline.world_size() - 1);
    let comm = |e: crate::collective::CommError| Error::collective("pipeline: the tied embedding's gradient", e);
    if rank == last {
        let g = store.get(var.as_tensor()).ok_or_else(|| Error::Invalid("the tied head received no gradient".into()))?;
        pipeline.send_tensor(g, 0).map_err(comm)?;
    } else if rank == 0 {
        let w = var.as_tensor();
        let head = pipeline.recv_tensor(last, w.dims(), w.dtype(), w.device()).map_err(comm)?;
        let d_embedded = d_embedded.ok_or_else(|| Error::Invalid("the first stage kept no gradient of its embedded tokens".into()))?;
        let joined = head.index_add(&ids.flatten_all()?.contiguous()?, &d_embedded.to_dtype(w.dtype())?, 0)?;
        store.insert(w, joined);
    }
    Ok(())
}

/// Cuts this stage by the whole `step` (checked against `model.spec`): every group member it
/// holds keeps its group's kept units (after the step's reconstruction, if it has one:
/// `progress` gets its passes), its removed layers go and the rest are renumbered, and the
/// stage is reloaded with the model's new shape `after`. Returns the new layout. Every stage
/// of every replica cuts by the same step at once: a reconstruction's pass goes through all.
/// The weights are sliced in place of the model's own, so an error after the reconstruction
/// leaves `model` without weights: its owner drops it.
pub fn cut_stage(
    model: &mut LlamaModel,
    layout: &ShardLayout,
    comms: &mut Collectives,
    step: &PlanStep,
    after: &ModelSpec,
    gathered: &mut Option<GatheredInputs>,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<ShardLayout> {
    // The model changes: what was gathered on it is used now or never.
    let gathered = gathered.take();
    let mut weights = model.weights_by_name();
    let checked = check_step(&model.spec, step)?;
    let bias_deltas = match &step.reconstruct {
        Some(r) => reconstruct_consumers(model, comms, &checked, r, &mut weights, gathered, progress)?,
        None => {
            drop(gathered);
            HashMap::new()
        }
    };
    let (groups, kept): (Vec<Group>, Vec<Vec<usize>>) = checked
        .into_iter()
        .map(|(g, kept)| {
            // Only the members this stage holds (a tied embedding is held by both ends).
            let members: Vec<GroupMember> = g.members.iter().filter(|m| weights.contains_key(&m.param)).cloned().collect();
            (Group { members, ..g }, kept)
        })
        .unzip();
    // From here on `weights` holds the only references to the tensors, so each one is freed as
    // its sliced copy replaces it (LLaMA-7B in bf16: the weights plus one tensor, not 1.6×).
    model.release_weights();
    let sliced = slice_weights(weights, &groups, &kept)?;
    let mut sliced = if step.removed_layers.is_empty() { sliced } else { remove_layers(&model.spec, &sliced, &step.removed_layers)?.1 };
    if step.reconstruct.as_ref().is_some_and(|r| r.bias) {
        add_compensated_biases(&model.spec, &mut sliced, bias_deltas)?;
    }
    let layers = renumber_range(&layout.layers, &step.removed_layers);
    for i in layers.clone() {
        let shape = layer_shape(&sliced, after.head_dim, i)?;
        if shape != after.layers[i] {
            return Err(Error::Plan(format!("rank {}: layer {i} sliced to {shape:?}, the plan expects {:?}", layout.rank, after.layers[i])));
        }
    }
    let layout = ShardLayout { layers, ..layout.clone() };
    let opts = LoadOptions { layers: layout.layers.clone(), embeddings: layout.embeddings, head: layout.head, dtype: model.dtype() };
    let device = model.device().clone();
    let source = InMemoryWeights { label: format!("rank {} after slicing", layout.rank).into(), tensors: sliced };
    *model = LlamaModel::load(after.clone(), &source, &opts, &device)?;
    Ok(layout)
}

/// Rewrites every consumer this stage holds whose input channels the step cuts
/// ([`rewrite_consumer`]): a re-solved weight replaces the one in `weights` at full width, and
/// a bias compensation's increment is returned by the weight's name. From the consumers'
/// inputs over the step's windows: those the step's scoring `gathered` over the same windows,
/// else gathered through the pipeline now. Every stage decides alike (all scored the step, or
/// none did), so either every stage takes part in the pass or none does.
fn reconstruct_consumers(
    model: &LlamaModel,
    comms: &mut Collectives,
    checked: &[(Group, Vec<usize>)],
    r: &Reconstruction,
    weights: &mut HashMap<String, Tensor>,
    gathered: Option<GatheredInputs>,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<HashMap<String, Tensor>> {
    let mut targets: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (g, kept) in checked.iter().filter(|(g, kept)| kept.len() < g.units) {
        for m in g.members.iter().filter(|m| m.axis == Axis::Cols && is_consumer_weight(&m.param) && weights.contains_key(&m.param)) {
            let mut channels: Vec<usize> = kept.iter().flat_map(|&u| m.channels[u].iter().copied()).collect();
            channels.sort_unstable();
            if targets.insert(m.param.clone(), channels).is_some() {
                return Err(Error::Plan(format!("two groups of the step cut the inputs of {}", m.param)));
            }
        }
    }
    let wanted: BTreeSet<String> = targets.keys().cloned().collect();
    let mut bias_deltas = HashMap::new();
    let mut rewrite = |stats: ActivationStats| -> Result<()> {
        for (name, s) in stats {
            let kept = targets.remove(&name).ok_or_else(|| Error::Invalid(format!("input statistics of {name}, which the step does not cut")))?;
            let w = weights.get(&name).ok_or_else(|| Error::Invalid(format!("no weight `{name}`")))?;
            let rewritten = rewrite_consumer(&name, w, &s, &kept, r)?;
            if let Some(delta) = rewritten.bias_delta {
                bias_deltas.insert(name.clone(), delta);
            }
            if let Some(rebuilt) = rewritten.weight {
                weights.insert(name, rebuilt);
            }
        }
        Ok(())
    };
    match gathered.filter(|g| g.windows == r.windows) {
        Some(g) => {
            rewrite(g.stats.into_iter().filter(|(name, _)| wanted.contains(name)).collect())?;
        }
        None => {
            visit_activation_stats(model, comms, &r.windows, &|name: &str| wanted.contains(name), progress, &mut rewrite)?;
        }
    }
    match targets.keys().next() {
        Some(name) => Err(Error::Invalid(format!("no input statistics of {name}"))),
        None => Ok(bias_deltas),
    }
}

/// After a compensating step's slicing: every layer of the stage gets o_proj's and down_proj's
/// biases with the compensation added (`deltas`, by the consumer weight's name), and, where the
/// model had none, zero q/k/v and gate/up biases beside them (transformers' LLaMA puts biases
/// on all of a block's projections or none). Block-wise steps leave the hidden width alone, so
/// the increments fit the sliced model.
fn add_compensated_biases(before: &ModelSpec, sliced: &mut HashMap<String, Tensor>, mut deltas: HashMap<String, Tensor>) -> Result<()> {
    let mut absent = Vec::new();
    if !before.o_bias {
        absent.extend(["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj"]);
    }
    if !before.mlp_bias {
        absent.extend(["mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]);
    }
    let layers: BTreeSet<usize> = sliced.keys().filter_map(|k| layer_of_param(k)).collect();
    for i in layers {
        let p = format!("model.layers.{i}");
        for projection in &absent {
            let w = sliced.get(&format!("{p}.{projection}.weight")).ok_or_else(|| Error::Invalid(format!("no weight `{p}.{projection}.weight`")))?;
            let zeros = Tensor::zeros(w.dim(0)?, w.dtype(), w.device())?;
            sliced.insert(format!("{p}.{projection}.bias"), zeros);
        }
        for consumer in ["self_attn.o_proj", "mlp.down_proj"] {
            if let Some(delta) = deltas.remove(&format!("{p}.{consumer}.weight")) {
                let name = format!("{p}.{consumer}.bias");
                let bias = sliced.get(&name).ok_or_else(|| Error::Invalid(format!("no bias `{name}`")))?;
                let sum = (bias.to_dtype(DType::F32)? + delta.to_dtype(DType::F32)?)?.to_dtype(bias.dtype())?;
                sliced.insert(name, sum);
            }
        }
    }
    match deltas.keys().next() {
        Some(left) => Err(Error::Plan(format!("a bias compensation for {left}, which this stage no longer holds"))),
        None => Ok(()),
    }
}

/// The whole model in this process as the planner's engine: a pipeline of one stage and one
/// replica, scored and cut by the same code as a worker's shard.
pub struct LocalEngine {
    pub model: LlamaModel,
    pub layout: ShardLayout,
    comms: Collectives,
    gathered: Option<GatheredInputs>,
}

impl LocalEngine {
    pub fn new(model: LlamaModel) -> Self {
        let layout = ShardLayout::whole(model.spec.n_layers());
        Self { model, layout, comms: Collectives { pipeline: Box::new(SingleRank), replicas: Box::new(SingleRank) }, gathered: None }
    }
}

impl PruneEngine for LocalEngine {
    type Error = Error;

    async fn score(&mut self, job: ScoreJob<'_>) -> Result<Scores> {
        let stage =
            StageJob { groups: job.groups, layers: job.layers, criterion: job.criterion, reduction: job.reduction, windows: job.windows, damping: job.damping };
        let scores = score_stage(&mut self.model, &self.layout, &mut self.comms, &stage, &mut self.gathered, &mut |_, _| {})?;
        let groups = scores
            .groups
            .into_iter()
            .zip(job.groups)
            .map(|(part, g)| match part {
                GroupPart::Whole(s) => Ok(s),
                GroupPart::Members(_) => Err(Error::Invalid(format!("group `{}` is not wholly inside the model", g.root))),
            })
            .collect::<Result<_>>()?;
        Ok(Scores { groups, layers: scores.layers })
    }

    async fn apply(&mut self, _spec: &ModelSpec, step: &PlanStep, after: &ModelSpec) -> Result<()> {
        self.layout = cut_stage(&mut self.model, &self.layout, &mut self.comms, step, after, &mut self.gathered, &mut |_, _| {})?;
        Ok(())
    }
}

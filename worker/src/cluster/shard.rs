//! A contiguous range of layers (plus the embedding on the first rank and the final norm and
//! head on the last) as one stage of a pipeline (`crate::stage`): each rank differentiates and
//! scores its own layers, with the statistics and scores of the single-process model.

use crate::collective::Communicator;
use crate::error::{Error, Result};
use crate::loader::{load_model, InMemoryWeights, TextTokenizer};
use crate::model::{Exec, LlamaModel, LoadOptions};
use crate::prune::importance::{group_scores, Criterion, Reduction};
use crate::prune::slice::{layer_shape, slice_weights};
use crate::prune::statistics::{all_reduce_stats, gradient_stats_with, GradientStats};
use candle_core::backprop::GradStore;
use crate::stage::stage_backward;
use candle_core::{Device, Tensor};
use llmprune_shared::depgraph::Group;
use llmprune_shared::{LayerShape, ModelSpec};
use std::collections::{HashMap, HashSet};
use std::ops::Range;
use std::path::Path;

/// Which part of the model a rank holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardLayout {
    pub rank: usize,
    pub world: usize,
    pub layers: Range<usize>,
    /// The token embedding (the first rank).
    pub embeddings: bool,
    /// The final norm and head (the last rank).
    pub head: bool,
    /// Which copy of this stage it is, of how many (data parallelism over the samples).
    pub replica: usize,
    pub replicas: usize,
}

impl ShardLayout {
    /// Whether a parameter is this rank's to score, slice and save (a tied embedding lives on
    /// the first rank, although the last one also uses it as its head).
    pub fn owns(&self, param: &str) -> bool {
        match param.strip_prefix("model.layers.").and_then(|r| r.split('.').next()).and_then(|i| i.parse::<usize>().ok()) {
            Some(i) => self.layers.contains(&i),
            None if param == "model.embed_tokens.weight" => self.embeddings,
            None => self.head,
        }
    }
}

/// A worker's two collective groups: the pipeline (its replica's stages, by stage) and the
/// copies of its stage (by replica).
pub struct Collectives {
    pub pipeline: Box<dyn Communicator>,
    pub replicas: Box<dyn Communicator>,
}

pub struct ShardModel {
    pub layout: ShardLayout,
    pub model: LlamaModel,
    pub tokenizer: TextTokenizer,
}

impl ShardModel {
    /// Loads only this shard's weights from a model file or directory, in f32.
    pub fn load(path: &Path, layout: ShardLayout, device: &Device) -> Result<Self> {
        let l = layout.clone();
        let loaded = load_model(path, |_| LoadOptions { layers: l.layers, embeddings: l.embeddings, head: l.head, dtype: candle_core::DType::F32 }, device)?;
        Ok(Self { layout, model: loaded.model, tokenizer: loaded.tokenizer })
    }

    pub fn spec(&self) -> &ModelSpec {
        &self.model.spec
    }

    /// Whether a parameter is this shard's to score, slice and save.
    pub fn owns(&self, param: &str) -> bool {
        self.layout.owns(param)
    }

    /// The shard's own tensors by name.
    pub fn owned_weights(&self) -> HashMap<String, Tensor> {
        self.model.weights_by_name().into_iter().filter(|(n, _)| self.owns(n)).collect()
    }

    /// Scores of `groups` (each wholly inside this shard) under a criterion, with the
    /// gradient statistics taken through the pipeline when it needs them. Every rank calls
    /// this with the same windows and criterion, whether or not it has groups to score; with
    /// replicas each pipeline takes its contiguous share of the windows and `replicas` (the
    /// ring of this stage's copies) all-reduces the statistics.
    pub fn score(
        &mut self,
        comms: &mut Collectives,
        groups: &[Group],
        criterion: Criterion,
        reduction: Reduction,
        windows: &[Vec<u32>],
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Vec<Vec<f32>>> {
        for g in groups {
            if let Some(m) = g.members.iter().find(|m| !self.owns(&m.param)) {
                return Err(Error::Invalid(format!("group `{}` reaches `{}`, which rank {} does not hold", g.root, m.param, self.layout.rank)));
            }
        }
        let stats = if criterion.needs_gradient() {
            let (replica, copies) = (comms.replicas.rank(), comms.replicas.world_size());
            if windows.len() < copies {
                return Err(Error::Invalid(format!("{} calibration windows for {copies} replicas: each needs at least one", windows.len())));
            }
            let all = windows;
            let windows = &all[crate::collective::part(all.len(), copies, replica)];
            let wanted: HashSet<&str> = groups.iter().flat_map(|g| g.members.iter().map(|m| m.param.as_str())).collect();
            let vars = self.model.make_trainable(|name| wanted.contains(name))?;
            let passes = 1 + if criterion.needs_fisher() { windows.len() } else { 0 };
            let mut done = 0;
            let (model, pipeline) = (&self.model, comms.pipeline.as_mut());
            let mut backward = |ids: &Tensor| -> Result<GradStore> {
                let store = stage_backward(model, pipeline, ids, |out| model.loss_from_hidden(out, ids, Exec::Differentiable))?;
                done += 1;
                progress(done, passes);
                Ok(store)
            };
            let local = gradient_stats_with(model.device(), &vars, windows, criterion.needs_fisher(), &mut backward)?;
            all_reduce_stats(local, windows.len(), all.len(), comms.replicas.as_mut())?
        } else {
            GradientStats { grad: HashMap::new(), fisher: None }
        };
        let weights = self.model.weights_by_name();
        groups.iter().map(|g| group_scores(g, criterion, reduction, &weights, &stats)).collect()
    }

    /// Cuts this shard's groups to their kept units and reloads the shard with the new
    /// widths. Returns the shapes of its layers.
    pub fn apply(&mut self, chosen: &[(Group, Vec<usize>)]) -> Result<Vec<LayerShape>> {
        let (groups, kept): (Vec<Group>, Vec<Vec<usize>>) = chosen.iter().cloned().unzip();
        for g in &groups {
            if let Some(m) = g.members.iter().find(|m| !self.owns(&m.param)) {
                return Err(Error::Plan(format!("group `{}` reaches `{}`, which rank {} does not hold", g.root, m.param, self.layout.rank)));
            }
        }
        let sliced = slice_weights(&self.model.weights_by_name(), &groups, &kept)?;
        let mut spec = self.model.spec.clone();
        for i in self.layout.layers.clone() {
            spec.layers[i] = layer_shape(&sliced, spec.head_dim, i)?;
        }
        spec.validate().map_err(|(field, reason)| Error::Invalid(format!("pruned shard: {field}: {reason}")))?;
        let l = &self.layout;
        let opts = LoadOptions { layers: l.layers.clone(), embeddings: l.embeddings, head: l.head, dtype: candle_core::DType::F32 };
        let device = self.model.device().clone();
        let source = InMemoryWeights { label: format!("rank {} after slicing", l.rank).into(), tensors: sliced };
        self.model = LlamaModel::load(spec, &source, &opts, &device)?;
        Ok(self.layout.layers.clone().map(|i| self.model.spec.layers[i]).collect())
    }
}

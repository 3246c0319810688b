//! A contiguous range of layers (plus the embedding on the first rank and the final norm and
//! head on the last) as one stage of a pipeline (`crate::stage`): each rank differentiates and
//! scores its own layers, with the statistics and scores of the single-process model.

use crate::collective::Communicator;
use crate::error::Result;
use crate::loader::{load_model, TextTokenizer};
use crate::model::{candle_dtype, LlamaModel, LoadOptions};
use crate::prune::activations::GatheredInputs;
use crate::prune::engine::{cut_stage, score_stage, StageJob, StageScores};
use candle_core::{Device, Tensor};
use llmprune_shared::dtype::WeightDtype;
pub use llmprune_shared::layout::ShardLayout;
use llmprune_shared::plan::PlanStep;
use llmprune_shared::{LayerShape, ModelSpec};
use std::collections::HashMap;
use std::path::Path;

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
    /// What the last scoring gathered of the consumers' inputs, for the step's cut.
    pub gathered: Option<GatheredInputs>,
}

impl ShardModel {
    /// Loads only this shard's weights from a model file or directory, in f32.
    pub fn load(path: &Path, layout: ShardLayout, dtype: WeightDtype, device: &Device) -> Result<Self> {
        let l = layout.clone();
        let loaded = load_model(path, |_| LoadOptions { layers: l.layers, embeddings: l.embeddings, head: l.head, dtype: candle_dtype(dtype) }, device)?;
        Ok(Self { layout, model: loaded.model, tokenizer: loaded.tokenizer, gathered: None })
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

    /// Scores the job's candidates this shard holds ([`score_stage`]).
    pub fn score(&mut self, comms: &mut Collectives, job: &StageJob, progress: &mut dyn FnMut(usize, usize)) -> Result<StageScores> {
        score_stage(&mut self.model, &self.layout, comms, job, &mut self.gathered, progress)
    }

    /// Cuts this shard by a whole plan step ([`cut_stage`]); the model becomes `after`, the
    /// shard's layers renumbered. Returns the shapes of its layers. `progress` gets the passes
    /// of a reconstruction's statistics (done, in all).
    pub fn apply(&mut self, comms: &mut Collectives, step: &PlanStep, after: &ModelSpec, progress: &mut dyn FnMut(usize, usize)) -> Result<Vec<LayerShape>> {
        self.layout = cut_stage(&mut self.model, &self.layout, comms, step, after, &mut self.gathered, progress)?;
        Ok(self.layout.layers.clone().map(|i| self.model.spec.layers[i]).collect())
    }
}

//! The pruning loop, once: for each step, the candidates, their scores from an engine, the
//! decision, and the engine cutting its model. An engine is "the members of this job": the
//! model in this process, or the workers of a cluster, each scoring and cutting what it
//! holds; the loop, the random scores and every decision live here and nowhere else.

use super::groups::{candidate_groups, spec_after_step};
use super::modes::{Criterion, Reduction, Strategy};
use super::request::PruneRequest;
use super::scores::random_scores;
use super::select::{select_layers, select_units};
use super::PlannerError;
use crate::depgraph::Group;
use crate::plan::{PlanStep, Reconstruction};
use crate::{ModelSpec, PyRandom};
use std::collections::HashMap;
use std::future::Future;
use std::time::Instant;

/// What a step asks the engine to score.
#[derive(Debug, Clone, Copy)]
pub struct ScoreJob<'a> {
    /// 1-based step number (checkpoints are kept by step).
    pub step: usize,
    /// Candidate groups (block- and channel-wise), in plan order.
    pub groups: &'a [Group],
    /// Candidate layers (layer-wise), current indices, ascending.
    pub layers: &'a [usize],
    pub criterion: Criterion,
    pub reduction: Reduction,
    /// The step's calibration windows (empty when the criterion needs no calibration).
    pub windows: &'a [Vec<u32>],
    /// The Gram matrix's damping for `obs`.
    pub damping: f64,
}

/// The scores of a [`ScoreJob`]: one per unit of each group, one per layer.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Scores {
    pub groups: Vec<Vec<f32>>,
    pub layers: Vec<f32>,
}

/// The members of a pruning job.
#[allow(async_fn_in_trait)]
pub trait PruneEngine {
    type Error: From<PlannerError>;

    /// Scores the job's candidates on the current model.
    async fn score(&mut self, job: ScoreJob<'_>) -> Result<Scores, Self::Error>;

    /// Cuts the model (shaped `spec`) by `step`, checked already; it becomes `after`.
    async fn apply(&mut self, spec: &ModelSpec, step: &PlanStep, after: &ModelSpec) -> Result<(), Self::Error>;
}

/// Seconds spent in each part of the loop, over all steps.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StepSeconds {
    /// Statistics and scores (the engine's `score`), calibration included.
    pub scoring: f64,
    pub planning: f64,
    /// The engine's `apply`.
    pub slicing: f64,
}

pub struct StepsOutcome {
    pub spec: ModelSpec,
    /// The plan's steps, as applied.
    pub steps: Vec<PlanStep>,
    pub seconds: StepSeconds,
}

/// Prunes the engine's model (shaped `spec`) in `req.steps` steps, asking `calibration` for
/// step `k`'s windows (0-based) when the criterion or the reconstruction needs calibration.
pub async fn prune_steps<E, C, CE>(engine: &mut E, spec: &ModelSpec, req: &PruneRequest, mut calibration: C) -> Result<StepsOutcome, E::Error>
where
    E: PruneEngine,
    C: FnMut(usize) -> Result<Vec<Vec<u32>>, CE>,
    E::Error: From<CE>,
{
    req.check(spec)?;
    let mut spec = spec.clone();
    let mut rng = PyRandom::new(req.seed);
    let mut initial_units: HashMap<String, usize> = HashMap::new();
    // Original index of each current layer (layer-wise steps renumber them).
    let mut original: Vec<usize> = (0..spec.n_layers()).collect();
    let mut steps = Vec::with_capacity(req.steps);
    let mut seconds = StepSeconds::default();
    for k in 1..=req.steps {
        let target = req.ratio * k as f64 / req.steps as f64;
        let t = Instant::now();
        let windows = if req.criterion.needs_calibration() || req.reconstruct { calibration(k - 1)? } else { Vec::new() };
        // Layer-wise steps rank layers, the others groups; the other list stays empty.
        let layer_wise = req.strategy == Strategy::Layer;
        let (groups, layers) = if layer_wise {
            let layers: Vec<usize> = (0..original.len()).filter(|&j| req.layers.contains(&original[j])).collect();
            if layers.is_empty() {
                return Err(PlannerError::NoCandidates("no layer to remove: the layer range is empty").into());
            }
            (Vec::new(), layers)
        } else {
            (candidate_groups(&spec, req)?, Vec::new())
        };
        let scores = match req.criterion {
            Criterion::Random => Scores { groups: random_scores(&groups, &mut rng), layers: layers.iter().map(|_| rng.random() as f32).collect() },
            _ => {
                let job = ScoreJob {
                    step: k,
                    groups: &groups,
                    layers: &layers,
                    criterion: req.criterion,
                    reduction: req.reduction,
                    windows: &windows,
                    damping: req.damping,
                };
                engine.score(job).await?
            }
        };
        seconds.scoring += t.elapsed().as_secs_f64();
        let t = Instant::now();
        let mut step = if layer_wise {
            select_layers(&layers, scores.layers, req, target)?
        } else {
            select_units(&spec, &groups, scores.groups, req, target, &mut initial_units)?
        };
        if req.reconstruct || req.compensate_bias {
            step.reconstruct = Some(Reconstruction { damping: req.damping, windows, weights: req.reconstruct, bias: req.compensate_bias });
        }
        seconds.planning += t.elapsed().as_secs_f64();
        // The new shape, after checking that the step fits the model.
        let after = spec_after_step(&spec, &step)?;
        let t = Instant::now();
        engine.apply(&spec, &step, &after).await?;
        seconds.slicing += t.elapsed().as_secs_f64();
        for &i in step.removed_layers.iter().rev() {
            original.remove(i);
        }
        tracing::info!(step = k, steps = req.steps, target, params = after.n_params(), "pruning step applied");
        spec = after;
        steps.push(step);
    }
    Ok(StepsOutcome { spec, steps, seconds })
}

/// Replays a plan's `steps` on the engine's model (shaped `spec`): each step checked against
/// the model as it is then and cut by the engine, as `prune_steps` cut it. Returns the final
/// shape, or the 0-based index of the step that failed with its error.
pub async fn replay_steps<E: PruneEngine>(engine: &mut E, spec: &ModelSpec, steps: &[PlanStep]) -> Result<ModelSpec, (usize, E::Error)> {
    let mut spec = spec.clone();
    for (k, step) in steps.iter().enumerate() {
        let after = spec_after_step(&spec, step).map_err(|e| (k, e.into()))?;
        engine.apply(&spec, step, &after).await.map_err(|e| (k, e))?;
        spec = after;
    }
    Ok(spec)
}

/// Runs an engine future that never waits (an engine in this process computes while it is
/// polled): its output, or an error if it would have waited for something.
pub fn run_ready<T>(future: impl Future<Output = T>) -> Result<T, PlannerError> {
    let mut future = std::pin::pin!(future);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match future.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(out) => Ok(out),
        std::task::Poll::Pending => Err(PlannerError::Unsupported("an in-process engine waited on something; run it on an async runtime")),
    }
}

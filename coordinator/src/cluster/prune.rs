//! Pruning on a cluster: the same steps as `llmprune_worker::prune::pipeline::prune`, with
//! the scoring done by the workers (each scores the groups of its layers, the pipeline
//! carrying hidden states and their gradients between ranks) and the decision taken here by
//! the same selection code, so the plan and the weights equal the single-process run's.

use super::driver::{Cluster, Member, Phase};
use super::load::{load_layout, Layout, RankReport};
use anyhow::{bail, Context, Result};
use llmprune_shared::depgraph::{structure, Group, Structure};
use llmprune_shared::plan::PlanStep;
use llmprune_shared::proto::{
    ApplyPlanRequest, KeptUnits, SaveShardRequest, ScoreReply, ScoreRequest, TokenWindow,
};
use llmprune_shared::{ModelSpec, PyRandom};
use llmprune_worker::prune::apply::check_step;
use llmprune_worker::prune::pipeline::{candidate_groups, check_request, random_scores, select, Importance, PruneRequest, Strategy};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use std::time::Instant;

pub struct DistributedOutcome {
    pub spec: ModelSpec,
    pub steps: Vec<PlanStep>,
    /// Seconds of loading, scoring (gradients included), planning and slicing.
    pub seconds: [f64; 4],
    /// Shard files written into the output directory: (file, tensor names, bytes).
    pub shards: Vec<(String, Vec<String>, u64)>,
    pub ranks: Vec<RankReport>,
}

/// Scores gathered in a step, kept so that `--resume` can skip scoring.
#[derive(Serialize, Deserialize)]
struct ScoresCheckpoint {
    /// The run's settings, model checksum and calibration: a checkpoint of another run is ignored.
    fingerprint: String,
    step: usize,
    scores: Vec<Vec<f32>>,
}

fn layer_of(g: &Group) -> Option<usize> {
    match structure(&g.root)? {
        Structure::Heads(i) | Structure::QueryHeads(i) | Structure::Neurons(i) => Some(i),
        Structure::Hidden => None,
    }
}

pub struct DistributedPrune<'a> {
    pub model_path: &'a Path,
    pub model_sha256: &'a str,
    pub spec: ModelSpec,
    pub request: &'a PruneRequest,
    pub calibration: &'a mut dyn FnMut(usize) -> llmprune_worker::Result<Vec<Vec<u32>>>,
    /// The output's temporary directory, where the workers write their shards.
    pub out_dir: &'a Path,
    pub checkpoint: PathBuf,
    pub resume: bool,
    /// What makes two runs the same (settings, model, calibration).
    pub fingerprint: String,
    /// Copies of each pipeline stage, splitting the calibration windows between them.
    pub replicas: usize,
}

pub async fn prune_on_cluster(cluster: &mut Cluster, job: DistributedPrune<'_>) -> Result<DistributedOutcome> {
    let req = job.request;
    check_request(&job.spec, req)?;
    if req.strategy != Strategy::Block {
        bail!("--strategy {:?} runs in one process for now; drop --local-workers/--workers", req.strategy);
    }
    let Layout { world, shards, mut ranks, load_s } = load_layout(cluster, &job.spec, job.model_path, job.model_sha256, job.replicas).await?;
    let replicas = job.replicas;

    std::fs::create_dir_all(&job.checkpoint).with_context(|| format!("creating {}", job.checkpoint.display()))?;
    let mut spec = job.spec.clone();
    let mut rng = PyRandom::new(req.seed);
    let mut initial_units: HashMap<String, usize> = HashMap::new();
    let mut steps = Vec::with_capacity(req.steps);
    let (mut score_s, mut plan_s, mut slice_s) = (0.0, 0.0, 0.0);
    for k in 1..=req.steps {
        let target = req.ratio * k as f64 / req.steps as f64;
        let groups = candidate_groups(&spec, req)?;
        let owner = |g: &Group| layer_of(g).and_then(|i| shards.iter().position(|r| r.contains(&i)));
        if let Some(g) = groups.iter().find(|g| owner(g).is_none()) {
            bail!("group `{}` spans shards; only block-wise groups are distributed", g.root);
        }

        cluster.enter(Phase::Scoring);
        let t = Instant::now();
        let saved = job.checkpoint.join(format!("scores-step{k}.json"));
        let resumed = if job.resume { read_checkpoint(&saved, &job.fingerprint, k, &groups) } else { None };
        let scores = match (resumed, req.importance) {
            (Some(scores), _) => {
                tracing::info!(step = k, file = %saved.display(), "scores from the checkpoint (--resume)");
                scores
            }
            (None, Importance::Random) => random_scores(&groups, &mut rng),
            (None, Importance::Scored(criterion, reduction)) => {
                let windows: Vec<TokenWindow> = if criterion.needs_gradient() {
                    (job.calibration)(k - 1)?.into_iter().map(|ids| TokenWindow { ids }).collect()
                } else {
                    Vec::new()
                };
                if windows.len() < replicas && criterion.needs_gradient() {
                    bail!("--replicas {replicas} needs at least {replicas} calibration samples (--num-examples), got {}", windows.len());
                }
                let roots: Vec<Vec<String>> =
                    (0..world).map(|r| groups.iter().filter(|g| owner(g) == Some(r)).map(|g| g.root.clone()).collect()).collect();
                let replies = cluster
                    .each("scoring", |m| {
                        let mut rpc = m.rpc.clone();
                        let req = ScoreRequest {
                            criterion: criterion.name().into(),
                            reduction: reduction.name().into(),
                            roots: roots[m.stage].clone(),
                            windows: windows.clone(),
                        };
                        async move { Ok(rpc.score(req).await?.into_inner()) }
                    })
                    .await?;
                for (r, reply) in ranks.iter_mut().zip(&replies) {
                    r.peak_rss_mib = r.peak_rss_mib.max(reply.peak_rss_bytes as f64 / 1048576.0);
                }
                let mut by_root = match merge_replica_scores(&cluster.members, replies) {
                    Ok(scores) => scores,
                    Err(msg) => return Err(cluster.fail(&format!("scoring: {msg}")).await),
                };
                let scores = groups
                    .iter()
                    .map(|g| by_root.remove(&g.root).with_context(|| format!("no worker scored group `{}`", g.root)))
                    .collect::<Result<Vec<_>>>()?;
                let cp = ScoresCheckpoint { fingerprint: job.fingerprint.clone(), step: k, scores: scores.clone() };
                crate::commands::write_json_atomic(&saved, &serde_json::to_value(&cp)?)?;
                scores
            }
        };
        score_s += t.elapsed().as_secs_f64();

        cluster.enter(Phase::Planning);
        let t = Instant::now();
        let step = select(&spec, &groups, scores, req, target, &mut initial_units)?;
        check_step(&spec, &step)?;
        plan_s += t.elapsed().as_secs_f64();

        cluster.enter(Phase::Slicing);
        let t = Instant::now();
        let kept_by_stage: Vec<Vec<KeptUnits>> = (0..world)
            .map(|r| {
                groups
                    .iter()
                    .zip(&step.groups)
                    .filter(|(g, _)| owner(g) == Some(r))
                    .map(|(_, pg)| KeptUnits { root: pg.root.clone(), units: pg.units as u32, kept: pg.kept.iter().map(|&u| u as u32).collect() })
                    .collect()
            })
            .collect();
        let applied = cluster
            .each("slicing", |m| {
                let mut rpc = m.rpc.clone();
                let req = ApplyPlanRequest { groups: kept_by_stage[m.stage].clone() };
                async move { Ok(rpc.apply_plan(req).await?.into_inner()) }
            })
            .await?;
        for (m, reply) in cluster.members.iter().zip(&applied) {
            if reply.layers.len() != m.layers.len() {
                bail!("worker {} reported {} layers for {}..{}", m.id, reply.layers.len(), m.layers.start, m.layers.end);
            }
            for (i, l) in m.layers.clone().zip(&reply.layers) {
                spec.layers[i] = llmprune_shared::LayerShape {
                    n_heads: l.heads as usize,
                    n_kv_heads: l.kv_heads as usize,
                    intermediate_size: l.intermediate_size as usize,
                };
            }
        }
        slice_s += t.elapsed().as_secs_f64();
        tracing::info!(step = k, steps = req.steps, target, params = spec.n_params(), "pruning step applied on the cluster");
        steps.push(step);
    }

    cluster.enter(Phase::Saving);
    let dir = job.out_dir.display().to_string();
    let file = |r: usize| if world == 1 { "model.safetensors".to_string() } else { format!("model-{:05}-of-{world:05}.safetensors", r + 1) };
    // Replicas hold the same weights: the first copy of each stage writes them.
    let saved = cluster
        .each_where("saving", |m| m.replica == 0, |m| {
            let mut rpc = m.rpc.clone();
            let req = SaveShardRequest { directory: dir.clone(), file_name: file(m.stage) };
            async move { Ok(rpc.save_shard(req).await?.into_inner()) }
        })
        .await?;
    let shards_written = saved.into_iter().enumerate().map(|(r, s)| (file(r), s.tensor_names, s.bytes)).collect();
    Ok(DistributedOutcome { spec, steps, seconds: [load_s, score_s, plan_s, slice_s], shards: shards_written, ranks })
}

/// The groups' scores by root from every worker's reply (in rank order). Replicas of a stage
/// all-reduced the same statistics, so their scores must agree to the bit; a mismatch means a
/// broken replica and fails the run.
fn merge_replica_scores(members: &[Member], replies: Vec<ScoreReply>) -> Result<HashMap<String, Vec<f32>>, String> {
    let mut by_root: HashMap<String, Vec<f32>> = HashMap::new();
    for (m, reply) in members.iter().zip(replies) {
        for g in reply.groups {
            match by_root.get(&g.root) {
                Some(first) if first.iter().map(|x| x.to_bits()).ne(g.scores.iter().map(|x| x.to_bits())) => {
                    return Err(format!("replica {} of stage {} (worker {}) disagrees with replica 0 on group `{}`", m.replica, m.stage, m.id, g.root));
                }
                Some(_) => {}
                None => {
                    by_root.insert(g.root, g.scores);
                }
            }
        }
    }
    Ok(by_root)
}

fn read_checkpoint(path: &Path, fingerprint: &str, step: usize, groups: &[Group]) -> Option<Vec<Vec<f32>>> {
    let text = std::fs::read_to_string(path).ok()?;
    let cp: ScoresCheckpoint = serde_json::from_str(&text).ok()?;
    let fits = cp.fingerprint == fingerprint && cp.step == step && cp.scores.len() == groups.len()
        && cp.scores.iter().zip(groups).all(|(s, g)| s.len() == g.units);
    if !fits {
        tracing::warn!(file = %path.display(), "ignoring a checkpoint of another run");
    }
    fits.then_some(cp.scores)
}

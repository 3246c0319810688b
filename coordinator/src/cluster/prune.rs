//! Pruning on a cluster: the same steps as `llmprune_worker::prune::pipeline::prune`, with
//! the scoring done by the workers (each scores the groups of its layers, the pipeline
//! carrying hidden states and their gradients between ranks) and the decision taken here by
//! the same selection code, so the plan and the weights equal the single-process run's.

use super::driver::{random_hex, Cluster, Phase};
use super::shards::assign_shards;
use anyhow::{bail, Context, Result};
use llmprune_shared::depgraph::{structure, Group, Structure};
use llmprune_shared::plan::PlanStep;
use llmprune_shared::proto::{
    ApplyPlanRequest, KeptUnits, LoadShardRequest, SaveShardRequest, ScoreRequest, ShardSpec, TokenWindow,
};
use llmprune_shared::{ModelSpec, PyRandom};
use llmprune_worker::prune::apply::check_step;
use llmprune_worker::prune::pipeline::{candidate_groups, check_request, random_scores, select, Importance, PruneRequest, Strategy};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// A rank's part in the run, for the report.
#[derive(Debug, Clone, Serialize)]
pub struct RankReport {
    pub worker: String,
    pub rank: usize,
    pub layers: [usize; 2],
    pub params_loaded: u64,
    pub peak_rss_mib: f64,
}

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

/// Where scores of this run are checkpointed; removed after a successful run.
pub fn checkpoint_dir(out: &Path) -> PathBuf {
    let name = out.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "out".into());
    out.with_file_name(format!(".{name}.llmprune-checkpoint"))
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
}

pub async fn prune_on_cluster(cluster: &mut Cluster, job: DistributedPrune<'_>) -> Result<DistributedOutcome> {
    let req = job.request;
    check_request(&job.spec, req)?;
    if req.strategy != Strategy::Block {
        bail!("--strategy {:?} runs in one process for now; drop --local-workers/--workers", req.strategy);
    }
    let world = cluster.members.len();
    let memories: Vec<u64> = cluster.members.iter().map(|m| m.memory_bytes).collect();
    let shards = assign_shards(&job.spec, &memories)?;
    for (m, range) in cluster.members.iter_mut().zip(&shards) {
        m.layers = range.clone();
    }
    let ring_addresses: Vec<String> = cluster.members.iter().map(|m| m.ring_address.clone()).collect();
    let cookie = u64::from_str_radix(&random_hex()?[..16], 16)?;

    cluster.enter(Phase::Loading);
    let t = Instant::now();
    let (path, sha, run_id) = (job.model_path.display().to_string(), job.model_sha256.to_string(), cluster.registry.run_id.clone());
    let loaded = cluster
        .each("loading", |m| {
            let mut rpc = m.rpc.clone();
            let req = LoadShardRequest {
                run_id: run_id.clone(),
                model_path: path.clone(),
                model_sha256: sha.clone(),
                shard: Some(ShardSpec {
                    rank: m.rank as u32,
                    world_size: world as u32,
                    layer_start: m.layers.start as u32,
                    layer_end: m.layers.end as u32,
                    embeddings: m.rank == 0,
                    head: m.rank + 1 == world,
                }),
                ring_addresses: ring_addresses.clone(),
                ring_cookie: cookie,
            };
            async move { Ok(rpc.load_shard(req).await?.into_inner()) }
        })
        .await?;
    let load_s = t.elapsed().as_secs_f64();
    let mut ranks: Vec<RankReport> = cluster
        .members
        .iter()
        .zip(&loaded)
        .map(|(m, l)| RankReport {
            worker: m.id.clone(),
            rank: m.rank,
            layers: [m.layers.start, m.layers.end],
            params_loaded: l.params,
            peak_rss_mib: l.peak_rss_bytes as f64 / 1048576.0,
        })
        .collect();

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
                let roots: Vec<Vec<String>> =
                    (0..world).map(|r| groups.iter().filter(|g| owner(g) == Some(r)).map(|g| g.root.clone()).collect()).collect();
                let replies = cluster
                    .each("scoring", |m| {
                        let mut rpc = m.rpc.clone();
                        let req = ScoreRequest {
                            criterion: criterion.name().into(),
                            reduction: reduction.name().into(),
                            roots: roots[m.rank].clone(),
                            windows: windows.clone(),
                        };
                        async move { Ok(rpc.score(req).await?.into_inner()) }
                    })
                    .await?;
                for (r, reply) in ranks.iter_mut().zip(&replies) {
                    r.peak_rss_mib = r.peak_rss_mib.max(reply.peak_rss_bytes as f64 / 1048576.0);
                }
                let mut by_root: HashMap<String, Vec<f32>> =
                    replies.into_iter().flat_map(|r| r.groups).map(|g| (g.root, g.scores)).collect();
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
        let kept_by_rank: Vec<Vec<KeptUnits>> = (0..world)
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
                let req = ApplyPlanRequest { groups: kept_by_rank[m.rank].clone() };
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
    let saved = cluster
        .each("saving", |m| {
            let mut rpc = m.rpc.clone();
            let req = SaveShardRequest { directory: dir.clone(), file_name: file(m.rank) };
            async move { Ok(rpc.save_shard(req).await?.into_inner()) }
        })
        .await?;
    let shards_written = saved.into_iter().enumerate().map(|(r, s)| (file(r), s.tensor_names, s.bytes)).collect();
    Ok(DistributedOutcome { spec, steps, seconds: [load_s, score_s, plan_s, slice_s], shards: shards_written, ranks })
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

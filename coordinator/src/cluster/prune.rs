//! Pruning on a cluster: the same steps as `llmprune_worker::prune::pipeline::prune`, with
//! the scoring done by the workers (each scores the groups of its layers, the pipeline
//! carrying hidden states and their gradients between ranks) and the decision taken here by
//! the same selection code, so the plan and the weights equal the single-process run's.

use super::driver::{random_hex, Cluster, Member, Phase};
use super::shards::assign_shards;
use anyhow::{bail, Context, Result};
use llmprune_shared::depgraph::{structure, Group, Structure};
use llmprune_shared::plan::PlanStep;
use llmprune_shared::proto::{
    ApplyPlanRequest, KeptUnits, LoadShardRequest, NcclUniqueIdRequest, SaveShardRequest, ScoreReply, ScoreRequest, ShardSpec, TokenWindow,
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
    pub stage: usize,
    pub replica: usize,
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
    let workers = cluster.members.len();
    let replicas = job.replicas;
    if replicas == 0 || !workers.is_multiple_of(replicas) {
        bail!("--replicas {replicas}: the {workers} workers must split into equal replicas (a divisor of {workers})");
    }
    let world = workers / replicas;
    // Worker r is stage r mod S of replica r div S: with one replica the ranks are the stages.
    for m in cluster.members.iter_mut() {
        (m.stage, m.replica) = (m.rank % world, m.rank / world);
    }
    // A stage must fit the smallest of its copies.
    let memories: Vec<u64> =
        (0..world).map(|s| cluster.members.iter().filter(|m| m.stage == s).map(|m| m.memory_bytes).min().unwrap_or(0)).collect();
    let shards = assign_shards(&job.spec, &memories)?;
    for m in cluster.members.iter_mut() {
        m.layers = shards[m.stage].clone();
    }
    let ring_of = |replica: usize| -> Vec<String> {
        cluster.members.iter().filter(|m| m.replica == replica).map(|m| m.ring_address.clone()).collect()
    };
    let ring_addresses: Vec<Vec<String>> = (0..replicas).map(ring_of).collect();
    let replica_ring_addresses: Vec<Vec<String>> = (0..world)
        .map(|s| cluster.members.iter().filter(|m| m.stage == s).map(|m| m.replica_ring_address.clone()).collect())
        .collect();
    let cookie = u64::from_str_radix(&random_hex()?[..16], 16)?;
    let (pipeline_ids, replica_ids) = nccl_ids(cluster, world, replicas).await?;

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
                    rank: m.stage as u32,
                    world_size: world as u32,
                    layer_start: m.layers.start as u32,
                    layer_end: m.layers.end as u32,
                    embeddings: m.stage == 0,
                    head: m.stage + 1 == world,
                    replica: m.replica as u32,
                    replicas: replicas as u32,
                }),
                ring_addresses: ring_addresses[m.replica].clone(),
                ring_cookie: cookie,
                replica_ring_addresses: replica_ring_addresses[m.stage].clone(),
                worker_id: m.id.clone(),
                pipeline_nccl_id: pipeline_ids[m.replica].clone(),
                replica_nccl_id: replica_ids[m.stage].clone(),
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
            stage: m.stage,
            replica: m.replica,
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

/// NCCL unique ids for the pipeline group of each replica and the replica group of each
/// stage when the workers are GPUs (asked of each group's first member), none on CPUs.
async fn nccl_ids(cluster: &mut Cluster, world: usize, replicas: usize) -> Result<(Vec<Vec<u8>>, Vec<Vec<u8>>)> {
    let on_gpu = |m: &Member| m.device_kind.starts_with("cuda");
    let gpus = cluster.members.iter().filter(|m| on_gpu(m)).count();
    if gpus == 0 {
        return Ok((vec![Vec::new(); replicas], vec![Vec::new(); world]));
    }
    if gpus < cluster.members.len() {
        let kinds: Vec<String> = cluster.members.iter().map(|m| format!("{}: {}", m.id, m.device_kind)).collect();
        bail!("the workers mix CPUs and GPUs ({}); run them all on one kind", kinds.join(", "));
    }
    // A group of one needs no id; a group's first member is stage 0 (pipeline) or replica 0.
    let first_of_pipeline = |m: &Member| world > 1 && m.stage == 0;
    let first_of_replicas = |m: &Member| replicas > 1 && m.replica == 0;
    let ids = cluster
        .each_where("loading", |m| first_of_pipeline(m) || first_of_replicas(m), |m| {
            let mut rpc = m.rpc.clone();
            let (stage, replica) = (m.stage, m.replica);
            async move {
                let id = rpc.nccl_unique_id(NcclUniqueIdRequest {}).await?.into_inner().id;
                let second = if stage == 0 && replica == 0 && world > 1 && replicas > 1 {
                    rpc.nccl_unique_id(NcclUniqueIdRequest {}).await?.into_inner().id
                } else {
                    Vec::new()
                };
                Ok((stage, replica, id, second))
            }
        })
        .await?;
    let (mut pipeline, mut copies) = (vec![Vec::new(); replicas], vec![Vec::new(); world]);
    for (stage, replica, id, second) in ids {
        match (stage, replica) {
            // Worker (0, 0) leads both of its groups: one id each.
            (0, 0) if world > 1 && replicas > 1 => (pipeline[0], copies[0]) = (id, second),
            (0, r) if world > 1 => pipeline[r] = id,
            (s, _) => copies[s] = id,
        }
    }
    Ok((pipeline, copies))
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

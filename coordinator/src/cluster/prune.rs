//! The cluster as the planner's pruning engine: the step loop is the planner's
//! ([`prune_steps`]), the same one a single process runs; here each step's scoring and
//! cutting go to the workers. Every stage scores the candidates it holds (whole groups of its
//! layers, its members of the hidden-channel groups that reach every stage, its layers), the
//! coordinator reduces the groups that span stages in their member order, and every stage
//! cuts by the whole step, so plans and weights equal the single-process run's.

use super::driver::{Cluster, Member, Phase};
use super::evaluate::time_latency;
use super::load::{load_layout, Layout, ModelFiles, RankReport};
use anyhow::{bail, Context, Result};
use llmprune_shared::depgraph::Group;
use llmprune_shared::dtype::WeightDtype;
use llmprune_shared::layout::ShardLayout;
use llmprune_shared::plan::PlanStep;
use llmprune_shared::planner::{assemble_members, renumber_range, step_to_wire, PruneEngine, ScoreJob, Scores};
use llmprune_shared::proto::{self, SaveShardRequest, SavedFile, ScoreReply, ScoreRequest, TokenWindow};
use llmprune_shared::results::Latency;
use llmprune_shared::safetensors_index::name_as_model;
use llmprune_shared::ModelSpec;
use prost::Message;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Scores gathered in a step, kept so that `--resume` can skip scoring.
#[derive(Serialize, Deserialize)]
struct ScoresCheckpoint {
    /// The run's settings, model checksum and calibration: a checkpoint of another run is ignored.
    fingerprint: String,
    step: usize,
    scores: Vec<Vec<f32>>,
    #[serde(default)]
    layer_scores: Vec<f32>,
}

/// Where scores are checkpointed, and whether earlier ones may be reused.
pub struct ScoreCheckpoints {
    pub dir: PathBuf,
    pub resume: bool,
    /// What makes two runs the same (settings, model, calibration).
    pub fingerprint: String,
}

impl ScoreCheckpoints {
    fn path(&self, step: usize) -> PathBuf {
        self.dir.join(format!("scores-step{step}.json"))
    }
}

pub struct ClusterEngine<'a> {
    cluster: &'a mut Cluster,
    world: usize,
    replicas: usize,
    tied_embeddings: bool,
    /// Where scores are checkpointed (none for a replay, which scores nothing).
    checkpoints: Option<ScoreCheckpoints>,
    pub ranks: Vec<RankReport>,
    pub load_s: f64,
    /// The dtype the workers hold the weights in (and write them in).
    pub dtype: WeightDtype,
}

impl<'a> ClusterEngine<'a> {
    /// Lays the model out on the workers (stages × `replicas`) and has them load it.
    pub async fn load(cluster: &'a mut Cluster, model: ModelFiles<'_>, replicas: usize, checkpoints: Option<ScoreCheckpoints>) -> Result<Self> {
        let spec = model.spec;
        let Layout { world, dtype, ranks, load_s } = load_layout(cluster, model, replicas).await?;
        if let Some(c) = &checkpoints {
            std::fs::create_dir_all(&c.dir).with_context(|| format!("creating {}", c.dir.display()))?;
        }
        Ok(Self { cluster, world, replicas, tied_embeddings: spec.tie_word_embeddings, checkpoints, ranks, load_s, dtype })
    }

    fn layout(&self, m: &Member) -> ShardLayout {
        ShardLayout {
            rank: m.stage,
            world: self.world,
            layers: m.layers.clone(),
            embeddings: m.stage == 0,
            head: m.stage + 1 == self.world,
            replica: m.replica,
            replicas: self.replicas,
        }
    }

    /// Whether a stage takes part in scoring `g`: it holds a member (a tied embedding on the
    /// last stage too, whose head gradient goes to the first stage).
    fn holds(&self, layout: &ShardLayout, g: &Group) -> bool {
        g.members.iter().any(|m| layout.holds(&m.param, self.tied_embeddings))
    }

    /// The paper's Table 3 latency of the model as loaded (`req` names the text, chunks and
    /// length), timed by the first worker alone; `None` when the model is split into stages
    /// (no worker holds all of it).
    pub async fn latency(&mut self, req: &proto::EvaluateRequest) -> Result<Option<Latency>> {
        if self.world > 1 {
            return Ok(None);
        }
        time_latency(self.cluster, req).await
    }

    /// Has the first replica of every stage that owns weights write them into `out_dir`, in
    /// files of at most `max_shard_bytes`, then names them as one Hugging Face model
    /// (`model.safetensors`, or numbered shards with their index).
    pub async fn save(&mut self, out_dir: &Path, max_shard_bytes: u64) -> Result<()> {
        self.cluster.enter(Phase::Saving);
        let writers: Vec<usize> = (0..self.world).filter(|&s| !self.layout(self.stage_member(s)).owns_nothing()).collect();
        let dir = out_dir.display().to_string();
        let saved = self
            .cluster
            .each_where(
                "saving",
                |m| m.replica == 0 && writers.contains(&m.stage),
                |m| {
                    let mut rpc = m.rpc.clone();
                    let req = SaveShardRequest { directory: dir.clone(), file_stem: format!("stage-{:05}", m.stage), max_shard_bytes };
                    async move { Ok(rpc.save_shard(req).await?.into_inner()) }
                },
            )
            .await?;
        let parts: Vec<(String, Vec<String>, u64)> =
            saved.into_iter().flat_map(|r| r.files).map(|f: SavedFile| (f.file_name, f.tensor_names, f.bytes)).collect();
        name_as_model(out_dir, &parts).context("naming the stages' weight files")
    }

    fn stage_member(&self, stage: usize) -> &Member {
        let found = self.cluster.members.iter().find(|m| m.stage == stage && m.replica == 0);
        found.unwrap_or(&self.cluster.members[0])
    }

    /// The checkpointed scores of `job`'s step, when resuming a run with the same fingerprint
    /// and candidates.
    fn resumed(&self, job: &ScoreJob) -> Option<Scores> {
        let checkpoints = self.checkpoints.as_ref().filter(|c| c.resume)?;
        let path = checkpoints.path(job.step);
        let cp: ScoresCheckpoint = serde_json::from_str(&std::fs::read_to_string(&path).ok()?).ok()?;
        let fits = cp.fingerprint == checkpoints.fingerprint
            && cp.step == job.step
            && cp.scores.len() == job.groups.len()
            && cp.scores.iter().zip(job.groups).all(|(s, g)| s.len() == g.units)
            && cp.layer_scores.len() == job.layers.len();
        if !fits {
            tracing::warn!(file = %path.display(), "ignoring a checkpoint of another run");
            return None;
        }
        tracing::info!(step = job.step, file = %path.display(), "scores from the checkpoint (--resume)");
        Some(Scores { groups: cp.scores, layers: cp.layer_scores })
    }
}

impl PruneEngine for ClusterEngine<'_> {
    type Error = anyhow::Error;

    async fn score(&mut self, job: ScoreJob<'_>) -> Result<Scores> {
        if let Some(scores) = self.resumed(&job) {
            return Ok(scores);
        }
        if job.criterion.needs_calibration() && job.windows.len() < self.replicas {
            let r = self.replicas;
            bail!("--replicas {r} needs at least {r} calibration samples (--samples, or windows in --calibration-ids), got {}", job.windows.len());
        }
        self.cluster.enter(Phase::Scoring);
        let windows: Vec<TokenWindow> = job.windows.iter().map(|ids| TokenWindow { ids: ids.clone() }).collect();
        let requests: Vec<ScoreRequest> = (0..self.world)
            .map(|s| {
                let layout = self.layout(self.stage_member(s));
                ScoreRequest {
                    criterion: proto::Criterion::from(job.criterion) as i32,
                    reduction: proto::Reduction::from(job.reduction) as i32,
                    roots: job.groups.iter().filter(|g| self.holds(&layout, g)).map(|g| g.root.clone()).collect(),
                    windows: windows.clone(),
                    layers: job.layers.iter().filter(|j| layout.layers.contains(j)).map(|&j| j as u32).collect(),
                    damping: job.damping,
                }
            })
            .collect();
        let replies = self
            .cluster
            .each("scoring", |m| {
                let mut rpc = m.rpc.clone();
                let req = requests[m.stage].clone();
                async move { Ok(rpc.score(req).await?.into_inner()) }
            })
            .await?;
        for (r, reply) in self.ranks.iter_mut().zip(&replies) {
            r.peak_rss_mib = r.peak_rss_mib.max(reply.peak_rss_bytes as f64 / 1048576.0);
        }
        let by_stage = match first_replicas(&self.cluster.members, replies, self.world) {
            Ok(by_stage) => by_stage,
            Err(msg) => return Err(self.cluster.fail(&format!("scoring: {msg}")).await),
        };
        let scores = merge_stages(&job, by_stage)?;
        if let Some(c) = &self.checkpoints {
            let cp =
                ScoresCheckpoint { fingerprint: c.fingerprint.clone(), step: job.step, scores: scores.groups.clone(), layer_scores: scores.layers.clone() };
            crate::commands::write_json_atomic(&c.path(job.step), &serde_json::to_value(&cp)?)?;
        }
        Ok(scores)
    }

    async fn apply(&mut self, _spec: &ModelSpec, step: &PlanStep, after: &ModelSpec) -> Result<()> {
        self.cluster.enter(Phase::Slicing);
        let req = step_to_wire(step);
        let applied = self
            .cluster
            .each("slicing", |m| {
                let mut rpc = m.rpc.clone();
                let req = req.clone();
                async move { Ok(rpc.apply_plan(req).await?.into_inner()) }
            })
            .await?;
        for (m, reply) in self.cluster.members.iter_mut().zip(&applied) {
            let layers = renumber_range(&m.layers, &step.removed_layers);
            let shapes: Vec<llmprune_shared::LayerShape> = reply
                .layers
                .iter()
                .map(|l| llmprune_shared::LayerShape {
                    n_heads: l.heads as usize,
                    n_kv_heads: l.kv_heads as usize,
                    intermediate_size: l.intermediate_size as usize,
                })
                .collect();
            let agrees = (reply.layer_start as usize..reply.layer_end as usize) == layers
                && reply.hidden_size as usize == after.hidden_size
                && shapes[..] == after.layers[layers.clone()];
            if !agrees {
                bail!(
                    "worker {} cut its shard to layers {}..{} of {:?}, hidden {}; the plan expects {layers:?} of {:?}, hidden {}",
                    m.id,
                    reply.layer_start,
                    reply.layer_end,
                    shapes,
                    reply.hidden_size,
                    &after.layers[layers.clone()],
                    after.hidden_size
                );
            }
            m.layers = layers;
        }
        Ok(())
    }
}

/// Every stage's reply from its first replica, after checking that the other replicas
/// (which all-reduced the same statistics) agree with it to the bit.
fn first_replicas(members: &[Member], replies: Vec<ScoreReply>, world: usize) -> Result<Vec<ScoreReply>, String> {
    let mut first: Vec<Option<ScoreReply>> = vec![None; world];
    // The scores as protobuf encodes them (floats by their bits), timings and memory left out.
    let bits = |r: &ScoreReply| ScoreReply { groups: r.groups.clone(), layers: r.layers.clone(), ..Default::default() }.encode_to_vec();
    for (m, reply) in members.iter().zip(replies) {
        match &first[m.stage] {
            Some(f) if bits(f) != bits(&reply) => {
                return Err(format!("replica {} of stage {} (worker {}) disagrees with replica 0", m.replica, m.stage, m.id));
            }
            Some(_) => {}
            None => first[m.stage] = Some(reply),
        }
    }
    first.into_iter().enumerate().map(|(s, r)| r.ok_or_else(|| format!("no worker scored stage {s}"))).collect()
}

/// The job's scores from the stages' replies: whole groups as a stage sent them, groups that
/// span stages reduced from every stage's members, layers from their owners.
fn merge_stages(job: &ScoreJob, replies: Vec<ScoreReply>) -> Result<Scores> {
    let mut whole: HashMap<String, Vec<f32>> = HashMap::new();
    let mut parts: HashMap<String, Vec<(usize, Vec<f32>)>> = HashMap::new();
    let mut layer_scores: HashMap<usize, f32> = HashMap::new();
    for reply in replies {
        for g in reply.groups {
            if !g.scores.is_empty() {
                whole.insert(g.root, g.scores);
            } else {
                parts.entry(g.root).or_default().extend(g.members.into_iter().map(|m| (m.member as usize, m.folded)));
            }
        }
        layer_scores.extend(reply.layers.iter().map(|l| (l.layer as usize, l.score)));
    }
    let groups = job
        .groups
        .iter()
        .map(|g| match whole.remove(&g.root) {
            Some(s) => Ok(s),
            None => Ok(assemble_members(g, parts.remove(&g.root).unwrap_or_default(), job.reduction)?),
        })
        .collect::<Result<Vec<_>>>()?;
    let layers = job.layers.iter().map(|j| layer_scores.get(j).copied().with_context(|| format!("no worker scored layer {j}"))).collect::<Result<_>>()?;
    Ok(Scores { groups, layers })
}

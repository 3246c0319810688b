//! The one owner of a worker's device, model shard and communicator: a thread that takes
//! commands in order and answers each on its own channel. RPC handlers never touch the model;
//! they send the runtime a command and await the reply.

use super::shard::{ShardLayout, ShardModel};
use crate::collective::{Communicator, RingOptions, TcpRing};
use crate::error::{Error, Result};
use crate::loader::model_checksum;
use crate::prune::apply::{check_step, plan_groups};
use crate::prune::importance::{Criterion, Reduction};
use candle_core::Device;
use llmprune_shared::plan::{PlanGroup, PlanStep};
use llmprune_shared::proto::{
    ApplyPlanReply, ApplyPlanRequest, GroupScores, LayerShape, LoadShardReply, LoadShardRequest, ProgressEvent, SaveShardReply,
    SaveShardRequest, ScoreReply, ScoreRequest,
};
use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::time::Instant;
use tokio::sync::{mpsc, oneshot};

type Reply<T> = oneshot::Sender<Result<T>>;

enum Command {
    Load(LoadShardRequest, Reply<LoadShardReply>),
    Score(ScoreRequest, Reply<ScoreReply>),
    Apply(ApplyPlanRequest, Reply<ApplyPlanReply>),
    Save(SaveShardRequest, Reply<SaveShardReply>),
}

/// A fault to inject, for the cluster's fault tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The process exits after the first backward pass of scoring.
    ExitDuringScore,
    /// The runtime never answers (with the heartbeats stopped too: a hung machine).
    Hang,
}

pub struct RuntimeOptions {
    /// This worker's ring socket, bound before registering (its address was announced).
    pub ring_listener: TcpListener,
    pub ring: RingOptions,
    /// Progress events for the coordinator.
    pub progress: mpsc::UnboundedSender<ProgressEvent>,
    pub fault: Option<Fault>,
}

/// Sends commands to the runtime thread.
#[derive(Clone)]
pub struct RuntimeHandle {
    tx: std::sync::mpsc::Sender<Command>,
}

fn gone() -> Error {
    Error::Invalid("the worker's runtime has stopped".into())
}

impl RuntimeHandle {
    async fn call<T>(&self, make: impl FnOnce(Reply<T>) -> Command) -> Result<T> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(make(tx)).map_err(|_| gone())?;
        rx.await.map_err(|_| gone())?
    }

    pub async fn load(&self, req: LoadShardRequest) -> Result<LoadShardReply> {
        self.call(|r| Command::Load(req, r)).await
    }
    pub async fn score(&self, req: ScoreRequest) -> Result<ScoreReply> {
        self.call(|r| Command::Score(req, r)).await
    }
    pub async fn apply(&self, req: ApplyPlanRequest) -> Result<ApplyPlanReply> {
        self.call(|r| Command::Apply(req, r)).await
    }
    pub async fn save(&self, req: SaveShardRequest) -> Result<SaveShardReply> {
        self.call(|r| Command::Save(req, r)).await
    }
}

/// Starts the runtime thread.
pub fn spawn_runtime(opts: RuntimeOptions) -> Result<RuntimeHandle> {
    let (tx, rx) = std::sync::mpsc::channel::<Command>();
    std::thread::Builder::new()
        .name("llmprune-runtime".into())
        .spawn(move || {
            let mut rt = Runtime { opts, ring_listener_used: false, shard: None, comm: None };
            for cmd in rx {
                if rt.opts.fault == Some(Fault::Hang) {
                    tracing::error!("fault injection: hanging");
                    loop {
                        std::thread::park();
                    }
                }
                match cmd {
                    Command::Load(req, reply) => drop(reply.send(rt.load(req))),
                    Command::Score(req, reply) => drop(reply.send(rt.score(req))),
                    Command::Apply(req, reply) => drop(reply.send(rt.apply(req))),
                    Command::Save(req, reply) => drop(reply.send(rt.save(req))),
                }
            }
        })
        .map_err(|e| Error::Invalid(format!("starting the runtime thread: {e}")))?;
    Ok(RuntimeHandle { tx })
}

struct Runtime {
    opts: RuntimeOptions,
    ring_listener_used: bool,
    shard: Option<ShardModel>,
    comm: Option<Box<dyn Communicator>>,
}

impl Runtime {
    fn parts(&mut self) -> Result<(&mut ShardModel, &mut dyn Communicator)> {
        match (self.shard.as_mut(), self.comm.as_mut()) {
            (Some(s), Some(c)) => Ok((s, c.as_mut())),
            _ => Err(Error::Invalid("no shard loaded yet (LoadShard first)".into())),
        }
    }

    fn load(&mut self, req: LoadShardRequest) -> Result<LoadShardReply> {
        let t = Instant::now();
        let spec = req.shard.ok_or_else(|| Error::Invalid("LoadShard without a shard".into()))?;
        let path = Path::new(&req.model_path);
        let sha = model_checksum(path)?;
        if sha != req.model_sha256 {
            return Err(Error::file(path, format!("sha256 {sha} here, {} at the coordinator: the workers must see the same model", req.model_sha256)));
        }
        if self.ring_listener_used {
            return Err(Error::Invalid("this worker already joined a run; start a new worker".into()));
        }
        let addrs: Vec<SocketAddr> = req
            .ring_addresses
            .iter()
            .map(|a| a.parse().map_err(|_| Error::Invalid(format!("bad ring address `{a}`"))))
            .collect::<Result<_>>()?;
        let (rank, world) = (spec.rank as usize, spec.world_size as usize);
        if addrs.len() != world {
            return Err(Error::Invalid(format!("{} ring addresses for a world of {world}", addrs.len())));
        }
        let listener = self.opts.ring_listener.try_clone().map_err(|e| Error::io("ring socket", e))?;
        self.ring_listener_used = true;
        let ring = RingOptions { cookie: req.ring_cookie, ..self.opts.ring.clone() };
        let comm = TcpRing::connect(rank, &addrs, listener, &ring).map_err(|e| Error::Invalid(format!("joining the ring: {e}")))?;
        let layout = ShardLayout { rank, world, layers: spec.layer_start as usize..spec.layer_end as usize, embeddings: spec.embeddings, head: spec.head };
        let shard = ShardModel::load(path, layout, &Device::Cpu)?;
        let params = shard.owned_weights().values().map(|t| t.elem_count() as u64).sum();
        tracing::info!(rank, world, layers = ?shard.layout.layers, params, "shard loaded");
        self.shard = Some(shard);
        self.comm = Some(Box::new(comm));
        Ok(LoadShardReply { params, peak_rss_bytes: peak_rss_bytes(), seconds: t.elapsed().as_secs_f64() })
    }

    fn score(&mut self, req: ScoreRequest) -> Result<ScoreReply> {
        let criterion = Criterion::from_name(&req.criterion)?;
        let reduction = Reduction::from_name(&req.reduction)?;
        let fault = self.opts.fault;
        let progress_tx = self.opts.progress.clone();
        let windows: Vec<Vec<u32>> = req.windows.into_iter().map(|w| w.ids).collect();
        let tokens_per_pass: usize = windows.iter().map(Vec::len).sum();
        let (shard, comm) = self.parts()?;
        let rank = shard.layout.rank as u32;
        let universe = plan_groups(shard.spec())?;
        let by_root: HashMap<&str, _> = universe.iter().map(|g| (g.root.as_str(), g)).collect();
        let groups = req
            .roots
            .iter()
            .map(|r| by_root.get(r.as_str()).map(|g| (*g).clone()).ok_or_else(|| Error::Invalid(format!("no group `{r}` in the model"))))
            .collect::<Result<Vec<_>>>()?;
        let t = Instant::now();
        let mut progress = |done: usize, total: usize| {
            if fault == Some(Fault::ExitDuringScore) {
                tracing::error!("fault injection: exiting during scoring");
                std::process::exit(3);
            }
            let elapsed = t.elapsed().as_secs_f64();
            let _ = progress_tx.send(ProgressEvent {
                rank,
                phase: "scoring".into(),
                done: done as u64,
                total: total as u64,
                unit: "passes".into(),
                tokens_per_s: (done * tokens_per_pass) as f64 / elapsed.max(1e-9),
                eta_s: elapsed / done.max(1) as f64 * (total - done) as f64,
                ..Default::default()
            });
        };
        let scores = shard.score(comm, &groups, criterion, reduction, &windows, &mut progress)?;
        let seconds = t.elapsed().as_secs_f64();
        let groups = groups
            .iter()
            .zip(scores)
            .map(|(g, s)| GroupScores { root: g.root.clone(), units: g.units as u32, unit_width: g.unit_width as u32, scores: s })
            .collect();
        Ok(ScoreReply { groups, gradients_seconds: seconds, scoring_seconds: 0.0, peak_rss_bytes: peak_rss_bytes() })
    }

    fn apply(&mut self, req: ApplyPlanRequest) -> Result<ApplyPlanReply> {
        let (shard, _) = self.parts()?;
        let step = PlanStep {
            ratio: 0.0,
            groups: req
                .groups
                .into_iter()
                .map(|g| PlanGroup { root: g.root, units: g.units as usize, kept: g.kept.into_iter().map(|u| u as usize).collect(), scores: vec![] })
                .collect(),
            removed_layers: vec![],
            layer_scores: vec![],
        };
        let chosen = check_step(shard.spec(), &step)?;
        let shapes = shard.apply(&chosen)?;
        let params = shard.owned_weights().values().map(|t| t.elem_count() as u64).sum();
        let layers = shapes
            .iter()
            .map(|l| LayerShape { heads: l.n_heads as u32, kv_heads: l.n_kv_heads as u32, intermediate_size: l.intermediate_size as u32 })
            .collect();
        Ok(ApplyPlanReply { layers, params })
    }

    fn save(&mut self, req: SaveShardRequest) -> Result<SaveShardReply> {
        let (shard, _) = self.parts()?;
        if req.file_name.contains('/') || req.file_name.starts_with('.') {
            return Err(Error::Invalid(format!("bad shard file name `{}`", req.file_name)));
        }
        let weights = shard.owned_weights();
        let dir = Path::new(&req.directory);
        let target = dir.join(&req.file_name);
        // Written under a hidden name and renamed: a crash leaves no file that looks whole.
        let partial = dir.join(format!(".{}.partial", req.file_name));
        candle_core::safetensors::save(&weights, &partial).map_err(|e| Error::file(&partial, e))?;
        std::fs::rename(&partial, &target).map_err(|e| Error::io(&target, e))?;
        let mut tensor_names: Vec<String> = weights.keys().cloned().collect();
        tensor_names.sort();
        let bytes = weights.values().map(|t| (t.elem_count() * t.dtype().size_in_bytes()) as u64).sum();
        Ok(SaveShardReply { tensor_names, bytes })
    }
}

fn peak_rss_bytes() -> u64 {
    crate::memory::peak_rss_mb().map_or(0, |mb| (mb * 1048576.0) as u64)
}

//! The one owner of a worker's device, model shard and communicator: a thread that takes
//! commands in order and answers each on its own channel. RPC handlers never touch the model;
//! they send the runtime a command and await the reply.

use super::shard::{Collectives, ShardLayout, ShardModel};
use crate::collective::{compute_device, group_id, nccl_group, Communicator, RingOptions, TcpRing, WorkerDevice};
use crate::confine::Confinement;
use crate::error::{Error, Result};
use crate::eval::job::{confined, eval_job, evaluate_share, load_tasks, measure_latency, EvalProgress};
use crate::export::write_tensor_parts;
use crate::generate::{generate, Sampling};
use crate::loader::model_checksum;
use crate::memory::peak_rss_bytes;
use crate::prune::activations::WINDOWS_PER_PASS;
use crate::prune::engine::{GroupPart, StageJob};
use crate::prune::statistics::GRADIENT_WINDOWS_PER_PASS;
use crate::train::job::{confine_paths as confine_recovery, run_recovery};
use crate::train::recover::RecoverEvent;
use crate::train::TrainGroups;
use llmprune_shared::dtype::WeightDtype;
use llmprune_shared::planner::{criterion_from_wire, plan_groups, reduction_from_wire, spec_after_step, step_from_wire};
use llmprune_shared::proto::{
    eta_s, ApplyPlanReply, ApplyPlanRequest, Continuation, EvaluateReply, EvaluateRequest, GenerateReply, GenerateRequest, GroupScores, LayerScore, LayerShape,
    LoadShardReply, LoadShardRequest, MemberScores, PplSum, ProgressEvent, RecoverReply, RecoverRequest, SaveShardReply, SaveShardRequest, SavedFile,
    ScoreReply, ScoreRequest, UnitScores,
};
use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::time::Instant;
use tokio::sync::{mpsc, oneshot};

type Reply<T> = oneshot::Sender<Result<T>>;

enum Command {
    NcclId(Reply<Vec<u8>>),
    Load(LoadShardRequest, Reply<LoadShardReply>),
    Score(ScoreRequest, Reply<ScoreReply>),
    Apply(ApplyPlanRequest, Reply<ApplyPlanReply>),
    Save(SaveShardRequest, Reply<SaveShardReply>),
    Recover(Box<RecoverRequest>, Reply<RecoverReply>),
    Evaluate(EvaluateRequest, Reply<EvaluateReply>),
    Generate(GenerateRequest, Reply<GenerateReply>),
}

impl Command {
    /// The coordinator's phase this command belongs to.
    fn phase(&self) -> &'static str {
        match self {
            Command::NcclId(..) | Command::Load(..) => "loading",
            Command::Score(..) => "scoring",
            Command::Apply(..) => "slicing",
            Command::Save(..) => "saving",
            Command::Recover(..) => "recovering",
            Command::Evaluate(..) => "evaluating",
            Command::Generate(..) => "generating",
        }
    }
}

/// A fault to inject, for the cluster's fault tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The process exits after the first backward pass of scoring.
    ExitDuringScore,
    /// The process exits after the second step of recovery.
    ExitDuringRecovery,
    /// The runtime never answers (with the heartbeats stopped too: a hung machine).
    Hang,
}

pub struct RuntimeOptions {
    /// This worker's ring sockets, bound before registering (their addresses were announced):
    /// the pipeline ring between stages and the ring between the replicas of its stage.
    pub ring_listener: TcpListener,
    pub replica_ring_listener: TcpListener,
    pub ring: RingOptions,
    /// Progress events for the coordinator.
    pub progress: mpsc::UnboundedSender<ProgressEvent>,
    pub fault: Option<Fault>,
    /// Where the collectives run (NCCL on a GPU, the TCP rings on a CPU).
    pub device: WorkerDevice,
    /// Where requests may read and write.
    pub confinement: Confinement,
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

    pub async fn nccl_id(&self) -> Result<Vec<u8>> {
        self.call(Command::NcclId).await
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
    pub async fn recover(&self, req: RecoverRequest) -> Result<RecoverReply> {
        self.call(|r| Command::Recover(Box::new(req), r)).await
    }
    pub async fn evaluate(&self, req: EvaluateRequest) -> Result<EvaluateReply> {
        self.call(|r| Command::Evaluate(req, r)).await
    }
    pub async fn generate(&self, req: GenerateRequest) -> Result<GenerateReply> {
        self.call(|r| Command::Generate(req, r)).await
    }
}

/// Starts the runtime thread.
pub fn spawn_runtime(opts: RuntimeOptions) -> Result<RuntimeHandle> {
    let (tx, rx) = std::sync::mpsc::channel::<Command>();
    std::thread::Builder::new()
        .name("llmprune-runtime".into())
        .spawn(move || {
            let mut rt = Runtime { opts, shard: None, comms: None, span: tracing::Span::none() };
            for cmd in rx {
                if let Command::Load(req, _) = &cmd {
                    let (run_id, worker) = (&req.run_id, &req.worker_id);
                    rt.span = tracing::info_span!("worker", %run_id, %worker, rank = tracing::field::Empty, replica = tracing::field::Empty);
                }
                let _phase = tracing::info_span!(parent: &rt.span, "phase", phase = cmd.phase()).entered();
                if rt.opts.fault == Some(Fault::Hang) {
                    tracing::error!("fault injection: hanging");
                    loop {
                        std::thread::park();
                    }
                }
                // Only a step's cut may use what its scoring gathered.
                if !matches!(cmd, Command::Score(..) | Command::Apply(..)) {
                    if let Some(shard) = rt.shard.as_mut() {
                        shard.gathered = None;
                    }
                }
                match cmd {
                    Command::NcclId(reply) => drop(reply.send(rt.nccl_id())),
                    Command::Load(req, reply) => drop(reply.send(rt.load(req))),
                    Command::Score(req, reply) => drop(reply.send(rt.score(req))),
                    Command::Apply(req, reply) => drop(reply.send(rt.apply(req))),
                    Command::Save(req, reply) => drop(reply.send(rt.save(req))),
                    Command::Recover(req, reply) => drop(reply.send(rt.recover(*req))),
                    Command::Evaluate(req, reply) => drop(reply.send(rt.evaluate(req))),
                    Command::Generate(req, reply) => drop(reply.send(rt.generate(req))),
                }
            }
        })
        .map_err(|e| Error::Invalid(format!("starting the runtime thread: {e}")))?;
    Ok(RuntimeHandle { tx })
}

struct Runtime {
    opts: RuntimeOptions,
    shard: Option<ShardModel>,
    comms: Option<Collectives>,
    /// Run id, worker, rank and replica, the parent of every command's span.
    span: tracing::Span,
}

impl Runtime {
    fn parts(&mut self) -> Result<(&mut ShardModel, &mut Collectives)> {
        match (self.shard.as_mut(), self.comms.as_mut()) {
            (Some(s), Some(c)) => Ok((s, c)),
            _ => Err(Error::Invalid("no shard loaded yet (LoadShard first)".into())),
        }
    }

    fn nccl_id(&mut self) -> Result<Vec<u8>> {
        if self.opts.device == WorkerDevice::Cpu {
            return Err(Error::Invalid("NCCL ids come from GPU workers; this one runs on the CPU".into()));
        }
        group_id().map_err(|e| Error::collective("creating an NCCL id", e))
    }

    fn load(&mut self, req: LoadShardRequest) -> Result<LoadShardReply> {
        let t = Instant::now();
        let spec = req.shard.ok_or_else(|| Error::Invalid("LoadShard without a shard".into()))?;
        let path = &self.opts.confinement.readable("the model", Path::new(&req.model_path))?;
        let sha = model_checksum(path)?;
        if sha != req.model_sha256 {
            return Err(Error::file(path, format!("sha256 {sha} here, {} at the coordinator: the workers must see the same model", req.model_sha256)));
        }
        // A later phase of the same run loads another model (or part): the previous one and its
        // rings go first. Connections left over from the old rings cannot prove the new secret and
        // dropped when the new rings form.
        self.shard = None;
        self.comms = None;
        let (rank, world) = (spec.rank as usize, spec.world_size as usize);
        let (replica, replicas) = (spec.replica as usize, (spec.replicas as usize).max(1));
        let replica_addresses = if replicas == 1 && req.replica_ring_addresses.is_empty() { vec![String::new()] } else { req.replica_ring_addresses };
        let ring = RingOptions { secret: req.ring_secret.clone(), ..self.opts.ring.clone() };
        // Every worker joins its pipeline group first, then its replica group: no group waits
        // on a worker still busy joining the other.
        let device = compute_device(self.opts.device).map_err(Error::Invalid)?;
        let pipeline = match (self.opts.device, req.pipeline_nccl_id.is_empty()) {
            (WorkerDevice::Cuda(ordinal), false) => join_nccl(&device, "pipeline", ordinal, rank, world, &req.pipeline_nccl_id)?,
            _ => Box::new(join_ring("pipeline", rank, world, &req.ring_addresses, &self.opts.ring_listener, &ring)?),
        };
        let copies = match (self.opts.device, req.replica_nccl_id.is_empty()) {
            (WorkerDevice::Cuda(ordinal), false) => join_nccl(&device, "replica", ordinal, replica, replicas, &req.replica_nccl_id)?,
            _ => Box::new(join_ring("replica", replica, replicas, &replica_addresses, &self.opts.replica_ring_listener, &ring)?),
        };
        let layout = ShardLayout {
            rank,
            world,
            layers: spec.layer_start as usize..spec.layer_end as usize,
            embeddings: spec.embeddings,
            head: spec.head,
            replica,
            replicas,
        };
        let dtype = WeightDtype::from_wire(req.dtype).map_err(Error::Invalid)?;
        let shard = ShardModel::load(path, layout, dtype, &device)?;
        let params = shard.owned_weights().values().map(|t| t.elem_count() as u64).sum();
        self.span.record("rank", rank).record("replica", replica);
        tracing::info!(world, replicas, layers = ?shard.layout.layers, params, "shard loaded");
        self.shard = Some(shard);
        self.comms = Some(Collectives { pipeline, replicas: copies });
        Ok(LoadShardReply { params, peak_rss_bytes: peak_rss_bytes(), seconds: t.elapsed().as_secs_f64() })
    }

    fn score(&mut self, req: ScoreRequest) -> Result<ScoreReply> {
        let criterion = criterion_from_wire(req.criterion)?;
        let reduction = reduction_from_wire(req.reduction)?;
        let fault = self.opts.fault;
        let progress_tx = self.opts.progress.clone();
        let windows: Vec<Vec<u32>> = req.windows.into_iter().map(|w| w.ids).collect();
        let tokens_per_pass: usize = if criterion.needs_activations() {
            windows.iter().take(WINDOWS_PER_PASS).map(Vec::len).sum()
        } else {
            windows.iter().take(GRADIENT_WINDOWS_PER_PASS).map(Vec::len).sum()
        };
        if !(req.damping.is_finite() && req.damping >= 0.0) {
            return Err(Error::Invalid(format!("damping {} must be a finite number ≥ 0", req.damping)));
        }
        let (shard, comms) = self.parts()?;
        let rank = shard.layout.rank as u32;
        let universe = plan_groups(shard.spec())?;
        let by_root: HashMap<&str, _> = universe.iter().map(|g| (g.root.as_str(), g)).collect();
        let groups = req
            .roots
            .iter()
            .map(|r| by_root.get(r.as_str()).map(|g| (*g).clone()).ok_or_else(|| Error::Invalid(format!("no group `{r}` in the model"))))
            .collect::<Result<Vec<_>>>()?;
        let layers: Vec<usize> = req.layers.iter().map(|&j| j as usize).collect();
        let t = Instant::now();
        let mut progress = |done: usize, total: usize| {
            if fault == Some(Fault::ExitDuringScore) {
                tracing::error!("fault injection: exiting during scoring");
                std::process::exit(3);
            }
            let _ = progress_tx.send(passes_event(rank, "scoring", (done, total), tokens_per_pass, t));
        };
        let job = StageJob { groups: &groups, layers: &layers, criterion, reduction, windows: &windows, damping: req.damping };
        let scores = shard.score(comms, &job, &mut progress)?;
        let seconds = t.elapsed().as_secs_f64();
        let groups = groups
            .iter()
            .zip(scores.groups)
            .map(|(g, part)| {
                let (scores, members) = match part {
                    GroupPart::Whole(s) => (s, Vec::new()),
                    GroupPart::Members(m) => (Vec::new(), m.into_iter().map(|(i, folded)| MemberScores { member: i as u32, folded }).collect()),
                };
                GroupScores { root: g.root.clone(), units: g.units as u32, unit_width: g.unit_width as u32, scores, members }
            })
            .collect();
        let layers = layers.iter().zip(scores.layers).map(|(&j, score)| LayerScore { layer: j as u32, score }).collect();
        Ok(ScoreReply { groups, layers, gradients_seconds: seconds, scoring_seconds: 0.0, peak_rss_bytes: peak_rss_bytes() })
    }

    fn apply(&mut self, req: ApplyPlanRequest) -> Result<ApplyPlanReply> {
        let progress_tx = self.opts.progress.clone();
        let (shard, comms) = self.parts()?;
        let step = step_from_wire(req);
        let after = spec_after_step(shard.spec(), &step)?;
        let rank = shard.layout.rank as u32;
        let tokens_per_pass: usize = step.reconstruct.iter().flat_map(|r| r.windows.iter().take(WINDOWS_PER_PASS)).map(Vec::len).sum();
        let t = Instant::now();
        // The reconstruction's pass over the windows (the cut itself takes no time worth showing).
        let mut progress = |done: usize, total: usize| {
            let _ = progress_tx.send(passes_event(rank, "reconstructing", (done, total), tokens_per_pass, t));
        };
        let shapes = match shard.apply(comms, &step, &after, &mut progress) {
            Ok(shapes) => shapes,
            Err(e) => {
                // A cut that failed part-way may have left the shard without weights (and its
                // stages disagreeing): nothing may run on it, so it goes; LoadShard starts over.
                self.shard = None;
                return Err(e);
            }
        };
        let params = shard.owned_weights().values().map(|t| t.elem_count() as u64).sum();
        let layers = shapes
            .iter()
            .map(|l| LayerShape { heads: l.n_heads as u32, kv_heads: l.n_kv_heads as u32, intermediate_size: l.intermediate_size as u32 })
            .collect();
        let l = &shard.layout.layers;
        Ok(ApplyPlanReply { layers, params, layer_start: l.start as u32, layer_end: l.end as u32, hidden_size: after.hidden_size as u32 })
    }

    fn recover(&mut self, req: RecoverRequest) -> Result<RecoverReply> {
        confine_recovery(&req, &self.opts.confinement)?;
        let progress_tx = self.opts.progress.clone();
        let fault = self.opts.fault;
        let (shard, comms) = self.parts()?;
        let rank = shard.layout.rank as u32;
        let mut report = |event: RecoverEvent| match event {
            RecoverEvent::Step(r) => {
                if fault == Some(Fault::ExitDuringRecovery) && r.step == 2 {
                    tracing::error!("fault injection: exiting during recovery");
                    std::process::exit(3);
                }
                let _ = progress_tx.send(ProgressEvent {
                    rank,
                    phase: "recovering".into(),
                    done: r.step,
                    total: r.total_steps,
                    unit: "steps".into(),
                    tokens_per_s: r.tokens_per_s,
                    eta_s: r.eta_s,
                    ..Default::default()
                });
                // Steps reach the coordinator as progress (one display for the run); a worker's
                // own log keeps them at debug and says validation losses, which are rarer.
                let (loss, lr, tokens_per_s) = (format!("{:.4}", r.loss), format!("{:.3e}", r.lr), format!("{:.0}", r.tokens_per_s));
                match r.val_loss {
                    Some(v) => tracing::info!(step = r.step, total = r.total_steps, loss, val_loss = format!("{v:.4}"), "validation"),
                    None => tracing::debug!(step = r.step, total = r.total_steps, loss, lr, tokens_per_s, "step"),
                }
            }
            RecoverEvent::Evaluating { what, done, total, unit, eta_s } => {
                let _ = progress_tx.send(ProgressEvent {
                    rank,
                    phase: what,
                    done: done as u64,
                    total: total as u64,
                    unit: unit.into(),
                    eta_s,
                    ..Default::default()
                });
            }
        };
        let mut groups = TrainGroups { data: comms.replicas.as_mut(), pipeline: comms.pipeline.as_mut() };
        let layout = shard.layout.clone();
        let owns = |name: &str| layout.owns(name);
        run_recovery(&mut shard.model, &shard.tokenizer, &req, &mut groups, &owns, &mut report)
    }

    /// The loaded shard when it is the whole model (evaluation and generation need it).
    fn whole_model(&mut self, what: &str) -> Result<&ShardModel> {
        let (shard, _) = self.parts()?;
        let l = &shard.layout;
        if !(l.embeddings && l.head && l.layers == (0..shard.model.spec.n_layers())) {
            return Err(Error::Invalid(format!("{what} needs the whole model on every worker; rank {} holds layers {:?}", l.rank, l.layers)));
        }
        Ok(shard)
    }

    fn generate(&mut self, req: GenerateRequest) -> Result<GenerateReply> {
        let sampling =
            Sampling { max_new_tokens: req.max_new_tokens as usize, temperature: req.temperature, top_k: req.top_k as usize, top_p: req.top_p, seed: req.seed };
        sampling.validate()?;
        let shard = self.whole_model("generation")?;
        let mut continuations = Vec::with_capacity(req.prompts.len());
        for prompt in &req.prompts {
            let t = Instant::now();
            let text = generate(&shard.model, &shard.tokenizer, prompt, &sampling)?;
            continuations.push(Continuation { text, seconds: t.elapsed().as_secs_f64() });
        }
        Ok(GenerateReply { continuations })
    }

    fn evaluate(&mut self, req: EvaluateRequest) -> Result<EvaluateReply> {
        let t = Instant::now();
        let job = confined(eval_job(&req)?, &self.opts.confinement)?;
        let progress_tx = self.opts.progress.clone();
        let shard = self.whole_model("evaluation")?;
        let l = &shard.layout;
        let (rank, world) = (l.replica, l.replicas);
        if job.latency_chunks.is_some() {
            let mut progress = |done: usize, total: usize| {
                let elapsed = t.elapsed().as_secs_f64();
                let _ = progress_tx.send(ProgressEvent {
                    phase: "timing latency".into(),
                    done: done as u64,
                    total: total as u64,
                    unit: "chunks".into(),
                    eta_s: eta_s(elapsed, done, total),
                    ..Default::default()
                });
            };
            let latency = measure_latency(&shard.model, &shard.tokenizer, &job, &mut progress)?.unwrap_or_default();
            let others_busy = latency.others_busy.map_or("unknown".to_string(), |b| format!("{:.0}%", 100.0 * b));
            tracing::info!(median_s = format!("{:.4}", latency.median()), chunks = latency.chunk_seconds.len(), others_busy, "latency");
            return Ok(EvaluateReply {
                latency_s_per_chunk: latency.median(),
                latency_chunk_seconds: latency.chunk_seconds,
                latency_others_busy: latency.others_busy.unwrap_or(-1.0),
                seconds: t.elapsed().as_secs_f64(),
                peak_rss_bytes: peak_rss_bytes(),
                ..Default::default()
            });
        }
        let tasks = load_tasks(&job)?;
        // Each phase's clock (documents, then each text) runs from the last report of the one
        // before.
        let (mut phase, mut since, mut last) = (String::new(), t, t);
        let mut progress = |p: EvalProgress| {
            if phase != p.phase {
                (phase, since) = (p.phase.to_string(), last);
            }
            last = Instant::now();
            let elapsed = since.elapsed().as_secs_f64();
            // Every worker holds the whole model (one stage) and evaluates its share.
            let _ = progress_tx.send(ProgressEvent {
                phase: p.phase.to_string(),
                done: p.done as u64,
                total: p.total as u64,
                unit: p.unit.into(),
                tokens_per_s: p.tokens as f64 / elapsed.max(1e-9),
                eta_s: eta_s(elapsed, p.done, p.total),
                share: true,
                ..Default::default()
            });
        };
        let share = evaluate_share(&shard.model, &shard.tokenizer, &job, &tasks, rank, world, &mut progress)?;
        tracing::info!(documents = share.lls.len(), seconds = t.elapsed().as_secs_f64(), "evaluated");
        Ok(EvaluateReply {
            units: share.lls.into_iter().map(|(unit, lls)| UnitScores { unit: unit as u64, lls }).collect(),
            ppl: share.ppl.into_iter().map(PplSum::from).collect(),
            seconds: t.elapsed().as_secs_f64(),
            peak_rss_bytes: peak_rss_bytes(),
            ..Default::default()
        })
    }

    fn save(&mut self, req: SaveShardRequest) -> Result<SaveShardReply> {
        let directory = self.opts.confinement.writable("the shard directory", Path::new(&req.directory))?;
        let (shard, _) = self.parts()?;
        if req.file_stem.is_empty() || req.file_stem.contains('/') || req.file_stem.starts_with('.') {
            return Err(Error::Invalid(format!("bad shard file stem `{}`", req.file_stem)));
        }
        let max_bytes = if req.max_shard_bytes == 0 { u64::MAX } else { req.max_shard_bytes };
        let files = write_tensor_parts(&directory, &req.file_stem, shard.spec(), &shard.owned_weights(), max_bytes)?;
        Ok(SaveShardReply { files: files.into_iter().map(|(file_name, tensor_names, bytes)| SavedFile { file_name, tensor_names, bytes }).collect() })
    }
}

fn join_nccl(device: &candle_core::Device, what: &str, ordinal: usize, rank: usize, world: usize, id: &[u8]) -> Result<Box<dyn Communicator>> {
    nccl_group(device, ordinal, rank, world, id).map_err(|e| Error::collective(format!("joining the {what} NCCL group on cuda:{ordinal}"), e))
}

/// Joins one ring as `rank` of `world`, given every member's address by rank.
fn join_ring(what: &str, rank: usize, world: usize, addresses: &[String], listener: &TcpListener, opts: &RingOptions) -> Result<TcpRing> {
    if addresses.len() != world {
        return Err(Error::Invalid(format!("{} {what} ring addresses for {world} members", addresses.len())));
    }
    let addrs: Vec<SocketAddr> = if world == 1 {
        // A ring of one never dials; its address is not needed.
        vec![SocketAddr::from(([127, 0, 0, 1], 0))]
    } else {
        addresses.iter().map(|a| a.parse().map_err(|_| Error::Invalid(format!("bad {what} ring address `{a}`")))).collect::<Result<_>>()?
    };
    let listener = listener.try_clone().map_err(|e| Error::io(format!("{what} ring socket"), e))?;
    TcpRing::connect(rank, &addrs, listener, opts).map_err(|e| Error::collective(format!("joining the {what} ring"), e))
}

/// A progress report of `done` of `total` calibration passes of `tokens_per_pass` tokens since
/// `started`; the replicas of a stage split the passes.
fn passes_event(rank: u32, phase: &str, (done, total): (usize, usize), tokens_per_pass: usize, started: Instant) -> ProgressEvent {
    let elapsed = started.elapsed().as_secs_f64();
    ProgressEvent {
        rank,
        phase: phase.into(),
        done: done as u64,
        total: total as u64,
        unit: "passes".into(),
        tokens_per_s: (done * tokens_per_pass) as f64 / elapsed.max(1e-9),
        eta_s: eta_s(elapsed, done, total),
        share: true,
        ..Default::default()
    }
}

//! An evaluation job as the coordinator describes it: zero-shot tasks and perplexity texts,
//! sharded over ranks. Every rank loads the same documents and plans the same batches, scores
//! batches r, r + world, … and the perplexity chunks r, r + world, …; the coordinator puts
//! the per-document scores back in order and sums the NLLs. One process is rank 0 of 1.

use super::perplexity::{latency, nll_sum, parse_corpus_spec, CorpusKind, PplCorpus, ProgressFn};
use super::zeroshot::tasks::Task;
use super::zeroshot::{batches, score_share, units, TaskDocs};
use crate::collective::SingleRank;
use crate::confine::Confinement;
use crate::error::Result;
use crate::loader::TextTokenizer;
use crate::model::LlamaModel;
use llmprune_shared::jobs::JobError;
use llmprune_shared::proto::EvaluateRequest;
use std::path::PathBuf;

#[derive(Debug, Clone)]
pub struct EvalJob {
    pub tasks: Vec<Task>,
    pub data_dir: PathBuf,
    /// The first N documents of each task.
    pub limit: Option<usize>,
    /// Tokens per forward pass at most (batching).
    pub batch_tokens: usize,
    pub ppl: Vec<(CorpusKind, PathBuf)>,
    pub ppl_max_chunks: Option<usize>,
    pub seq_len: usize,
    /// Chunks per forward pass of the perplexity texts.
    pub ppl_batch_size: usize,
    /// Time this many chunks of the first perplexity text ([`measure_latency`]); a worker
    /// asked for it times and does not evaluate.
    pub latency_chunks: Option<usize>,
}

/// The job a request describes, checked.
pub fn eval_job(req: &EvaluateRequest) -> Result<EvalJob> {
    let tasks = req.tasks.iter().map(|t| Task::from_name(t.trim())).collect::<Result<Vec<_>>>()?;
    let ppl = req.ppl.iter().map(|spec| parse_corpus_spec(spec, "ppl")).collect::<Result<_>>()?;
    if tasks.is_empty() && req.ppl.is_empty() {
        return Err(JobError::new("tasks", "nothing to evaluate: give {tasks} or {ppl}").into());
    }
    if req.seq_len < 2 {
        return Err(JobError::at("seq_len", req.seq_len, "must be at least 2").into());
    }
    if req.latency_chunks > 0 && req.ppl.is_empty() {
        return Err(JobError::new("latency_chunks", "times chunks of the first {ppl} text: give {ppl}").into());
    }
    Ok(EvalJob {
        tasks,
        data_dir: PathBuf::from(&req.data_dir),
        limit: (req.limit > 0).then_some(req.limit as usize),
        batch_tokens: (req.batch_tokens as usize).max(1),
        ppl,
        ppl_max_chunks: (req.ppl_max_chunks > 0).then_some(req.ppl_max_chunks as usize),
        seq_len: req.seq_len as usize,
        ppl_batch_size: if req.ppl_batch_size == 0 { 4 } else { req.ppl_batch_size as usize },
        latency_chunks: (req.latency_chunks > 0).then_some(req.latency_chunks as usize),
    })
}

/// `job` with the files it reads resolved and checked against the worker's `confinement`.
pub fn confined(mut job: EvalJob, confinement: &Confinement) -> Result<EvalJob> {
    if !job.tasks.is_empty() {
        job.data_dir = confinement.readable("the task data (data_dir)", &job.data_dir)?;
    }
    for (_, path) in &mut job.ppl {
        *path = confinement.readable("a perplexity text (ppl)", path)?;
    }
    Ok(job)
}

/// One rank's share of the work.
pub use llmprune_shared::results::{EvalShare, Latency, PplPart};

/// The job's documents, task by task.
pub fn load_tasks(job: &EvalJob) -> Result<Vec<TaskDocs>> {
    job.tasks.iter().map(|&task| Ok(TaskDocs { task, docs: task.load(&task.path(&job.data_dir), job.limit)? })).collect()
}

/// The token the harness puts before an empty context: BOS, else EOS.
fn prefix_token(model: &LlamaModel, tok: &TextTokenizer) -> Option<u32> {
    tok.bos().or(model.spec.bos_token_id).or(model.spec.eos_token_id)
}

/// The job's latency alone ([`EvalJob::latency_chunks`]): timed on an otherwise idle model,
/// so on a cluster one worker runs it after every worker's share is done. `progress` sees
/// (chunks timed, chunks to time).
pub fn measure_latency(model: &LlamaModel, tok: &TextTokenizer, job: &EvalJob, progress: ProgressFn<'_>) -> Result<Option<Latency>> {
    let (Some(chunks), Some((kind, path))) = (job.latency_chunks, job.ppl.first()) else {
        return Ok(None);
    };
    Ok(Some(latency(model, tok, *kind, path, job.seq_len, chunks, progress)?))
}

/// How far an evaluation share is: `done` of `total` `unit`s of its `phase` (`evaluating` for
/// the documents, `perplexity (wikitext2)` for a text's chunks), with the tokens run so far.
pub struct EvalProgress<'a> {
    pub phase: &'a str,
    pub unit: &'static str,
    pub done: usize,
    pub total: usize,
    pub tokens: u64,
}

/// Rank `rank` of `world`'s share of `job` on `tasks` (as [`load_tasks`] returns them).
pub fn evaluate_share(
    model: &LlamaModel,
    tok: &TextTokenizer,
    job: &EvalJob,
    tasks: &[TaskDocs],
    rank: usize,
    world: usize,
    progress: &mut dyn FnMut(EvalProgress),
) -> Result<EvalShare> {
    let prefix = prefix_token(model, tok);
    let units = units(tok, tasks, prefix, model.spec.max_position_embeddings)?;
    let plan = batches(&units, job.batch_tokens.max(1));
    let mut documents = |done, total, tokens| progress(EvalProgress { phase: "evaluating", unit: "documents", done, total, tokens });
    let mut lls = score_share(model, &units, &plan, rank, world, &mut documents)?;
    lls.sort_by_key(|(u, _)| *u);
    let mut ppl = Vec::new();
    for (kind, path) in &job.ppl {
        let corpus = PplCorpus::load(*kind, path, tok, job.seq_len)?;
        let share = corpus.share(job.ppl_max_chunks, rank, world);
        let t = std::time::Instant::now();
        let phase = format!("perplexity ({})", kind.name());
        let mut chunks = |done: usize, total: usize| {
            progress(EvalProgress { phase: &phase, unit: "chunks", done, total, tokens: (done * corpus.seq_len) as u64 });
        };
        let (nll, count) = nll_sum(model, &mut SingleRank, &share, corpus.seq_len, job.ppl_batch_size, &mut chunks)?;
        let (chunks, tokens, seconds) = (share.len() as u64, corpus.n_tokens as u64, t.elapsed().as_secs_f64());
        tracing::info!(dataset = kind.name(), chunks, seconds, "perplexity share");
        ppl.push(PplPart { name: kind.name().to_string(), nll, count: count as u64, chunks, tokens, seconds });
    }
    Ok(EvalShare { lls, ppl, latency: None })
}

//! Evaluation on a cluster: every worker loads the whole model and scores its share of the
//! batches (planned identically everywhere) and of the perplexity chunks; the coordinator puts
//! the documents' scores back in order and sums the NLLs.

use super::driver::{Cluster, Phase};
use super::load::{load_layout, ModelFiles, RankReport};
use anyhow::{bail, Result};
use llmprune_shared::dtype::WeightDtype;
use llmprune_shared::proto::{EvaluateReply, EvaluateRequest};
use llmprune_shared::results::{EvalShare, Latency, PplPart};

pub struct DistributedEval {
    /// The workers' shares, merged.
    pub share: EvalShare,
    pub ranks: Vec<RankReport>,
    pub load_s: f64,
    /// The dtype the workers held the weights in.
    pub dtype: WeightDtype,
}

/// `req`'s evaluation on every worker, then, when it asks for latency, the latency timed on
/// the first.
pub async fn evaluate_on_cluster(cluster: &mut Cluster, model: ModelFiles<'_>, req: &EvaluateRequest) -> Result<DistributedEval> {
    let replicas = cluster.members.len();
    let layout = load_layout(cluster, model, replicas).await?;
    cluster.enter(Phase::Evaluating);
    // A request with `latency_chunks` asks a worker for the latency alone.
    let evaluation = EvaluateRequest { latency_chunks: 0, ..req.clone() };
    let replies = cluster
        .each("evaluating", |m| {
            let mut rpc = m.rpc.clone();
            let req = evaluation.clone();
            async move { Ok(rpc.evaluate(req).await?.into_inner()) }
        })
        .await?;
    let mut ranks = layout.ranks;
    for (r, reply) in ranks.iter_mut().zip(&replies) {
        r.peak_rss_mib = r.peak_rss_mib.max(reply.peak_rss_bytes as f64 / 1048576.0);
    }
    let mut share = merge(replies)?;
    share.latency = time_latency(cluster, req).await?;
    Ok(DistributedEval { share, ranks, load_s: layout.load_s, dtype: layout.dtype })
}

/// The latency `req` asks for (`latency_chunks`; none when 0) of the whole model every
/// worker holds, timed by the first worker once all are idle, as in one process.
pub async fn time_latency(cluster: &mut Cluster, req: &EvaluateRequest) -> Result<Option<Latency>> {
    if req.latency_chunks == 0 {
        return Ok(None);
    }
    let replies = cluster
        .each_where(
            "timing latency",
            |m| m.rank == 0,
            |m| {
                let (mut rpc, req) = (m.rpc.clone(), req.clone());
                async move { Ok(rpc.evaluate(req).await?.into_inner()) }
            },
        )
        .await?;
    Ok(replies
        .first()
        .map(|r| Latency { chunk_seconds: r.latency_chunk_seconds.clone(), others_busy: (r.latency_others_busy >= 0.0).then_some(r.latency_others_busy) }))
}

/// The shares of all workers as one: documents by index, NLL sums added (in rank order).
fn merge(replies: Vec<EvaluateReply>) -> Result<EvalShare> {
    let mut share = EvalShare::default();
    for reply in replies {
        share.lls.extend(reply.units.into_iter().map(|u| (u.unit as usize, u.lls)));
        for p in reply.ppl.into_iter().map(PplPart::from) {
            match share.ppl.iter_mut().find(|q| q.name == p.name) {
                Some(entry) => entry.merge(&p),
                None => share.ppl.push(p),
            }
        }
    }
    share.lls.sort_by_key(|(u, _)| *u);
    if share.lls.windows(2).any(|w| w[0].0 == w[1].0) {
        bail!("two workers scored the same document");
    }
    Ok(share)
}

/// The perplexity texts of a phase (`--eval-ppl`, `llmprune ppl`), as one evaluation job.
#[derive(Debug, Clone)]
pub struct PplJob {
    /// The texts by dataset name (`wikitext2`, `ptb`).
    pub data: Vec<(String, std::path::PathBuf)>,
    pub seq_len: usize,
    pub batch_size: usize,
    pub max_chunks: Option<usize>,
    /// Time this many chunks of the first text, batch 1 (0: none).
    pub latency_chunks: usize,
}

impl PplJob {
    pub fn request(&self) -> EvaluateRequest {
        EvaluateRequest {
            ppl: self.data.iter().map(|(name, file)| format!("{name}={}", file.display())).collect(),
            ppl_max_chunks: self.max_chunks.unwrap_or(0) as u64,
            seq_len: self.seq_len as u32,
            ppl_batch_size: self.batch_size as u32,
            latency_chunks: self.latency_chunks as u32,
            ..Default::default()
        }
    }
}

/// What a perplexity job measured: the results by dataset, as reports keep them, and the
/// latency when asked for.
pub struct Perplexities {
    pub results: serde_json::Map<String, serde_json::Value>,
    pub latency: Option<Latency>,
    pub ranks: Vec<RankReport>,
    pub load_s: f64,
    pub dtype: WeightDtype,
}

/// `model`'s perplexity on each text, sharded over the cluster's workers; printed as a table.
pub async fn perplexities_on_cluster(cluster: &mut Cluster, model: ModelFiles<'_>, job: &PplJob) -> Result<Perplexities> {
    let done = evaluate_on_cluster(cluster, model, &job.request()).await?;
    let mut results = serde_json::Map::new();
    println!("{:10} {:>12} {:>9} {:>7} {:>9}", "dataset", "ppl", "tokens", "chunks", "seconds");
    for p in &done.share.ppl {
        println!("{:10} {:>12.4} {:>9} {:>7} {:>9.1}", p.name, p.ppl(), p.tokens, p.chunks, p.seconds);
        tracing::info!(dataset = %p.name, ppl = p.ppl(), chunks = p.chunks, seconds = p.seconds, "perplexity");
        let entry = serde_json::json!({"ppl": p.ppl(), "tokens": p.tokens, "chunks": p.chunks, "scored_tokens": p.count, "mean_nll": p.mean_nll(),
                                       "file": job.data.iter().find(|(n, _)| *n == p.name).map(|(_, f)| f.display().to_string()), "seconds": {"eval": p.seconds}});
        results.insert(p.name.clone(), entry);
    }
    Ok(Perplexities { results, latency: done.share.latency, ranks: done.ranks, load_s: done.load_s, dtype: done.dtype })
}

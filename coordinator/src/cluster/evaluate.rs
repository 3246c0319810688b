//! Evaluation on a cluster: every worker loads the whole model and scores its share of the
//! batches (planned identically everywhere) and of the perplexity chunks; the coordinator puts
//! the documents' scores back in order and sums the NLLs.

use super::driver::{Cluster, Phase};
use super::load::{load_layout, RankReport};
use anyhow::{bail, Result};
use llmprune_shared::proto::{EvaluateReply, EvaluateRequest};
use llmprune_shared::results::EvalShare;
use llmprune_shared::ModelSpec;
use std::path::Path;

pub struct DistributedEval {
    /// The workers' shares, merged.
    pub share: EvalShare,
    pub ranks: Vec<RankReport>,
    pub load_s: f64,
}

/// `req`'s evaluation on every worker, then, when it asks for latency, the latency timed on
/// the first.
pub async fn evaluate_on_cluster(
    cluster: &mut Cluster,
    spec: &ModelSpec,
    model_path: &Path,
    model_sha256: &str,
    req: &EvaluateRequest,
) -> Result<DistributedEval> {
    let replicas = cluster.members.len();
    let layout = load_layout(cluster, spec, model_path, model_sha256, replicas).await?;
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
    // Timed by one worker once all are idle, as in one process.
    if req.latency_chunks > 0 {
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
        share.latency_s_per_chunk = replies.first().map(|r| r.latency_s_per_chunk);
    }
    Ok(DistributedEval { share, ranks, load_s: layout.load_s })
}

/// The shares of all workers as one: documents by index, NLL sums added (in rank order).
fn merge(replies: Vec<EvaluateReply>) -> Result<EvalShare> {
    let mut share = EvalShare::default();
    for reply in replies {
        share.lls.extend(reply.units.into_iter().map(|u| (u.unit as usize, u.lls)));
        for p in reply.ppl {
            match share.ppl.iter_mut().find(|(name, _, _)| *name == p.name) {
                Some(entry) => {
                    entry.1 += p.nll;
                    entry.2 += p.count;
                }
                None => share.ppl.push((p.name, p.nll, p.count)),
            }
        }
    }
    share.lls.sort_by_key(|(u, _)| *u);
    if share.lls.windows(2).any(|w| w[0].0 == w[1].0) {
        bail!("two workers scored the same document");
    }
    Ok(share)
}

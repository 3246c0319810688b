//! Recovery on a cluster: the workers form S pipeline stages × N/S data-parallel replicas
//! (S = 1: every worker holds the whole model). Every worker runs the same recovery job (its
//! replica's share of every global batch, the adapter gradients all-reduced over the copies of
//! its stage, the same optimizer step everywhere). The first replica of each stage writes its
//! merged weights and adapters into the output's temporary directory; with stages, the
//! coordinator then indexes the weight shards and joins the adapter parts.

use super::driver::{Cluster, Phase};
use super::load::{load_layout, ModelFiles, RankReport};
use anyhow::{Context, Result};
use llmprune_shared::proto::{RecoverReply, RecoverRequest};
use llmprune_shared::safetensors_index::write_index;
use std::path::Path;

pub struct DistributedRecovery {
    pub reply: RecoverReply,
    pub ranks: Vec<RankReport>,
    pub load_s: f64,
    /// The dtype the base weights (and so the merged model) were held in.
    pub dtype: llmprune_shared::dtype::WeightDtype,
    /// Each stage's adapter checksum, by stage.
    pub stage_adapter_sha256: Vec<String>,
}

pub async fn recover_on_cluster(cluster: &mut Cluster, model: ModelFiles<'_>, req: &RecoverRequest, stages: usize) -> Result<DistributedRecovery> {
    let replicas = cluster.members.len() / stages.max(1);
    let layout = load_layout(cluster, model, replicas).await?;
    cluster.enter(Phase::Recovering);
    let replies = cluster
        .each("recovering", |m| {
            let mut rpc = m.rpc.clone();
            let req = req.clone();
            async move { Ok(rpc.recover(req).await?.into_inner()) }
        })
        .await?;
    // The replicas of a stage took the same steps: their adapters must agree to the bit.
    let mut firsts: Vec<Option<&RecoverReply>> = vec![None; stages];
    for (m, r) in cluster.members.iter().zip(&replies) {
        match firsts[m.stage] {
            Some(first) if first.adapter_sha256 != r.adapter_sha256 => {
                let msg = format!("recovering: worker {} (replica {} of stage {}) ended with other adapters than replica 0", m.id, m.replica, m.stage);
                return Err(cluster.fail(&msg).await);
            }
            Some(_) => {}
            None => firsts[m.stage] = Some(r),
        }
    }
    let firsts: Vec<&RecoverReply> = firsts.into_iter().flatten().collect();
    if stages > 1 {
        index_stage_outputs(Path::new(&req.out_dir), &firsts)?;
    }
    let stage_adapter_sha256: Vec<String> = firsts.iter().map(|r| r.adapter_sha256.clone()).collect();
    let trainable_params = firsts.iter().map(|r| r.trainable_params).sum();
    let mut ranks = layout.ranks;
    for (r, reply) in ranks.iter_mut().zip(&replies) {
        r.peak_rss_mib = r.peak_rss_mib.max(reply.peak_rss_bytes as f64 / 1048576.0);
    }
    let first = firsts.first().map(|r| (*r).clone()).ok_or_else(|| anyhow::anyhow!("no worker answered"))?;
    let reply = RecoverReply { trainable_params, adapter_sha256: stage_adapter_sha256.join("+"), ..first };
    Ok(DistributedRecovery { reply, ranks, load_s: layout.load_s, dtype: layout.dtype, stage_adapter_sha256 })
}

/// The stages' weight shards indexed as one Hugging Face model (the first stage has joined
/// their adapter parts).
fn index_stage_outputs(out: &Path, stages: &[&RecoverReply]) -> Result<()> {
    let shards: Vec<(String, Vec<String>)> = stages.iter().map(|r| (r.weights_file.clone(), r.tensor_names.clone())).collect();
    let bytes = stages.iter().map(|r| r.weight_bytes).sum();
    write_index(out, &shards, bytes).context("indexing the stages' weights")?;
    Ok(())
}

//! Recovery on a cluster: every worker loads the whole model as one data-parallel replica, runs
//! the same recovery job (its share of every global batch, the adapter gradients all-reduced,
//! the same optimizer step everywhere), and the first replica writes the merged weights and the
//! adapter into the output's temporary directory.

use super::driver::{Cluster, Phase};
use super::load::{load_layout, RankReport};
use anyhow::Result;
use llmprune_shared::proto::{RecoverReply, RecoverRequest};
use llmprune_shared::ModelSpec;
use std::path::Path;

pub struct DistributedRecovery {
    pub reply: RecoverReply,
    pub ranks: Vec<RankReport>,
    pub load_s: f64,
}

pub async fn recover_on_cluster(cluster: &mut Cluster, spec: &ModelSpec, model_path: &Path, model_sha256: &str, req: &RecoverRequest) -> Result<DistributedRecovery> {
    let replicas = cluster.members.len();
    let layout = load_layout(cluster, spec, model_path, model_sha256, replicas).await?;
    cluster.enter(Phase::Recovering);
    let replies = cluster
        .each("recovering", |m| {
            let mut rpc = m.rpc.clone();
            let req = req.clone();
            async move { Ok(rpc.recover(req).await?.into_inner()) }
        })
        .await?;
    // The replicas took the same steps: their adapters must agree to the bit.
    let first = replies[0].adapter_sha256.clone();
    if let Some((m, _)) = cluster.members.iter().zip(&replies).find(|(_, r)| r.adapter_sha256 != first) {
        let msg = format!("recovering: worker {} (replica {}) ended with other adapters than replica 0", m.id, m.replica);
        return Err(cluster.fail(&msg).await);
    }
    let mut ranks = layout.ranks;
    for (r, reply) in ranks.iter_mut().zip(&replies) {
        r.peak_rss_mib = r.peak_rss_mib.max(reply.peak_rss_bytes as f64 / 1048576.0);
    }
    let reply = replies.into_iter().next().ok_or_else(|| anyhow::anyhow!("no worker answered"))?;
    Ok(DistributedRecovery { reply, ranks, load_s: layout.load_s })
}

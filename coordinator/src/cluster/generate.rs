//! Generation on the run's workers: every worker loads the whole model and continues its share
//! of the prompts (prompt i on worker i mod N); each prompt's draw starts from the same seed
//! wherever it runs, so the continuations do not depend on the number of workers.

use super::driver::{Cluster, Phase};
use super::load::{load_layout, ModelFiles, RankReport};
use anyhow::{bail, Result};
use llmprune_shared::proto::{Continuation, GenerateRequest};

pub struct Generated {
    /// By prompt, in the request's order.
    pub continuations: Vec<Continuation>,
    pub ranks: Vec<RankReport>,
    pub load_s: f64,
}

pub async fn generate_on_cluster(cluster: &mut Cluster, model: ModelFiles<'_>, req: &GenerateRequest) -> Result<Generated> {
    let workers = cluster.members.len();
    let layout = load_layout(cluster, model, workers).await?;
    cluster.enter(Phase::Generating);
    let share = |rank: usize| GenerateRequest { prompts: req.prompts.iter().skip(rank).step_by(workers).cloned().collect(), ..req.clone() };
    let replies = cluster
        .each_where(
            "generating",
            |m| m.rank < req.prompts.len(),
            |m| {
                let (mut rpc, req) = (m.rpc.clone(), share(m.rank));
                async move { Ok(rpc.generate(req).await?.into_inner()) }
            },
        )
        .await?;
    // Worker r's k-th continuation is prompt r + k·N's.
    let mut continuations: Vec<Option<Continuation>> = vec![None; req.prompts.len()];
    for (rank, reply) in replies.into_iter().enumerate() {
        for (k, c) in reply.continuations.into_iter().enumerate() {
            if let Some(slot) = continuations.get_mut(rank + k * workers) {
                *slot = Some(c);
            }
        }
    }
    let Some(continuations) = continuations.into_iter().collect::<Option<Vec<_>>>() else {
        bail!("generating: a worker answered fewer prompts than it was given");
    };
    Ok(Generated { continuations, ranks: layout.ranks, load_s: layout.load_s })
}

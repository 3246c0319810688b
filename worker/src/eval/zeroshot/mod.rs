//! Zero-shot multiple-choice evaluation with lm-evaluation-harness's semantics: tasks build
//! (context, continuation) requests (`tasks`), encoded as the harness encodes them
//! (`requests`), scored by log-likelihood with shared contexts computed once (`loglik`), and
//! turned into `acc` / `acc_norm` with standard errors (`metrics`).

pub mod loglik;
pub mod metrics;
pub mod requests;
pub mod tasks;

use crate::error::{Error, Result};
use crate::loader::TextTokenizer;
use crate::model::LlamaModel;
use loglik::{plan_batches, score_batch, Unit};
use metrics::DocResult;
use requests::token_choices;
use tasks::{Doc, Task};

/// A task's documents as loaded.
pub struct TaskDocs {
    pub task: Task,
    pub docs: Vec<Doc>,
}

/// Every document of every task as a scoring unit, in task then document order.
pub fn units(tok: &TextTokenizer, tasks: &[TaskDocs], prefix_token: Option<u32>, max_len: usize) -> Result<Vec<Unit>> {
    let mut out = Vec::new();
    for t in tasks {
        for d in &t.docs {
            let choices = token_choices(tok, d, prefix_token, max_len).map_err(|e| Error::Invalid(format!("{}: {e}", t.task.name())))?;
            out.push(Unit { choices });
        }
    }
    Ok(out)
}

/// The batches of all units (the same plan on every worker) with at most `budget` tokens a pass.
pub fn batches(units: &[Unit], budget: usize) -> Vec<Vec<usize>> {
    plan_batches(units, budget)
}

/// Log-likelihoods of the units of `batches` (rank r of `world` takes batches r, r + world, …),
/// by unit index. `progress` sees (units done, units of this rank, tokens run so far).
pub fn score_share(
    model: &LlamaModel,
    units: &[Unit],
    batches: &[Vec<usize>],
    rank: usize,
    world: usize,
    progress: &mut dyn FnMut(usize, usize, u64),
) -> Result<Vec<(usize, Vec<f64>)>> {
    let mine: Vec<&Vec<usize>> = batches.iter().skip(rank).step_by(world.max(1)).collect();
    let total: usize = mine.iter().map(|b| b.len()).sum();
    let (mut out, mut tokens) = (Vec::new(), 0u64);
    for batch in mine {
        let members: Vec<&Unit> = batch.iter().map(|&u| &units[u]).collect();
        let lls = score_batch(model, &members)?;
        tokens += members.iter().map(|u| u.tokens() as u64).sum::<u64>();
        out.extend(batch.iter().copied().zip(lls));
        progress(out.len(), total, tokens);
    }
    Ok(out)
}

/// Per-document results of each task from the log-likelihoods of all units (in unit order).
pub fn results(tasks: &[TaskDocs], lls: Vec<Vec<f64>>) -> Result<Vec<(Task, Vec<DocResult>)>> {
    let mut lls = lls.into_iter();
    tasks
        .iter()
        .map(|t| {
            let docs = t
                .docs
                .iter()
                .map(|d| lls.next().map(|l| DocResult::new(d, l)).ok_or_else(|| Error::Invalid("fewer scores than documents".into())))
                .collect::<Result<_>>()?;
            Ok((t.task, docs))
        })
        .collect()
}

//! `llmprune ppl`: perplexity of a model on WikiText-2 / PTB with the reference's protocol
//! (128-token chunks, batch 4), on the run's workers (one in this process by default).

use crate::cli::PplArgs;
use crate::cluster::driver::Cluster;
use crate::cluster::evaluate::{perplexities_on_cluster, PplJob};
use crate::cluster::load::ModelFiles;
use crate::commands::cluster::on_cluster;
use crate::commands::write_json_atomic;
use crate::fetch::resolve_model;
use crate::settings::Settings;
use anyhow::{anyhow, Context, Result};
use llmprune_worker::eval::perplexity::CorpusKind;
use llmprune_worker::loader::{model_checksum, open_model};
use serde_json::json;
use std::path::PathBuf;
use std::time::Instant;

/// `NAME=FILE` pairs given to `flag`, checked before any model is loaded.
pub(crate) fn parse_data(flag: &str, args: &[String]) -> Result<Vec<(CorpusKind, PathBuf)>> {
    args.iter()
        .map(|a| {
            let (name, file) = a.split_once('=').ok_or_else(|| anyhow!("{flag} {a}: expected NAME=FILE"))?;
            let kind: CorpusKind = name.parse().map_err(|e| anyhow!("{flag} {a}: {e}"))?;
            let path = PathBuf::from(file);
            if !path.is_file() {
                return Err(anyhow!("{flag} {a}: {file} is not a readable file"));
            }
            Ok((kind, path))
        })
        .collect()
}

/// A phase's perplexity texts (`--data`, `--eval-ppl`) as a job, checked.
pub(crate) fn ppl_job(flag: &str, data: &[String], seq_len: usize, batch_size: usize, max_chunks: Option<usize>) -> Result<PplJob> {
    let data = parse_data(flag, data)?;
    if seq_len < 2 {
        return Err(anyhow!("--seq-len must be at least 2, got {seq_len}"));
    }
    if batch_size == 0 {
        return Err(anyhow!("--batch-size must be positive"));
    }
    Ok(PplJob { data: data.into_iter().map(|(kind, path)| (kind.name().to_string(), path)).collect(), seq_len, batch_size, max_chunks, latency_chunks: 0 })
}

pub fn run(settings: &Settings, run_id: &str, args: PplArgs) -> Result<()> {
    let span = tracing::info_span!("ppl", run_id, phase = "ppl", rank = 0);
    let _enter = span.enter();
    let job = ppl_job("--data", &args.data, args.seq_len, args.batch_size, args.max_chunks)?;
    args.cluster.check()?;
    let model_path = resolve_model(&args.model, &settings.cache_dir, &settings.python)?;
    let t0 = Instant::now();
    let spec = open_model(&model_path).with_context(|| format!("opening {}", model_path.display()))?.spec;
    let sha = model_checksum(&model_path)?;
    let model = ModelFiles { spec: &spec, path: &model_path, sha256: &sha, dtype: args.dtype };
    let done = on_cluster(None, settings, &args.cluster, run_id, async |cluster: &mut Cluster| perplexities_on_cluster(cluster, model, &job).await)?;
    tracing::info!(model = %model_path.display(), params = spec.n_params(), load_s = done.load_s, "perplexity measured");
    if let Some(out) = &args.json {
        let doc = json!({
            "model": model_path.display().to_string(),
            "seq_len": args.seq_len,
            "batch_size": args.batch_size,
            "dtype": done.dtype.name(),
            "max_chunks": args.max_chunks,
            "results": done.results,
            "workers": done.ranks.len(),
            "seconds": {"load": done.load_s, "total": t0.elapsed().as_secs_f64()},
        });
        write_json_atomic(out, &doc)?;
    }
    Ok(())
}

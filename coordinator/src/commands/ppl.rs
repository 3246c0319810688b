use crate::cli::PplArgs;
use crate::commands::write_json_atomic;
use crate::fetch::resolve_model;
use crate::progress::Progress;
use crate::settings::Settings;
use anyhow::{anyhow, Context, Result};
use llmprune_worker::eval::perplexity::{evaluate, CorpusKind, PplCorpus};
use llmprune_worker::loader::TextTokenizer;
use llmprune_worker::{load_model, LlamaModel, LoadOptions};
use serde_json::json;
use std::path::PathBuf;
use std::time::Instant;

/// `NAME=FILE` pairs, checked before any model is loaded.
pub(crate) fn parse_data(args: &[String]) -> Result<Vec<(CorpusKind, PathBuf)>> {
    args.iter()
        .map(|a| {
            let (name, file) = a.split_once('=').ok_or_else(|| anyhow!("--data {a}: expected NAME=FILE"))?;
            let kind: CorpusKind = name.parse().map_err(|e| anyhow!("--data {a}: {e}"))?;
            let path = PathBuf::from(file);
            if !path.is_file() {
                return Err(anyhow!("--data {a}: {file} is not a readable file"));
            }
            Ok((kind, path))
        })
        .collect()
}

pub fn run(settings: &Settings, run_id: &str, args: PplArgs) -> Result<()> {
    let device = settings.compute_device()?;
    let span = tracing::info_span!("ppl", run_id, phase = "ppl", rank = 0);
    let _enter = span.enter();
    let data = parse_data(&args.data)?;
    if args.seq_len < 2 {
        return Err(anyhow!("--seq-len must be at least 2, got {}", args.seq_len));
    }
    if args.batch_size == 0 {
        return Err(anyhow!("--batch-size must be positive"));
    }
    let model_path = resolve_model(&args.model, &settings.cache_dir, &settings.python)?;
    let t0 = Instant::now();
    let loaded = load_model(&model_path, |s| LoadOptions { dtype: args.dtype.into(), ..LoadOptions::full(s) }, &device)
        .with_context(|| format!("loading {}", model_path.display()))?;
    let load_s = t0.elapsed().as_secs_f64();
    tracing::info!(model = %model_path.display(), params = loaded.model.spec.n_params(), load_s, "model loaded");
    let results = perplexities(&loaded.model, &loaded.tokenizer, &data, args.seq_len, args.batch_size, args.max_chunks)?;
    if let Some(out) = &args.json {
        let doc = json!({
            "model": model_path.display().to_string(),
            "seq_len": args.seq_len,
            "batch_size": args.batch_size,
            "dtype": candle_core::DType::from(args.dtype).as_str(),
            "max_chunks": args.max_chunks,
            "results": results,
            "seconds": {"load": load_s},
        });
        write_json_atomic(out, &doc)?;
    }
    Ok(())
}

/// Perplexity of `model` on each corpus, printed as a table; the results by dataset name.
pub(crate) fn perplexities(
    model: &LlamaModel,
    tokenizer: &TextTokenizer,
    data: &[(CorpusKind, PathBuf)],
    seq_len: usize,
    batch_size: usize,
    max_chunks: Option<usize>,
) -> Result<serde_json::Map<String, serde_json::Value>> {
    let mut results = serde_json::Map::new();
    let mut rows = Vec::new();
    for (kind, path) in data {
        let kind = *kind;
        let t = Instant::now();
        let corpus = PplCorpus::load(kind, path, tokenizer, seq_len)?;
        let tokenize_s = t.elapsed().as_secs_f64();
        let total = max_chunks.map_or(corpus.chunks.len(), |m| m.min(corpus.chunks.len()));
        let mut progress = Progress::new(kind.name(), total as u64, "chunks");
        let t = Instant::now();
        let res = evaluate(model, &corpus, batch_size, max_chunks, &mut |done, total| progress.update(done as u64, total as u64, (done * seq_len) as u64))?;
        progress.finish();
        let eval_s = t.elapsed().as_secs_f64();
        tracing::info!(dataset = kind.name(), ppl = res.ppl, chunks = res.chunks, eval_s, "perplexity");
        rows.push(format!("{:10} {:>12.4} {:>9} {:>7} {:>9.1}", kind.name(), res.ppl, res.tokens, res.chunks, eval_s));
        let mut entry = serde_json::to_value(&res)?;
        entry["file"] = json!(path.display().to_string());
        entry["seconds"] = json!({"tokenize": tokenize_s, "eval": eval_s});
        results.insert(kind.name().to_string(), entry);
    }
    println!("{:10} {:>12} {:>9} {:>7} {:>9}", "dataset", "ppl", "tokens", "chunks", "seconds");
    for r in rows {
        println!("{r}");
    }
    Ok(results)
}
